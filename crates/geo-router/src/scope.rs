//! EDNS Client Subnet scopes that resolvers can cache well.
//!
//! A DNS answer's ECS scope tells the resolver over how wide a network it may reuse the answer.
//! The narrowest correct scope is the GeoIP network that matched; a far better one is the widest
//! prefix over which the answer stays the same. gdnsd finds it by merging neighbouring networks
//! that map to the same datacenter into supernets; [`ScopeIndex`] does the same for geography:
//!
//! * every database network gets a *key*: the order of the catalogue's regions by great-circle
//!   distance from the network's location (networks without coordinates, and addresses the
//!   database does not cover, share one "unknown" key, since they all get the default order);
//! * runs of consecutive addresses with the same key are merged;
//! * the scope for an address is the shortest prefix whose whole block lies inside the address's
//!   run ([`ScopeIndex::geo_scope`]).
//!
//! Keying on the whole distance order, not just the nearest region, keeps the scope correct when
//! health checks or drains remove regions: two networks with the same order fall back to the
//! same next region. Inputs that vary inside a run are handled by the caller, which narrows the
//! scope: an active load penalty or weight (answers then hold only for one location, so the scope
//! is the matched database network), measured RTTs and operator pins (exceptions, which a block
//! must not straddle), and near ties broken per /24 or /48. See `router/state.rs`.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::geoip::GeoNetwork;
use meridian_catalogue::distance_km;

/// The key of addresses with no usable location.
const UNKNOWN: u32 = u32::MAX;

/// Consecutive addresses `start..=end` with one ranking key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u128,
    end: u128,
    key: u32,
}

/// Merged supernets of one database against one catalogue. Build it again when either changes.
#[derive(Debug, Clone)]
pub struct ScopeIndex {
    v4: Vec<Run>,
    v6: Vec<Run>,
    orders: usize,
}

/// How well the index merges, for logs and the closing report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScopeStats {
    /// IPv4 database networks with a location.
    pub v4_networks: usize,
    /// Merged IPv4 runs (including unknown gaps).
    pub v4_runs: usize,
    /// Median over IPv4 database networks of the scope answered for the network's first address.
    pub median_v4_scope: Option<u8>,
    /// Median over those networks of their own prefix length (the scope without merging).
    pub median_v4_prefix: Option<u8>,
    /// Distinct region orders seen.
    pub orders: usize,
}

impl ScopeIndex {
    /// An index for a catalogue of `(latitude, longitude)` region positions, named for stable
    /// ordering of equal distances.
    pub fn build(networks: &[GeoNetwork], regions: &[(&str, f64, f64)]) -> ScopeIndex {
        let mut interned: HashMap<Vec<u16>, u32> = HashMap::new();
        let mut key_of = |location: Option<(f64, f64)>| -> u32 {
            let Some(at) = location else {
                return UNKNOWN;
            };
            let mut order: Vec<(f64, &str, u16)> = regions
                .iter()
                .zip(0u16..)
                .map(|(&(name, lat, lon), i)| (distance_km(at, (lat, lon)), name, i))
                .collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            let order: Vec<u16> = order.into_iter().map(|(_, _, i)| i).collect();
            let next = u32::try_from(interned.len()).unwrap_or(UNKNOWN - 1);
            *interned.entry(order).or_insert(next)
        };
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks {
            let (start, bits, out) = match network.first {
                IpAddr::V4(v4_first) => (u128::from(u32::from(v4_first)), 32, &mut v4),
                IpAddr::V6(v6_first) => (u128::from(v6_first), 128, &mut v6),
            };
            if network.prefix_len > bits {
                continue;
            }
            let (start, end) = block(start, network.prefix_len, bits);
            out.push(Run {
                start,
                end,
                key: key_of(network.location),
            });
        }
        let orders = interned.len();
        ScopeIndex {
            v4: fill_and_merge(v4, 32),
            v6: fill_and_merge(v6, 128),
            orders,
        }
    }

    /// An index that knows no locations: every address shares one run (scope 0).
    pub fn empty() -> ScopeIndex {
        ScopeIndex::build(&[], &[])
    }

    /// The shortest prefix around `ip` whose every address has the same distance order as `ip`.
    /// IPv4-mapped IPv6 addresses count as IPv4.
    pub fn geo_scope(&self, ip: IpAddr) -> u8 {
        let (x, bits, runs) = match ip.to_canonical() {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u8, &self.v4),
            IpAddr::V6(v6) => (u128::from(v6), 128u8, &self.v6),
        };
        let at = runs.partition_point(|r| r.start <= x);
        let Some(run) = at.checked_sub(1).and_then(|i| runs.get(i)) else {
            return bits;
        };
        let mut scope = bits;
        for len in (0..=bits).rev() {
            let (start, end) = block(x, len, bits);
            if start < run.start || end > run.end {
                break;
            }
            scope = len;
        }
        scope
    }

    /// Merge statistics over `networks` (the list the index was built from).
    pub fn stats(&self, networks: &[GeoNetwork]) -> ScopeStats {
        let located: Vec<&GeoNetwork> = networks
            .iter()
            .filter(|n| n.first.is_ipv4() && n.location.is_some())
            .collect();
        let mut scopes: Vec<u8> = located.iter().map(|n| self.geo_scope(n.first)).collect();
        let mut prefixes: Vec<u8> = located.iter().map(|n| n.prefix_len).collect();
        ScopeStats {
            v4_networks: located.len(),
            v4_runs: self.v4.len(),
            median_v4_scope: median(&mut scopes),
            median_v4_prefix: median(&mut prefixes),
            orders: self.orders,
        }
    }
}

fn median(values: &mut [u8]) -> Option<u8> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// The first and last address of the `len`-bit prefix holding `x` in a `bits`-wide family.
pub(crate) fn block(x: u128, len: u8, bits: u8) -> (u128, u128) {
    let family_mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let host_bits = u32::from(bits.saturating_sub(len));
    let host_mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let start = x & family_mask & !host_mask;
    (start, start | (host_mask & family_mask))
}

/// Sorts the runs, fills the gaps between them with unknown runs so the whole family is covered,
/// and merges neighbours with the same key.
fn fill_and_merge(mut runs: Vec<Run>, bits: u8) -> Vec<Run> {
    runs.sort_by_key(|r| (r.start, r.end));
    let (_, family_end) = block(0, 0, bits);
    let mut covered: Vec<Run> = Vec::with_capacity(runs.len() * 2 + 1);
    let mut cursor: Option<u128> = Some(0);
    for run in runs {
        let Some(next) = cursor else { break };
        if run.end < next {
            continue; // overlapped by an earlier network (a search tree has none; be safe)
        }
        let start = run.start.max(next);
        if start > next {
            covered.push(Run {
                start: next,
                end: start - 1,
                key: UNKNOWN,
            });
        }
        covered.push(Run { start, ..run });
        cursor = run.end.checked_add(1).filter(|&c| c <= family_end);
    }
    if let Some(next) = cursor {
        covered.push(Run {
            start: next,
            end: family_end,
            key: UNKNOWN,
        });
    }
    let mut merged: Vec<Run> = Vec::with_capacity(covered.len());
    for run in covered {
        match merged.last_mut() {
            Some(last) if last.key == run.key && last.end.checked_add(1) == Some(run.start) => {
                last.end = run.end;
            }
            _ => merged.push(run),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGIONS: [(&str, f64, f64); 3] = [
        ("ap-southeast", 1.3521, 103.8198),
        ("eu-central", 50.1109, 8.6821),
        ("us-east", 38.9072, -77.0369),
    ];
    const BERLIN: (f64, f64) = (52.52, 13.405);
    const PARIS: (f64, f64) = (48.8566, 2.3522);
    const TOKYO: (f64, f64) = (35.6762, 139.6503);

    fn net(text: &str, location: Option<(f64, f64)>) -> GeoNetwork {
        let (address, len) = text.split_once('/').unwrap();
        GeoNetwork {
            first: address.parse().unwrap(),
            prefix_len: len.parse().unwrap(),
            location,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn neighbours_with_the_same_order_merge_into_a_supernet() {
        // Berlin and Paris both rank eu-central, us-east, ap-southeast: 10.0.0.0/24 and
        // 10.0.1.0/24 merge into 10.0.0.0/23; Tokyo's 10.0.2.0/24 stays alone.
        let networks = [
            net("10.0.0.0/24", Some(BERLIN)),
            net("10.0.1.0/24", Some(PARIS)),
            net("10.0.2.0/24", Some(TOKYO)),
        ];
        let index = ScopeIndex::build(&networks, &REGIONS);
        assert_eq!(index.geo_scope(ip("10.0.0.7")), 23);
        assert_eq!(index.geo_scope(ip("10.0.1.200")), 23);
        assert_eq!(index.geo_scope(ip("10.0.2.1")), 24);
        // 10.0.3.0/24 is not in the database: unknown, and its neighbours up to 10.0.3.255 and
        // beyond are unknown too, but 10.0.2.0/24 sits in the same /22.
        assert_eq!(index.geo_scope(ip("10.0.3.1")), 24);
        // Far from every network: the whole unknown run around it.
        assert_eq!(index.geo_scope(ip("200.1.2.3")), 1);
        assert_eq!(
            index.geo_scope(ip("::ffff:10.0.0.7")),
            23,
            "mapped counts as v4"
        );
    }

    #[test]
    fn same_nearest_region_but_another_order_does_not_merge() {
        // Both are nearest eu-central, but Berlin's second choice is us-east and Tehran's is
        // ap-southeast: after an eu-central failover they go different ways.
        let tehran = (35.6892, 51.389);
        let networks = [
            net("10.0.0.0/24", Some(BERLIN)),
            net("10.0.1.0/24", Some(tehran)),
        ];
        let index = ScopeIndex::build(&networks, &REGIONS);
        assert_eq!(index.geo_scope(ip("10.0.0.1")), 24);
        assert_eq!(index.geo_scope(ip("10.0.1.1")), 24);
        assert_eq!(index.stats(&networks).orders, 2);
    }

    #[test]
    fn unaligned_runs_give_the_widest_aligned_block_inside() {
        // 10.0.1.0/24 + 10.0.2.0/23 are one run of 768 addresses not aligned on a /22: the
        // scope is each part's own aligned block.
        let networks = [
            net("10.0.0.0/24", Some(TOKYO)),
            net("10.0.1.0/24", Some(BERLIN)),
            net("10.0.2.0/23", Some(PARIS)),
            net("10.0.4.0/24", Some(TOKYO)),
        ];
        let index = ScopeIndex::build(&networks, &REGIONS);
        assert_eq!(index.geo_scope(ip("10.0.1.1")), 24);
        assert_eq!(index.geo_scope(ip("10.0.3.1")), 23);
    }

    #[test]
    fn networks_without_location_merge_with_unknown_space() {
        let networks = [net("10.0.0.0/25", None), net("10.0.0.128/25", Some(BERLIN))];
        let index = ScopeIndex::build(&networks, &REGIONS);
        assert_eq!(index.geo_scope(ip("10.0.0.128")), 25);
        // 10.0.0.0/25 is unknown like all of 0.0.0.0 .. 10.0.0.127: the widest aligned block
        // inside that run holding 10.0.0.1 is 10.0.0.0/25.
        assert_eq!(index.geo_scope(ip("10.0.0.1")), 25);
        // Unknown from 0.0.0.0 to 10.0.0.127: 8.0.0.0/7 is the widest block around 9.255.255.255.
        assert_eq!(index.geo_scope(ip("9.255.255.255")), 7);
    }

    #[test]
    fn ipv6_and_the_empty_index() {
        let networks = [
            net("2001:db8::/33", Some(BERLIN)),
            net("2001:db8:8000::/33", Some(PARIS)),
        ];
        let index = ScopeIndex::build(&networks, &REGIONS);
        assert_eq!(index.geo_scope(ip("2001:db8::1")), 32);
        let empty = ScopeIndex::empty();
        assert_eq!(empty.geo_scope(ip("192.0.2.1")), 0);
        assert_eq!(empty.geo_scope(ip("2001:db8::1")), 0);
    }

    #[test]
    fn stats_report_the_median_scope_against_the_median_prefix() {
        let networks: Vec<GeoNetwork> = (0..16u8)
            .map(|i| net(&format!("10.0.{i}.0/24"), Some(BERLIN)))
            .collect();
        let index = ScopeIndex::build(&networks, &REGIONS);
        let stats = index.stats(&networks);
        assert_eq!(stats.v4_networks, 16);
        assert_eq!(stats.median_v4_prefix, Some(24));
        assert_eq!(stats.median_v4_scope, Some(20));
        assert_eq!(stats.orders, 1);
    }

    #[test]
    fn block_edges() {
        assert_eq!(block(0x0a00_0001, 24, 32), (0x0a00_0000, 0x0a00_00ff));
        assert_eq!(block(0x0a00_0001, 0, 32), (0, 0xffff_ffff));
        assert_eq!(block(0x0a00_0001, 32, 32), (0x0a00_0001, 0x0a00_0001));
        assert_eq!(block(5, 0, 128), (0, u128::MAX));
        assert_eq!(block(5, 128, 128), (5, 5));
    }
}
