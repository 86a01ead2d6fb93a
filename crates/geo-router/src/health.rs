//! Active health checks of every region, with hysteresis.
//!
//! Every `health.interval_ms` each region's `health_url` is fetched with a `health.timeout_ms`
//! limit. A 2xx answer is a success; anything else (error status, refused connection, timeout)
//! a failure. [`Hysteresis`]: `fall` consecutive failures mark a region down, `rise`
//! consecutive successes mark it up again; before the first probe completes a region is
//! [`Health::Unknown`], which routes like up.
//!
//! **Load.** A 2xx body that is JSON may carry the region's load: `{"load": 0.42}` (fraction of
//! capacity), or `{"connections": 1234}` (divided by the catalogue's `capacity`, or by a
//! `"capacity"` field in the body). Any other body counts as healthy with unknown load.
//!
//! **Detection bound.** With the defaults (interval 1 s, timeout 0.8 s, fall 2) a region that
//! dies is marked down at most `interval × fall + timeout` = 2.8 s later
//! ([`crate::config::HealthConfig::detection_bound`]), and the next DNS answer or `/v1/route`
//! call routes around it: well inside the 5 s the design asks for. Resolvers may still hold a
//! cached answer for the TTL (30 s by default), so the bound on new users arriving is
//! 2.8 s + TTL.

use std::time::Duration;

use serde::Deserialize;

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

/// The load-bearing fields of a probe body.
#[derive(Debug, Default, Deserialize)]
struct LoadReport {
    load: Option<f64>,
    connections: Option<f64>,
    capacity: Option<f64>,
}

/// The load a probe body reports, if any: `load`, or `connections / capacity`.
pub fn parse_load(body: &[u8], catalogue_capacity: u64) -> Option<f64> {
    let report: LoadReport = serde_json::from_slice(body).ok()?;
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
            connections / capacity
        }
        (None, None) => return None,
    };
    (load.is_finite() && load >= 0.0).then_some(load)
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
    /// How long it took.
    pub latency: Duration,
}

/// Fetches `url` once. Never fails: every problem is a failed probe with its reason.
pub async fn probe(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    capacity: u64,
) -> ProbeResult {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(timeout, async {
        let response = client.get(url).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Bodies are small; cap what we read so a broken endpoint cannot hold memory.
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(parse_load(
                body.get(..body.len().min(64 * 1024)).unwrap_or_default(),
                capacity,
            ))
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    })
    .await;
    let latency = started.elapsed();
    match outcome {
        Ok(Ok(load)) => ProbeResult {
            ok: true,
            load,
            error: None,
            latency,
        },
        Ok(Err(error)) => ProbeResult {
            ok: false,
            load: None,
            error: Some(error),
            latency,
        },
        Err(_) => ProbeResult {
            ok: false,
            load: None,
            error: Some(format!("no answer within {} ms", timeout.as_millis())),
            latency,
        },
    }
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
}
