//! Idle connections: `--connections` clients connect (from several loopback source addresses,
//! alternating servers), authenticate (Meridian `hello`, Socket.IO connect) and then only
//! answer the servers' heartbeats. The resident memory (`VmRSS`) of the watched server
//! processes is read before the first connection and again after all are open and
//! `--hold-seconds` have passed; the difference over the connection count is the memory per
//! idle connection.
//!
//! One process may hold only as many sockets as its `RLIMIT_NOFILE` allows (a hard 20,000 on
//! the benchmark machine, which cannot be raised without `CAP_SYS_RESOURCE`). With
//! `--processes K` the load generator starts K copies of itself (the same command line, each
//! told `--worker I`), each opening its share of the connections; they report on stdout
//! (`open N`, `lost`, `error ...`) and exit when their stdin closes. The parent holds no
//! connection itself and reads the servers' memory once every worker has reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{open_many, Progress};
use crate::client::Target;
use crate::client::{Client, ClientError, Stage};
use crate::procstat::{cpu_between, rss_kib, rss_of, snapshot, Snapshot};
use crate::report::{Errors, Memory, Phase, Report};
use crate::wire::Incoming;
use crate::{LoadgenError, OutputArgs, TargetArgs};

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// What to connect to.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Reports and accounting.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 50_000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold every connection open before reading memory (heartbeats keep going).
    #[arg(long, default_value_t = 15.0)]
    pub hold_seconds: f64,
    /// Worker processes holding the connections (0: this process; 1 connection needs 1 file
    /// descriptor, so more than one process is needed past the open-files limit).
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Internal: this process is worker I of --processes.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
}

/// The connection numbers worker `i` of `k` opens.
fn share(connections: usize, i: usize, k: usize) -> std::ops::Range<usize> {
    let k = k.max(1);
    (connections * i / k)..(connections * (i + 1) / k)
}

async fn hold(mut client: Client, open: Arc<AtomicU64>, errors: Arc<Errors>) {
    open.fetch_add(1, Ordering::Relaxed);
    let why = loop {
        match client.next_text().await {
            Ok(Some(t)) => {
                if let Incoming::Refused(why) = client.classify(t.as_str()) {
                    break why;
                }
            }
            Ok(None) => break "connection closed".to_owned(),
            Err(e) => break e,
        }
    };
    open.fetch_sub(1, Ordering::Relaxed);
    errors.add(&ClientError {
        stage: Stage::Traffic,
        detail: format!("idle connection lost: {why}"),
    });
}

/// Worker mode: open this worker's share, report on stdout, hold until stdin closes.
async fn run_worker(args: IdleArgs, index: usize) -> Result<Report, LoadgenError> {
    use tokio::io::AsyncReadExt;
    let target = Arc::new(args.target.target()?);
    let errors = Arc::new(Errors::default());
    let open = Arc::new(AtomicU64::new(0));
    let range = share(args.connections, index, args.processes);
    let first = range.start;
    let (lost_tx, mut lost_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let tasks = open_many(range.len(), args.concurrency, |j| {
        let (target, open, errors, lost) = (
            target.clone(),
            open.clone(),
            errors.clone(),
            lost_tx.clone(),
        );
        let n = first + j;
        async move {
            match Client::open(&target, n, &format!("idle{n}")).await {
                Ok(c) => Some(tokio::spawn(async move {
                    hold(c, open, errors).await;
                    let _ = lost.send(());
                })),
                Err(e) => {
                    println!("error {e}");
                    errors.add(&e);
                    None
                }
            }
        }
    })
    .await;
    println!(
        "retries {}",
        crate::client::SHED_RETRIES.swap(0, Ordering::Relaxed)
    );
    println!("open {}", tasks.iter().flatten().count());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            r = stdin.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
            Some(()) = lost_rx.recv() => println!("lost"),
        }
    }
    for t in tasks.into_iter().flatten() {
        t.abort();
    }
    Ok(Report {
        scenario: "idle-worker".into(),
        ..Report::default()
    })
}

/// The parent's view of its workers.
#[derive(Default)]
struct Workers {
    reported: AtomicU64,
    opened: AtomicU64,
    retries: AtomicU64,
    lost: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

/// The arguments of worker `i` of `k`: the parent's own (`args`, without the program name)
/// less `--processes`, `--json`, `--pid`, `--worker` and `--progress-ms` (the parent reports),
/// plus `--worker I --processes K --progress-ms 0`.
pub fn worker_args(args: &[String], i: usize, k: usize) -> Vec<String> {
    let mut kept = Vec::with_capacity(args.len() + 6);
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let flag = a.split('=').next().unwrap_or("");
        if matches!(
            flag,
            "--processes" | "--json" | "--pid" | "--worker" | "--progress-ms"
        ) {
            skip_value = !a.contains('=');
            continue;
        }
        kept.push(a.clone());
    }
    for (flag, value) in [
        ("--worker", i.to_string()),
        ("--processes", k.to_string()),
        ("--progress-ms", "0".to_owned()),
    ] {
        kept.push(flag.to_owned());
        kept.push(value);
    }
    kept
}

fn worker_command(i: usize, k: usize) -> Result<tokio::process::Command, LoadgenError> {
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(worker_args(&args, i, k))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Runs the idle-connections scenario.
pub async fn run(args: IdleArgs) -> Result<Report, LoadgenError> {
    if let Some(i) = args.worker {
        return run_worker(args, i).await;
    }
    if args.processes > 1 {
        return run_parent(args).await;
    }
    let target = Arc::new(args.target.target()?);
    let errors = Arc::new(Errors::default());
    let open = Arc::new(AtomicU64::new(0));
    let n = args.connections;
    eprintln!(
        "idle on {:?}: {n} connections over {} servers from {} source addresses",
        target.system,
        target.servers.len(),
        target.sources.len().max(1)
    );
    let before = snapshot(&args.output.pids);
    let progress = {
        let (open, errors) = (open.clone(), errors.clone());
        Progress::start(Duration::from_millis(args.output.progress_ms), move || {
            format!(
                "{} open, {} errors",
                open.load(Ordering::Relaxed),
                errors.total()
            )
        })
    };
    let t0 = Instant::now();
    let tasks = open_many(n, args.concurrency, |i| {
        let (target, open, errors) = (target.clone(), open.clone(), errors.clone());
        async move {
            match Client::open(&target, i, &format!("idle{i}")).await {
                Ok(c) => Some(tokio::spawn(hold(c, open, errors))),
                Err(e) => {
                    errors.add(&e);
                    None
                }
            }
        }
    })
    .await;
    let connect_s = t0.elapsed().as_secs_f64();
    let opened = tasks.iter().flatten().count();
    eprintln!(
        "  {opened} of {n} open in {connect_s:.1}s; holding {}s",
        args.hold_seconds
    );
    let connected = snapshot(&args.output.pids);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = snapshot(&args.output.pids);
    drop(progress);
    let still_open = open.load(Ordering::Relaxed);
    let mut report = measured(
        &args,
        &target,
        Measured {
            before: &before,
            connected: &connected,
            after: &after,
            connect_s,
            opened: opened as u64,
            still_open,
            loadgen_kib: rss_kib(std::process::id()).unwrap_or(0),
        },
    );
    for t in tasks.into_iter().flatten() {
        t.abort();
    }
    errors.fill(&mut report);
    Ok(report)
}

/// What one idle run observed.
struct Measured<'a> {
    before: &'a Snapshot,
    connected: &'a Snapshot,
    after: &'a Snapshot,
    connect_s: f64,
    opened: u64,
    still_open: u64,
    loadgen_kib: u64,
}

/// The report of an idle run from its observations.
fn measured(args: &IdleArgs, target: &Target, m: Measured<'_>) -> Report {
    let n = args.connections;
    let Measured {
        before,
        connected,
        after,
        connect_s,
        opened,
        still_open,
        loadgen_kib,
    } = m;
    let before_kib = rss_of(before);
    let after_kib = rss_of(after);
    let sum = |m: &std::collections::BTreeMap<String, u64>, nodes_only: bool| -> u64 {
        m.iter()
            .filter(|(k, _)| !nodes_only || k.starts_with("node"))
            .map(|(_, v)| *v)
            .sum()
    };
    let per = |nodes_only: bool| {
        if still_open == 0 {
            return 0.0;
        }
        let grown = sum(&after_kib, nodes_only) as f64 - sum(&before_kib, nodes_only) as f64;
        (grown / still_open as f64 * 100.0).round() / 100.0
    };
    let mut report = Report {
        scenario: "idle".into(),
        system: format!("{:?}", target.system).to_lowercase(),
        params: json!({
            "connections": n, "concurrency": args.concurrency, "hold_seconds": args.hold_seconds,
            "sources": target.sources.len(), "servers": target.servers.len(),
            "processes": args.processes.max(1),
        }),
        memory: Some(Memory {
            connections: still_open,
            node_kib_per_connection: per(true),
            all_kib_per_connection: per(false),
            before_kib,
            after_kib,
            loadgen_kib,
        }),
        ..Report::default()
    };
    let mut connect = Phase {
        name: "connect".into(),
        seconds: connect_s,
        sent: n as u64,
        delivered: opened,
        expected: Some(n as u64),
        delivered_per_s: opened as f64 / connect_s.max(1e-9),
        cpu: cpu_between(before, connected),
        ..Phase::default()
    };
    connect
        .extra
        .insert("open_after_hold".into(), still_open as f64);
    report.phases.push(connect.finish());
    let mut holding = Phase {
        name: "hold".into(),
        seconds: args.hold_seconds,
        cpu: cpu_between(connected, after),
        ..Phase::default()
    };
    holding.extra.insert("open".into(), still_open as f64);
    report.phases.push(holding);
    report.headline = Some("connect".into());
    report
}

/// Multi-process mode: the workers hold the connections; this process measures.
async fn run_parent(args: IdleArgs) -> Result<Report, LoadgenError> {
    use tokio::io::AsyncBufReadExt;
    let k = args.processes;
    let n = args.connections;
    let target = args.target.target()?;
    eprintln!(
        "idle on {:?}: {n} connections over {} servers from {} source addresses, {k} worker processes",
        target.system,
        target.servers.len(),
        target.sources.len().max(1)
    );
    let before = snapshot(&args.output.pids);
    let workers = Arc::new(Workers::default());
    let mut children = Vec::with_capacity(k);
    let t0 = Instant::now();
    for i in 0..k {
        let mut child = worker_command(i, k)?.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LoadgenError::Io(std::io::Error::other("worker stdout")))?;
        let w = workers.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(count) = line.strip_prefix("open ") {
                    w.opened
                        .fetch_add(count.trim().parse().unwrap_or(0), Ordering::Relaxed);
                    w.reported.fetch_add(1, Ordering::Relaxed);
                } else if let Some(count) = line.strip_prefix("retries ") {
                    w.retries
                        .fetch_add(count.trim().parse().unwrap_or(0), Ordering::Relaxed);
                } else if line == "lost" {
                    w.lost.fetch_add(1, Ordering::Relaxed);
                } else if let Some(e) = line.strip_prefix("error ") {
                    if let Ok(mut s) = w.samples.lock() {
                        s.push(e.to_owned());
                    }
                }
            }
        });
        children.push(child);
    }
    let progress = {
        let w = workers.clone();
        Progress::start(Duration::from_millis(args.output.progress_ms), move || {
            format!(
                "{} of {k} workers done, {} open, {} errors",
                w.reported.load(Ordering::Relaxed),
                w.opened.load(Ordering::Relaxed),
                w.samples.lock().map(|s| s.len()).unwrap_or(0)
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while workers.reported.load(Ordering::Relaxed) < k as u64 {
        if Instant::now() > deadline {
            return Err(LoadgenError::Servers(
                "workers did not finish connecting in 600 s".into(),
            ));
        }
        for c in &mut children {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(LoadgenError::Servers(format!(
                    "a worker exited early: {status}"
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let opened = workers.opened.load(Ordering::Relaxed);
    eprintln!(
        "  {opened} of {n} open in {connect_s:.1}s; holding {}s",
        args.hold_seconds
    );
    let connected = snapshot(&args.output.pids);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    let after = snapshot(&args.output.pids);
    drop(progress);
    let still_open = opened.saturating_sub(workers.lost.load(Ordering::Relaxed));
    let loadgen_kib: u64 = children
        .iter()
        .filter_map(|c| c.id())
        .filter_map(rss_kib)
        .sum::<u64>()
        + rss_kib(std::process::id()).unwrap_or(0);
    for mut c in children {
        drop(c.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    let samples = workers
        .samples
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let failed = n as u64 - opened;
    let mut report = measured(
        &args,
        &target,
        Measured {
            before: &before,
            connected: &connected,
            after: &after,
            connect_s,
            opened,
            still_open,
            loadgen_kib,
        },
    );
    if failed > 0 {
        report.errors.insert("connect-or-handshake".into(), failed);
    }
    let lost = opened - still_open;
    if lost > 0 {
        report.errors.insert("traffic".into(), lost);
    }
    report.error_samples = samples.into_iter().take(20).collect();
    report.shed_retries = workers.retries.load(Ordering::Relaxed);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_command_line() {
        let parent: Vec<String> = [
            "bench",
            "idle",
            "--system",
            "meridian",
            "--processes",
            "3",
            "--json",
            "out.json",
            "--pid",
            "node1=5,node2=6",
            "--progress-ms=500",
            "--connections",
            "90",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let w = worker_args(&parent, 1, 3);
        assert_eq!(
            w.join(" "),
            "bench idle --system meridian --connections 90 --worker 1 --processes 3 --progress-ms 0"
        );
    }

    #[test]
    fn shares_cover_everything_once() {
        let all: Vec<usize> = (0..3).flat_map(|i| share(50_000, i, 3)).collect();
        assert_eq!(all, (0..50_000).collect::<Vec<_>>());
    }
}
