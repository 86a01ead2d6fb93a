//! The node's bounded accept rate: a token bucket over new WebSocket connections, an optional
//! cap on connections still in their handshake (upgraded, `hello` not done), and a cap on open
//! connections.
//!
//! The handshake cap is off by default: measured in the 5,000-client storm test, any cap that
//! binds makes clients come back and be shed again, and the shed connections' own cost (accept,
//! upgrade, close) slowed the storm from ~6 s to 10–16 s on 2 cores. The rate alone keeps the
//! work a storm sends to Redis bounded. What it sheds gets `reconnect` (`overloaded`) with a retry delay that
//! spreads the backlog over the time the node needs to admit it, so a reconnect storm turns
//! into a steady stream instead of a pile-up of hellos that each cost Redis round trips.
//!
//! Connections that have not authenticated yet get their own, small budget ([`SourceCore`]):
//! at most `limits.max_unauthenticated` at once node-wide and
//! `limits.max_unauthenticated_per_source` per source address, counted from the TCP accept to
//! the end of `hello`, and each source's new connections are rate limited before they may
//! spend the node-wide accept rate. A flood of upgrades that never say `hello` from one address
//! therefore takes at most its per-source share, and real users from other addresses keep
//! being admitted. While unauthenticated connections are over three quarters of the budget, new
//! connections get `timing.pressure_timeout_ms` (1 s) instead of the normal upgrade and hello
//! deadlines, so the budget turns over quickly.
//!
//! [`AdmissionCore`] and [`SourceCore`] are the pure parts (they take `now` and a random
//! number), tested without sockets; [`Admission`] wraps them in locks for the node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::NodeConfig;

/// The verdict on one connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serve it.
    Accept,
    /// Shed it: tell the client to come back after `after_ms`.
    Shed {
        /// The `reconnect` delay.
        after_ms: u64,
        /// `"rate"`, `"handshakes"` or `"max_connections"` (for logs).
        why: &'static str,
    },
}

/// Token bucket plus a count of recent sheds (the backlog estimate).
#[derive(Debug, Clone)]
pub struct AdmissionCore {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    max_connections: usize,
    max_handshakes: usize,
    min_ms: u64,
    max_ms: u64,
    /// Sheds in the current and the previous one-second window.
    window_start: Instant,
    shed_now: u64,
    shed_before: u64,
}

impl AdmissionCore {
    /// A full bucket at `now`.
    pub fn new(
        rate: f64,
        burst: f64,
        max_connections: usize,
        max_handshakes: usize,
        min_ms: u64,
        max_ms: u64,
        now: Instant,
    ) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
            max_connections,
            max_handshakes,
            min_ms,
            max_ms,
            window_start: now,
            shed_now: 0,
            shed_before: 0,
        }
    }

    /// Decides on one attempt at `now` with `open` connections, `handshaking` of them still
    /// before `hello`; `random` is any u64 (the jitter source).
    pub fn admit(&mut self, now: Instant, open: usize, handshaking: usize, random: u64) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        let since = now.saturating_duration_since(self.window_start);
        if since >= Duration::from_secs(2) {
            self.shed_before = 0;
            self.shed_now = 0;
            self.window_start = now;
        } else if since >= Duration::from_secs(1) {
            self.shed_before = self.shed_now;
            self.shed_now = 0;
            self.window_start = now;
        }
        let why = if self.max_connections > 0 && open >= self.max_connections {
            "max_connections"
        } else if self.max_handshakes > 0 && handshaking >= self.max_handshakes {
            "handshakes"
        } else if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admit::Accept;
        } else {
            "rate"
        };
        self.shed_now += 1;
        // Clients shed recently will come back; spread them over the time the bucket needs
        // to admit all of them, so they do not return together. The backlog is the sheds of
        // the busier of the last two one-second windows: a client shed twice within a window
        // is counted twice, and summing the windows as well made the spread (and the storm)
        // twice as long as needed.
        let backlog = self.shed_now.max(self.shed_before) as f64;
        let spread_ms = (backlog / self.rate * 1000.0) as u64;
        let span = spread_ms.clamp(self.min_ms, self.max_ms) - self.min_ms;
        Admit::Shed {
            after_ms: self.min_ms + random % (span + 1),
            why,
        }
    }
}

/// An IP address or a CIDR block (`limits.trusted_proxies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    net: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// `10.0.0.1`, `10.0.0.0/8`, `fd00::/8`; `None` if it is neither.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { net, prefix })
    }

    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What per-source limits count by: an IPv4 address, or the /64 of an IPv6 address (one
/// subscriber's network usually holds a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::from(u64::MAX))).into()),
        v4 => v4,
    }
}

/// One source's unauthenticated connections and its accept bucket.
#[derive(Debug, Clone)]
struct SourceState {
    pending: usize,
    tokens: f64,
    last: Instant,
}

/// Sources tracked at most; past it, sources with nothing pending are forgotten (their buckets
/// start full again), so a spoofed-address flood cannot grow the table without bound.
const MAX_SOURCES: usize = 65_536;

/// The budget of not-yet-authenticated connections, node-wide and per source, and the
/// per-source accept rate.
#[derive(Debug, Clone)]
pub struct SourceCore {
    max_total: usize,
    max_per_source: usize,
    rate: f64,
    burst: f64,
    total: usize,
    sources: HashMap<IpAddr, SourceState>,
}

impl SourceCore {
    /// Caps of 0 are off; a rate of 0 is off.
    pub fn new(max_total: usize, max_per_source: usize, rate: f64, burst: f64) -> Self {
        Self {
            max_total,
            max_per_source,
            rate,
            burst,
            total: 0,
            sources: HashMap::new(),
        }
    }

    fn state(&mut self, key: IpAddr, now: Instant) -> &mut SourceState {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&key) {
            self.sources.retain(|_, s| s.pending > 0);
        }
        let burst = self.burst;
        self.sources.entry(key).or_insert(SourceState {
            pending: 0,
            tokens: burst,
            last: now,
        })
    }

    /// One more unauthenticated connection from `source`, or the reason it is refused
    /// (`"unauthenticated"`: the node-wide budget; `"source"`: this source's share, unless
    /// `per_source` is false: a proxy that does not name the client).
    pub fn open(
        &mut self,
        source: IpAddr,
        per_source: bool,
        now: Instant,
    ) -> Result<(), &'static str> {
        if self.max_total > 0 && self.total >= self.max_total {
            return Err("unauthenticated");
        }
        let max_per_source = if per_source { self.max_per_source } else { 0 };
        let state = self.state(source_key(source), now);
        if max_per_source > 0 && state.pending >= max_per_source {
            return Err("source");
        }
        state.pending += 1;
        self.total += 1;
        Ok(())
    }

    /// An unauthenticated connection of `source` authenticated or went away.
    pub fn close(&mut self, source: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(s) = self.sources.get_mut(&source_key(source)) {
            s.pending = s.pending.saturating_sub(1);
        }
    }

    /// Takes one token of `source`'s accept bucket; `false` when it is empty.
    pub fn take_rate(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst);
        let s = self.state(source_key(source), now);
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Unauthenticated connections held now.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether they are over three quarters of the node-wide budget.
    pub fn under_pressure(&self) -> bool {
        self.max_total > 0 && self.total * 4 > self.max_total * 3
    }
}

/// [`AdmissionCore`] behind a lock (held for a few arithmetic operations, never across an
/// await), plus the count of connections in their handshake.
#[derive(Debug)]
pub struct Admission {
    core: Mutex<AdmissionCore>,
    handshaking: Arc<AtomicUsize>,
    sources: Arc<Mutex<SourceCore>>,
    trusted: Vec<IpBlock>,
    shed_min_ms: u64,
    hello_timeout: Duration,
    upgrade_timeout: Duration,
    pressure_timeout: Duration,
}

/// Held from the TCP accept (or, behind a trusted proxy, the upgrade) until `hello` is done or
/// the connection is gone: one unit of the unauthenticated budget.
#[derive(Debug)]
pub struct Unauthenticated {
    sources: Arc<Mutex<SourceCore>>,
    source: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        lock(&self.sources).close(self.source);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A shed attempt: send `reconnect` (`overloaded`) with `after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// The `reconnect` delay.
    pub after_ms: u64,
    /// `"rate"`, `"handshakes"` or `"max_connections"` (for logs).
    pub why: &'static str,
}

/// Held by an admitted connection until its `hello` is done (or it is gone).
#[derive(Debug)]
pub struct Handshake {
    handshaking: Arc<AtomicUsize>,
    /// Released with the handshake: the connection is authenticated (or gone).
    _unauthenticated: Option<Unauthenticated>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// From `limits.accept_*`, `limits.max_connections`, `limits.max_handshakes` and
    /// `timing.shed_reconnect_*`.
    pub fn new(config: &NodeConfig) -> Self {
        let (l, t) = (&config.limits, &config.timing);
        Self {
            core: Mutex::new(AdmissionCore::new(
                l.accept_per_second,
                l.accept_burst,
                l.max_connections,
                l.max_handshakes,
                t.shed_reconnect_min_ms,
                t.shed_reconnect_max_ms,
                Instant::now(),
            )),
            handshaking: Arc::new(AtomicUsize::new(0)),
            sources: Arc::new(Mutex::new(SourceCore::new(
                l.max_unauthenticated,
                l.max_unauthenticated_per_source,
                l.accept_per_source_per_second,
                l.accept_per_source_burst,
            ))),
            trusted: l
                .trusted_proxies
                .iter()
                .filter_map(|p| IpBlock::parse(p))
                .collect(),
            shed_min_ms: t.shed_reconnect_min_ms,
            hello_timeout: Duration::from_millis(t.hello_timeout_ms),
            upgrade_timeout: Duration::from_millis(t.upgrade_timeout_ms),
            pressure_timeout: Duration::from_millis(t.pressure_timeout_ms),
        }
    }

    /// Whether `peer` is a trusted proxy (its connections carry many users).
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|b| b.contains(peer))
    }

    /// One more unauthenticated connection from `source`, or why it is refused; with
    /// `per_source` false only the node-wide budget applies.
    pub fn open_unauthenticated(
        &self,
        source: IpAddr,
        per_source: bool,
    ) -> Result<Unauthenticated, &'static str> {
        lock(&self.sources).open(source, per_source, Instant::now())?;
        Ok(Unauthenticated {
            sources: self.sources.clone(),
            source,
        })
    }

    /// Unauthenticated connections held now.
    pub fn unauthenticated(&self) -> usize {
        lock(&self.sources).total()
    }

    /// How long a new connection may take to send its upgrade request.
    pub fn upgrade_timeout(&self) -> Duration {
        if lock(&self.sources).under_pressure() {
            self.pressure_timeout.min(self.upgrade_timeout)
        } else {
            self.upgrade_timeout
        }
    }

    /// How long an upgraded connection may take to finish `hello`.
    pub fn hello_timeout(&self) -> Duration {
        if lock(&self.sources).under_pressure() {
            self.pressure_timeout.min(self.hello_timeout)
        } else {
            self.hello_timeout
        }
    }

    /// Decides on one upgrade from `source` (`None`: unknown, behind a trusted proxy that does
    /// not say) now, `open` connections being open; an admitted
    /// one gets the [`Handshake`] to hold until its `hello` is done, carrying its unit of the
    /// unauthenticated budget. A source over its own accept rate is shed without spending the
    /// node-wide rate.
    pub fn admit(
        &self,
        open: usize,
        source: Option<IpAddr>,
        unauthenticated: Option<Unauthenticated>,
    ) -> Result<Handshake, Shed> {
        if source.is_some_and(|s| !lock(&self.sources).take_rate(s, Instant::now())) {
            let min = self.shed_min_ms;
            return Err(Shed {
                after_ms: min + rand::random::<u64>() % (min * 4 + 1),
                why: "source_rate",
            });
        }
        let handshaking = self.handshaking.load(Ordering::Relaxed);
        let verdict = {
            let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            core.admit(Instant::now(), open, handshaking, rand::random())
        };
        match verdict {
            Admit::Accept => {
                self.handshaking.fetch_add(1, Ordering::Relaxed);
                Ok(Handshake {
                    handshaking: self.handshaking.clone(),
                    _unauthenticated: unauthenticated,
                })
            }
            Admit::Shed { after_ms, why } => Err(Shed { after_ms, why }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_shed_with_spread_delays() {
        let t0 = Instant::now();
        let mut a = AdmissionCore::new(100.0, 10.0, 0, 1_000_000, 200, 10_000, t0);
        for _ in 0..10 {
            assert_eq!(a.admit(t0, 0, 0, 0), Admit::Accept);
        }
        let Admit::Shed { after_ms, why } = a.admit(t0, 0, 0, u64::MAX) else {
            panic!("the 11th attempt at once is shed");
        };
        assert_eq!(why, "rate");
        assert!((200..=10_000).contains(&after_ms), "{after_ms}");
        // 10 ms later one token is back.
        assert_eq!(
            a.admit(t0 + Duration::from_millis(10), 0, 0, 0),
            Admit::Accept
        );
        // A storm of 2,000 at once: delays grow with the backlog, up to backlog / rate.
        let mut max_after = 0;
        for i in 0..2_000u64 {
            if let Admit::Shed { after_ms, .. } =
                a.admit(t0 + Duration::from_millis(10), 0, 0, i * 7_919)
            {
                max_after = max_after.max(after_ms);
            }
        }
        assert!(
            (5_000..=10_000).contains(&max_after),
            "2,000 shed at 100/s spread over up to ~10 s: {max_after}"
        );
    }

    #[test]
    fn connection_cap_sheds_even_with_tokens() {
        let t0 = Instant::now();
        let mut a = AdmissionCore::new(1_000.0, 1_000.0, 5, 1_000_000, 100, 500, t0);
        assert_eq!(a.admit(t0, 4, 0, 0), Admit::Accept);
        match a.admit(t0, 5, 0, 3) {
            Admit::Shed { after_ms, why } => {
                assert_eq!(why, "max_connections");
                assert!((100..=500).contains(&after_ms));
            }
            Admit::Accept => panic!("at the cap"),
        }
    }

    #[test]
    fn handshakes_in_flight_are_capped() {
        let t0 = Instant::now();
        let mut a = AdmissionCore::new(1_000.0, 1_000.0, 0, 3, 100, 500, t0);
        assert_eq!(a.admit(t0, 10, 2, 0), Admit::Accept);
        assert!(matches!(
            a.admit(t0, 10, 3, 0),
            Admit::Shed {
                why: "handshakes",
                ..
            }
        ));
    }

    #[test]
    fn unauthenticated_budget_is_per_source_and_node_wide() {
        let t0 = Instant::now();
        let mut s = SourceCore::new(8, 3, 0.0, 0.0);
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            s.open(flood, true, t0).unwrap();
        }
        assert_eq!(s.open(flood, true, t0), Err("source"));
        // Another source still gets in, up to the node-wide budget.
        let others: Vec<IpAddr> = (2..=6)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        for o in &others {
            s.open(*o, true, t0).unwrap();
        }
        assert!(s.under_pressure());
        assert_eq!(
            s.open("10.0.0.99".parse().unwrap(), true, t0),
            Err("unauthenticated")
        );
        s.close(flood);
        assert!(
            s.open(flood, true, t0).is_ok(),
            "a closed one frees its unit"
        );
        // IPv6 counts by /64.
        let mut s = SourceCore::new(0, 1, 0.0, 0.0);
        s.open("2001:db8::1".parse().unwrap(), true, t0).unwrap();
        assert_eq!(
            s.open("2001:db8::2".parse().unwrap(), true, t0),
            Err("source")
        );
        assert!(s.open("2001:db8:0:1::1".parse().unwrap(), true, t0).is_ok());
        // A proxy that does not name its clients: only the node-wide budget.
        let mut s = SourceCore::new(3, 1, 0.0, 0.0);
        let proxy: IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..3 {
            s.open(proxy, false, t0).unwrap();
        }
        assert_eq!(s.open(proxy, false, t0), Err("unauthenticated"));
    }

    #[test]
    fn per_source_rate_spares_other_sources() {
        let t0 = Instant::now();
        let mut s = SourceCore::new(0, 0, 10.0, 5.0);
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let taken = (0..100).filter(|_| s.take_rate(flood, t0)).count();
        assert_eq!(taken, 5, "the burst, then nothing");
        assert!(s.take_rate("10.0.0.2".parse().unwrap(), t0));
        assert!(
            s.take_rate(flood, t0 + Duration::from_millis(100)),
            "refilled"
        );
    }

    #[test]
    fn ip_blocks_parse_and_match() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(IpBlock::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(IpBlock::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpBlock::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.1/", "::/129"] {
            assert!(IpBlock::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn backlog_estimate_decays() {
        let t0 = Instant::now();
        let mut a = AdmissionCore::new(10.0, 1.0, 0, 1_000_000, 100, 60_000, t0);
        a.admit(t0, 0, 0, 0);
        for _ in 0..100 {
            a.admit(t0, 0, 0, 0);
        }
        // Two quiet seconds later the backlog is forgotten: the next shed gets a short delay.
        let later = t0 + Duration::from_millis(2_050);
        a.admit(later, 0, 0, 0); // takes the refilled token
        match a.admit(later, 0, 0, u64::MAX - 1) {
            Admit::Shed { after_ms, .. } => assert!(after_ms <= 100 + 100, "{after_ms}"),
            Admit::Accept => panic!("bucket is empty"),
        }
    }
}
