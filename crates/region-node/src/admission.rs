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
//! [`AdmissionCore`] is the pure part (takes `now` and a random number), tested without
//! sockets; [`Admission`] wraps it in a lock for the node.

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

/// [`AdmissionCore`] behind a lock (held for a few arithmetic operations, never across an
/// await), plus the count of connections in their handshake.
#[derive(Debug)]
pub struct Admission {
    core: Mutex<AdmissionCore>,
    handshaking: Arc<AtomicUsize>,
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
pub struct Handshake(Arc<AtomicUsize>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
        }
    }

    /// Decides on one attempt now; an admitted one gets the [`Handshake`] to hold until its
    /// `hello` is done.
    pub fn admit(&self, open: usize) -> Result<Handshake, Shed> {
        let handshaking = self.handshaking.load(Ordering::Relaxed);
        let verdict = {
            let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            core.admit(Instant::now(), open, handshaking, rand::random())
        };
        match verdict {
            Admit::Accept => {
                self.handshaking.fetch_add(1, Ordering::Relaxed);
                Ok(Handshake(self.handshaking.clone()))
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
