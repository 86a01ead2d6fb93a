//! Active health checks of every region, with hysteresis.
//!
//! Every `health.interval_ms` each region's `health_url` is fetched with a `health.timeout_ms`
//! limit, over HTTP or HTTPS ([`crate::probe`] does the I/O). A 2xx answer is a success; anything
//! else (error status, refused connection, rejected certificate, timeout) a failure, classified
//! by [`FailureKind`]. [`Hysteresis`]: `fall` consecutive failures mark a region down, `rise`
//! consecutive successes mark it up again; before the first probe completes a region is
//! [`Health::Unknown`], which routes like up.
//!
//! **Load.** A 2xx body that is JSON may carry the region's load: `{"load": 0.42}` (fraction of
//! capacity), or `{"connections": 1234}` (divided by the catalogue's `capacity`, or by a
//! `"capacity"` field in the body). Any other body counts as healthy with unknown load. The
//! body is read as [`ReadyReport`], the type a region node's `/readyz` writes.
//!
//! **Detection bound.** With the defaults (interval 1 s, timeout 0.8 s, fall 2) a region that
//! dies is marked down at most `interval × fall + timeout` = 2.8 s later
//! ([`crate::config::HealthConfig::detection_bound`]), and the next DNS answer or `/v1/route`
//! call routes around it: well inside the 5 s the design asks for. Resolvers may still hold a
//! cached answer for the TTL (30 s by default), so the bound on new users arriving is
//! 2.8 s + TTL.

use std::time::Duration;

use meridian_protocol::health::ReadyReport;

use crate::decision::Health;

/// Probe outcome counters and the resulting state of one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// Current state.
    pub health: Health,
    /// Consecutive successes so far.
    pub successes: u32,
    /// Consecutive failures so far.
    pub failures: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            health: Health::Unknown,
            successes: 0,
            failures: 0,
        }
    }
}

impl Hysteresis {
    /// The state after one probe. The first probe decides an unknown region at once (there is
    /// no earlier state to protect from flapping); after that `fall` failures in a row take an
    /// up region down and `rise` successes in a row bring a down region up.
    pub fn step(self, ok: bool, fall: u32, rise: u32) -> Hysteresis {
        let (successes, failures) = if ok {
            (self.successes.saturating_add(1), 0)
        } else {
            (0, self.failures.saturating_add(1))
        };
        let health = match self.health {
            Health::Unknown => {
                if ok {
                    Health::Up
                } else if failures >= fall {
                    Health::Down
                } else {
                    Health::Unknown
                }
            }
            Health::Up if failures >= fall => Health::Down,
            Health::Down if successes >= rise => Health::Up,
            other => other,
        };
        Hysteresis {
            health,
            successes,
            failures,
        }
    }
}

/// The load a probe body reports, if any: `load`, or `connections / capacity`. The body is
/// the protocol's [`ReadyReport`], the one type a region node's `/readyz` writes.
pub fn parse_load(body: &[u8], catalogue_capacity: u64) -> Option<f64> {
    let report = ReadyReport::parse(body)?;
    let load = match (report.load, report.connections) {
        (Some(load), _) => load,
        (None, Some(connections)) => {
            let capacity = report
                .capacity
                .filter(|c| c.is_finite() && *c > 0.0)
                .unwrap_or(catalogue_capacity as f64);
            if capacity <= 0.0 {
                return None;
            }
            connections as f64 / capacity
        }
        (None, None) => return None,
    };
    (load.is_finite() && load >= 0.0).then_some(load)
}

/// Why a probe failed: the `reason` label of `meridian_router_health_check_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The `health_url` cannot be probed as written (scheme, host).
    BadUrl,
    /// The TCP connection failed (refused, unreachable, name not resolved).
    Connect,
    /// No complete answer within `health.timeout_ms`.
    Timeout,
    /// The server's certificate was rejected: untrusted issuer, expired, or not valid for the
    /// URL's host.
    TlsCertificate,
    /// Another TLS handshake failure (protocol version, alert from the server).
    Tls,
    /// The HTTP exchange broke (malformed response, connection closed early).
    Http,
    /// An answer with a non-2xx status.
    Status,
}

impl FailureKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::BadUrl => "bad_url",
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::TlsCertificate => "tls_certificate",
            FailureKind::Tls => "tls",
            FailureKind::Http => "http",
            FailureKind::Status => "status",
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// 2xx within the timeout.
    pub ok: bool,
    /// Reported load, if any.
    pub load: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// What kind of failure it was.
    pub failure: Option<FailureKind>,
    /// How long it took.
    pub latency: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[bool], fall: u32, rise: u32) -> Vec<Health> {
        let mut state = Hysteresis::default();
        steps
            .iter()
            .map(|&ok| {
                state = state.step(ok, fall, rise);
                state.health
            })
            .collect()
    }

    #[test]
    fn falls_after_n_failures_and_rises_after_m_successes() {
        use Health::{Down, Up};
        assert_eq!(
            run(
                &[true, false, true, false, false, true, true, false, true, true, true],
                2,
                3
            ),
            [Up, Up, Up, Up, Down, Down, Down, Down, Down, Down, Up]
        );
    }

    #[test]
    fn unknown_until_the_first_verdict() {
        use Health::{Down, Unknown, Up};
        assert_eq!(run(&[false, false], 2, 3), [Unknown, Down]);
        assert_eq!(run(&[false, true], 2, 3), [Unknown, Up]);
        assert_eq!(run(&[false], 1, 1), [Down]);
    }

    #[test]
    fn load_comes_from_the_body_when_it_has_one() {
        assert_eq!(parse_load(br#"{"load": 0.5}"#, 100), Some(0.5));
        assert_eq!(parse_load(br#"{"connections": 25}"#, 100), Some(0.25));
        assert_eq!(
            parse_load(br#"{"connections": 25, "capacity": 50}"#, 100),
            Some(0.5)
        );
        assert_eq!(parse_load(br#"{"connections": 25}"#, 0), None);
        assert_eq!(parse_load(b"ready\n", 100), None);
        assert_eq!(parse_load(br#"{"status": "ready"}"#, 100), None);
        assert_eq!(parse_load(br#"{"load": -1}"#, 100), None);
        assert_eq!(parse_load(br#"{"load": "high"}"#, 100), None);
    }

    #[test]
    fn a_region_nodes_readyz_body_gives_the_regions_load() {
        use meridian_protocol::health::RegionLoad;
        let body = ReadyReport::ready(
            10,
            Some(RegionLoad {
                connections: 30,
                nodes: 3,
            }),
        )
        .encode();
        assert_eq!(parse_load(body.as_bytes(), 120), Some(0.25));
        // Without the region's count a node reports no load (healthy, load unknown).
        let body = ReadyReport::ready(10, None).encode();
        assert_eq!(parse_load(body.as_bytes(), 120), None);
    }
}
