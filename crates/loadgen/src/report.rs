//! The result of one scenario run: per-phase rates, latency percentiles and server CPU, memory
//! for `idle`, error counts by stage; printed as a summary and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::LatencySummary;
use crate::procstat::CpuUsage;

/// One measured phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// `fixed`, `step3`, `storm`, …
    pub name: String,
    /// Length of the measured window.
    pub seconds: f64,
    /// Offered rate (publishes/s, messages/s, or requests/s), when the phase has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
    /// Messages or requests sent.
    pub sent: u64,
    /// Deliveries (or responses) received for this phase's messages.
    pub delivered: u64,
    /// Deliveries expected if nothing was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// Deliveries received per second during the window (wall clock).
    pub delivered_per_s: f64,
    /// End-to-end latency of this phase's deliveries.
    pub latency: LatencySummary,
    /// Server CPU over the window.
    pub cpu: CpuUsage,
    /// `delivered_per_s / cpu.cores`: deliveries per second per fully used server core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_per_cpu_s: Option<f64>,
    /// Scenario-specific figures.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl Phase {
    /// Fills `delivered_per_cpu_s` from the other fields.
    pub fn finish(mut self) -> Self {
        self.delivered_per_s = crate::procstat::round3(self.delivered_per_s);
        if self.cpu.total_s > 0.0 && self.seconds > 0.0 {
            let per_cpu = self.delivered_per_s * self.seconds / self.cpu.total_s;
            self.delivered_per_cpu_s = Some(per_cpu.round());
        }
        self
    }
}

/// Resident memory before and after (`idle`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// Connections open when `after` was read.
    pub connections: u64,
    /// RSS per process before connecting, KiB.
    pub before_kib: BTreeMap<String, u64>,
    /// RSS per process with every connection open, KiB.
    pub after_kib: BTreeMap<String, u64>,
    /// (Σ after − Σ before) of the `node*` processes / connections, in KiB.
    pub node_kib_per_connection: f64,
    /// The same including every other watched process (Redis).
    pub all_kib_per_connection: f64,
    /// The load generator's own RSS, KiB.
    pub loadgen_kib: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `fanout`, `pairs`, `idle`, `joinstorm`, `route`.
    pub scenario: String,
    /// `meridian`, `socketio`, or the HTTP server's name for `route`.
    pub system: String,
    /// `--label`.
    pub label: String,
    /// The scenario's parameters as given.
    pub params: serde_json::Value,
    /// Measured phases in order.
    pub phases: Vec<Phase>,
    /// Which phase is the headline figure (e.g. the best saturation step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    /// `idle` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Client failures by stage (`connect`, `upgrade`, `handshake`, `join`, `traffic`).
    pub errors: BTreeMap<String, u64>,
    /// A few example error messages.
    pub error_samples: Vec<String>,
    /// Observations worth keeping (why a ramp stopped, …).
    pub notes: Vec<String>,
    /// Handshakes refused with `reconnect` (Meridian's admission control) and retried after
    /// the delay the server asked for; not errors.
    pub shed_retries: u64,
    /// The soft RLIMIT_NOFILE the run had.
    pub nofile_limit: u64,
    /// Unix seconds at the start.
    pub started_unix: u64,
}

impl Report {
    /// The phase named `name`.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Total client failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== {} against {}", self.scenario, self.system);
        for p in &self.phases {
            let _ = write!(
                s,
                "  {:<10} {:>6.1}s  sent {:>9}  delivered {:>10}",
                p.name, p.seconds, p.sent, p.delivered
            );
            if let Some(e) = p.expected {
                let _ = write!(s, " of {e}");
            }
            let _ = write!(s, "  {:>10.0}/s", p.delivered_per_s);
            if let Some(o) = p.offered_per_s {
                let _ = write!(s, " (offered {o:.0}/s)");
            }
            let _ = write!(
                s,
                "  server CPU {:.2}s ({:.2} cores; load generator {:.2} cores)",
                p.cpu.total_s, p.cpu.cores, p.cpu.loadgen_cores
            );
            if let Some(c) = p.delivered_per_cpu_s {
                let _ = write!(s, " = {c:.0}/CPU-s");
            }
            let _ = writeln!(s);
            if p.latency.count > 0 {
                let _ = writeln!(s, "             latency {}", p.latency);
            }
            for (k, v) in &p.extra {
                let _ = writeln!(s, "             {k} = {v}");
            }
        }
        if let Some(h) = &self.headline {
            let _ = writeln!(s, "  headline: {h}");
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                s,
                "  memory: {} connections, node RSS {:.2} KiB/connection ({:.2} with the rest), before {:?} after {:?} KiB; load generator {} KiB",
                m.connections, m.node_kib_per_connection, m.all_kib_per_connection, m.before_kib, m.after_kib, m.loadgen_kib
            );
        }
        let _ = writeln!(s, "  errors: {:?}", self.errors);
        if self.shed_retries > 0 {
            let _ = writeln!(
                s,
                "  handshakes shed by the server and retried after its delay: {}",
                self.shed_retries
            );
        }
        for e in self.error_samples.iter().take(5) {
            let _ = writeln!(s, "    e.g. {e}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

/// Client failure counts shared by a scenario's tasks.
#[derive(Debug, Default)]
pub struct Errors {
    inner: std::sync::Mutex<(BTreeMap<String, u64>, Vec<String>)>,
}

impl Errors {
    /// Counts one failure.
    pub fn add(&self, e: &crate::client::ClientError) {
        if let Ok(mut g) = self.inner.lock() {
            *g.0.entry(e.stage.name().to_owned()).or_default() += 1;
            if g.1.len() < 20 {
                g.1.push(e.to_string());
            }
        }
    }

    /// Total so far.
    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .map(|g| g.0.values().sum())
            .unwrap_or_default()
    }

    /// Moves the counts into a report.
    pub fn fill(&self, report: &mut Report) {
        if let Ok(g) = self.inner.lock() {
            report.errors = g.0.clone();
            report.error_samples = g.1.clone();
        }
    }
}
