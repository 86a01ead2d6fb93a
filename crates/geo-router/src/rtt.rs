//! Measured RTTs, aggregated per client network.
//!
//! Clients report the RTTs they measured to regions (`POST /v1/rtt`). Reports are aggregated per
//! network prefix (by default /24 for IPv4, /48 for IPv6: the granularity at which routing is
//! usually uniform) and per region, as a time-decayed mean: each sample's weight halves every
//! [`RttConfig::half_life`], so the figure follows changes and stale networks fade away.
//!
//! **Who may report** is decided before a sample gets here: `POST /v1/rtt` needs a signed
//! report token ([`crate::report_token`]) naming the reporter's own network, and is rate
//! limited per source address and per network (see `docs/geo-router.md`, "Threat model").
//!
//! **Bounded memory.** At most [`RttConfig::max_prefixes`] networks are kept. [`RttTable::sweep`]
//! (run periodically) drops networks whose decayed weight fell below half a sample; a report for
//! a new network while the table is full evicts the network updated least recently (oldest
//! first), so the table keeps serving the networks that report now instead of refusing them.
//! Each network keeps at most one entry per catalogue region.
//!
//! The table also answers [`RttTable::any_within`]: whether any learned network lies inside an
//! address block, which the ECS scope logic needs (a supernet holding a network with its own RTT
//! data must not be answered as a whole).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::decision::MeasuredRtt;
use crate::scope::block;

/// Aggregation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RttConfig {
    /// IPv4 aggregation prefix length.
    pub prefix_v4: u8,
    /// IPv6 aggregation prefix length.
    pub prefix_v6: u8,
    /// Networks kept at most.
    pub max_prefixes: usize,
    /// A sample's weight halves every this long.
    pub half_life: Duration,
}

impl Default for RttConfig {
    fn default() -> Self {
        RttConfig {
            prefix_v4: 24,
            prefix_v6: 48,
            max_prefixes: 100_000,
            half_life: Duration::from_secs(3600),
        }
    }
}

/// A client network: family and first address (IPv4 as a `u32` in a `u128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    /// True for IPv6.
    pub v6: bool,
    /// First address of the network.
    pub start: u128,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// The network of `len_v4` / `len_v6` bits holding `ip` (IPv4-mapped counts as IPv4).
    pub fn of(ip: IpAddr, len_v4: u8, len_v6: u8) -> Prefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let len = len_v4.min(32);
                Prefix {
                    v6: false,
                    start: block(u128::from(u32::from(v4)), len, 32).0,
                    len,
                }
            }
            IpAddr::V6(v6) => {
                let len = len_v6.min(128);
                Prefix {
                    v6: true,
                    start: block(u128::from(v6), len, 128).0,
                    len,
                }
            }
        }
    }

    /// A stable 64-bit hash, the tie-break key of the decision.
    pub fn hash64(&self) -> u64 {
        let mut x = (self.start as u64) ^ ((self.start >> 64) as u64).rotate_left(17);
        x ^= u64::from(self.len) << 56 ^ u64::from(self.v6);
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

#[derive(Debug, Clone)]
struct Aggregate {
    region: String,
    /// Σ weight × rtt and Σ weight, both decayed to `at`.
    weighted_rtt: f64,
    weight: f64,
    at: Instant,
}

impl Aggregate {
    fn decayed(&self, now: Instant, half_life: Duration) -> (f64, f64) {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        let factor = 0.5f64.powf(age / half_life.as_secs_f64().max(1e-9));
        (self.weighted_rtt * factor, self.weight * factor)
    }
}

/// What [`RttTable::record`] did besides recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// The network evicted to make room for a new one (the least recently updated).
    pub evicted: Option<Prefix>,
}

#[derive(Debug, Default)]
struct Networks {
    /// Per network: its aggregates and the sequence number of its last update.
    by_prefix: BTreeMap<Prefix, (Vec<Aggregate>, u64)>,
    /// Networks by last update, oldest first.
    by_update: BTreeMap<u64, Prefix>,
    next_update: u64,
}

/// Per-network, per-region decayed RTT means. Shared behind `&self`.
#[derive(Debug)]
pub struct RttTable {
    config: RttConfig,
    entries: RwLock<Networks>,
    /// Counts changes (a recorded measurement, a network swept away), so that a cache of
    /// routing answers can tell it is stale.
    changes: AtomicU64,
}

impl RttTable {
    /// An empty table.
    pub fn new(config: RttConfig) -> RttTable {
        RttTable {
            config,
            entries: RwLock::new(Networks::default()),
            changes: AtomicU64::new(0),
        }
    }

    /// The aggregation network of `ip`.
    pub fn prefix_of(&self, ip: IpAddr) -> Prefix {
        Prefix::of(ip, self.config.prefix_v4, self.config.prefix_v6)
    }

    /// Records one measured RTT from `ip` to `region` (already validated and authorised by the
    /// caller). A new network in a full table evicts the least recently updated one.
    pub fn record(&self, ip: IpAddr, region: &str, rtt_ms: f64, now: Instant) -> Recorded {
        let prefix = self.prefix_of(ip);
        let mut guard = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let networks = &mut *guard;
        let mut recorded = Recorded::default();
        let known = networks.by_prefix.contains_key(&prefix);
        if !known && networks.by_prefix.len() >= self.config.max_prefixes {
            if let Some((_, oldest)) = networks.by_update.pop_first() {
                networks.by_prefix.remove(&oldest);
                recorded.evicted = Some(oldest);
            }
        }
        self.changes.fetch_add(1, Ordering::Release);
        let update = networks.next_update;
        networks.next_update += 1;
        let (aggregates, last_update) = networks.by_prefix.entry(prefix).or_default();
        if known {
            networks.by_update.remove(last_update);
        }
        *last_update = update;
        networks.by_update.insert(update, prefix);
        match aggregates.iter_mut().find(|a| a.region == region) {
            Some(aggregate) => {
                let (weighted, weight) = aggregate.decayed(now, self.config.half_life);
                aggregate.weighted_rtt = weighted + rtt_ms;
                aggregate.weight = weight + 1.0;
                aggregate.at = now;
            }
            None => aggregates.push(Aggregate {
                region: region.to_owned(),
                weighted_rtt: rtt_ms,
                weight: 1.0,
                at: now,
            }),
        }
        recorded
    }

    /// The measured RTTs of `ip`'s network, with decayed sample counts (rounded).
    pub fn lookup(&self, ip: IpAddr, now: Instant) -> Vec<MeasuredRtt> {
        let prefix = self.prefix_of(ip);
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let Some((aggregates, _)) = entries.by_prefix.get(&prefix) else {
            return Vec::new();
        };
        aggregates
            .iter()
            .filter_map(|a| {
                let (weighted, weight) = a.decayed(now, self.config.half_life);
                (weight > 0.0).then(|| MeasuredRtt {
                    region: a.region.clone(),
                    rtt_ms: weighted / weight,
                    samples: weight.round() as u32,
                })
            })
            .collect()
    }

    /// Whether any learned network lies within `start..=end` of the family (`v6`).
    pub fn any_within(&self, v6: bool, start: u128, end: u128) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let from = Prefix { v6, start, len: 0 };
        let to = Prefix {
            v6,
            start: end,
            len: u8::MAX,
        };
        entries.by_prefix.range(from..=to).next().is_some()
    }

    /// Drops networks whose every region decayed below half a sample; returns how many are left.
    pub fn sweep(&self, now: Instant) -> usize {
        let half_life = self.config.half_life;
        let mut guard = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let networks = &mut *guard;
        let mut removed = false;
        let by_update = &mut networks.by_update;
        networks.by_prefix.retain(|_, (aggregates, last_update)| {
            let before = aggregates.len();
            aggregates.retain(|a| a.decayed(now, half_life).1 >= 0.5);
            removed |= aggregates.len() != before;
            if aggregates.is_empty() {
                by_update.remove(last_update);
                return false;
            }
            true
        });
        if removed {
            self.changes.fetch_add(1, Ordering::Release);
        }
        networks.by_prefix.len()
    }

    /// A number that changes whenever the table does (see [`RttTable::record`] and
    /// [`RttTable::sweep`]).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Networks currently held.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_prefix
            .len()
    }

    /// True when no network is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn reports_aggregate_per_network_and_region() {
        let table = RttTable::new(RttConfig::default());
        let now = Instant::now();
        table.record(ip("192.0.2.1"), "eu-central", 20.0, now);
        table.record(ip("192.0.2.200"), "eu-central", 30.0, now);
        table.record(ip("192.0.2.9"), "us-east", 90.0, now);
        table.record(ip("192.0.3.1"), "us-east", 10.0, now);
        let mut seen = table.lookup(ip("192.0.2.77"), now);
        seen.sort_by(|a, b| a.region.cmp(&b.region));
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].region.as_str(), seen[0].rtt_ms, seen[0].samples),
            ("eu-central", 25.0, 2)
        );
        assert_eq!(
            (seen[1].region.as_str(), seen[1].rtt_ms, seen[1].samples),
            ("us-east", 90.0, 1)
        );
        assert_eq!(table.len(), 2);
        assert!(table.lookup(ip("198.51.100.1"), now).is_empty());
        // IPv6 aggregates per /48; IPv4-mapped addresses count as IPv4.
        table.record(ip("2001:db8:1:2::1"), "eu-central", 5.0, now);
        assert_eq!(table.lookup(ip("2001:db8:1:ffff::9"), now).len(), 1);
        assert_eq!(table.lookup(ip("::ffff:192.0.2.5"), now).len(), 2);
    }

    #[test]
    fn old_samples_decay_and_the_mean_follows_new_ones() {
        let config = RttConfig {
            half_life: Duration::from_secs(10),
            ..RttConfig::default()
        };
        let table = RttTable::new(config);
        let start = Instant::now();
        for _ in 0..8 {
            table.record(ip("192.0.2.1"), "eu-central", 100.0, start);
        }
        let later = start + Duration::from_secs(30); // three half-lives: 8 samples weigh 1
        assert_eq!(table.lookup(ip("192.0.2.1"), later)[0].samples, 1);
        table.record(ip("192.0.2.1"), "eu-central", 20.0, later);
        let seen = &table.lookup(ip("192.0.2.1"), later)[0];
        assert_eq!(seen.samples, 2);
        assert!((seen.rtt_ms - 60.0).abs() < 1e-9, "{}", seen.rtt_ms);
        // Much later everything has faded and a sweep frees the network.
        let much_later = later + Duration::from_secs(100);
        assert_eq!(table.sweep(much_later), 0);
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_network_updated_least_recently() {
        let config = RttConfig {
            max_prefixes: 2,
            ..RttConfig::default()
        };
        let table = RttTable::new(config);
        let now = Instant::now();
        assert_eq!(table.record(ip("10.0.0.1"), "a", 1.0, now).evicted, None);
        table.record(ip("10.0.1.1"), "a", 1.0, now);
        // 10.0.0.0/24 reports again: 10.0.1.0/24 is now the oldest.
        table.record(ip("10.0.0.2"), "b", 1.0, now);
        let recorded = table.record(ip("10.0.2.1"), "a", 1.0, now);
        assert_eq!(recorded.evicted, Some(table.prefix_of(ip("10.0.1.1"))));
        assert_eq!(table.len(), 2);
        assert!(table.lookup(ip("10.0.1.1"), now).is_empty());
        assert_eq!(table.lookup(ip("10.0.0.1"), now).len(), 2);
        assert_eq!(table.lookup(ip("10.0.2.1"), now).len(), 1);
        // Thousands of new networks keep the bound; the newest are the ones kept.
        for n in 0..5000u32 {
            table.record(
                std::net::Ipv4Addr::from(0x0b00_0000 + (n << 8)).into(),
                "a",
                1.0,
                now,
            );
        }
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.lookup(ip("11.19.135.1"), now).len(),
            1,
            "4999th network"
        );
        // A sweep keeps the order index in step: the next eviction still works.
        assert_eq!(table.sweep(now + Duration::from_secs(100_000)), 0);
        table.record(ip("10.0.5.1"), "a", 1.0, now);
        table.record(ip("10.0.6.1"), "a", 1.0, now);
        table.record(ip("10.0.7.1"), "a", 1.0, now);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn any_within_finds_learned_networks_inside_a_block() {
        let table = RttTable::new(RttConfig::default());
        let now = Instant::now();
        table.record(ip("10.0.5.9"), "a", 1.0, now);
        let (start, end) = block(0x0a00_0000, 16, 32);
        assert!(table.any_within(false, start, end));
        let (start, end) = block(0x0a00_0000, 22, 32);
        assert!(
            !table.any_within(false, start, end),
            "10.0.0.0/22 ends at 10.0.3.255"
        );
        assert!(!table.any_within(true, 0, u128::MAX), "no IPv6 data");
    }

    #[test]
    fn prefix_hash_is_stable_and_spreads() {
        let a = Prefix::of(ip("192.0.2.1"), 24, 48);
        assert_eq!(a, Prefix::of(ip("192.0.2.250"), 24, 48));
        assert_eq!(a.hash64(), Prefix::of(ip("192.0.2.250"), 24, 48).hash64());
        assert_ne!(a.hash64(), Prefix::of(ip("192.0.3.1"), 24, 48).hash64());
    }
}
