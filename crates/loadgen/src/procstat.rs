//! What the servers under load used, read from `/proc`: CPU seconds (`utime + stime` of every
//! thread, `/proc/PID/stat`) and resident memory (`VmRSS`, `/proc/PID/status`). The processes
//! are named on the command line; the load generator never starts them.

use std::collections::BTreeMap;

use serde::Serialize;

/// The kernel's clock ticks per second for `/proc/PID/stat` times. Linux has reported
/// `USER_HZ` = 100 on every mainstream architecture for decades; `getconf CLK_TCK` says so.
const CLOCK_TICKS: f64 = 100.0;

/// A server process whose usage is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// A label for the report (`node1`, `redis`).
    pub label: String,
    /// Its process id.
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;
    /// `LABEL=PID` or just `PID`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (label, pid) = match s.split_once('=') {
            Some((l, p)) => (l.to_owned(), p),
            None => (format!("pid{s}"), s),
        };
        let pid = pid
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: expected LABEL=PID"))?;
        Ok(Self { label, pid })
    }
}

/// CPU seconds (user + system) a process has used since it started.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid … utime is field 14, stime 15 (1-based over the whole line).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A reading of every watched process at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    own_cpu: Option<f64>,
    cpu: BTreeMap<String, f64>,
    rss: BTreeMap<String, u64>,
    at: Option<std::time::Instant>,
}

/// Reads CPU and RSS of every watched process.
pub fn snapshot(watched: &[Watched]) -> Snapshot {
    let mut s = Snapshot {
        own_cpu: cpu_seconds(std::process::id()),
        at: Some(std::time::Instant::now()),
        ..Snapshot::default()
    };
    for w in watched {
        if let Some(c) = cpu_seconds(w.pid) {
            s.cpu.insert(w.label.clone(), c);
        }
        if let Some(r) = rss_kib(w.pid) {
            s.rss.insert(w.label.clone(), r);
        }
    }
    s
}

/// Server CPU used between two snapshots.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuUsage {
    /// CPU seconds per process.
    pub by_process: BTreeMap<String, f64>,
    /// Their sum.
    pub total_s: f64,
    /// Wall-clock seconds between the snapshots.
    pub wall_s: f64,
    /// `total_s / wall_s`: cores the servers kept busy.
    pub cores: f64,
    /// Cores the load generator itself kept busy (near 1 on one pinned core: it, not the
    /// servers, may be what limits the rate).
    pub loadgen_cores: f64,
}

/// The CPU every watched process used from `before` to `after`.
pub fn cpu_between(before: &Snapshot, after: &Snapshot) -> CpuUsage {
    let mut by_process = BTreeMap::new();
    for (label, end) in &after.cpu {
        if let Some(start) = before.cpu.get(label) {
            by_process.insert(label.clone(), round3(end - start));
        }
    }
    let total_s = round3(by_process.values().sum());
    let wall_s = match (before.at, after.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let per_wall = |v: f64| {
        if wall_s > 0.0 {
            round3(v / wall_s)
        } else {
            0.0
        }
    };
    let own = match (before.own_cpu, after.own_cpu) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    CpuUsage {
        by_process,
        total_s,
        wall_s: round3(wall_s),
        cores: per_wall(total_s),
        loadgen_cores: per_wall(own),
    }
}

/// RSS of each watched process in a snapshot, KiB.
pub fn rss_of(s: &Snapshot) -> BTreeMap<String, u64> {
    s.rss.clone()
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the counter is non-zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kib(me).is_some_and(|r| r > 0));
        let w: Watched = format!("me={me}").parse().unwrap();
        assert_eq!(w.label, "me");
        let a = snapshot(std::slice::from_ref(&w));
        let b = snapshot(&[w]);
        let u = cpu_between(&a, &b);
        assert!(u.total_s >= 0.0 && u.by_process.contains_key("me"));
        assert!("x=y".parse::<Watched>().is_err());
    }
}
