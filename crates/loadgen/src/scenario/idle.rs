//! Idle connections: `--connections` clients connect (from several loopback source addresses,
//! alternating servers), authenticate (Meridian `hello`, Socket.IO connect) and then only
//! answer the servers' heartbeats. The resident memory (`VmRSS`) of the watched server
//! processes is read before the first connection and again after all are open and
//! `--hold-seconds` have passed; the difference over the connection count is the memory per
//! idle connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{open_many, Progress};
use crate::client::{Client, ClientError, Stage};
use crate::procstat::{cpu_between, rss_kib, rss_of, snapshot};
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

/// Runs the idle-connections scenario.
pub async fn run(args: IdleArgs) -> Result<Report, LoadgenError> {
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

    let before_kib = rss_of(&before);
    let after_kib = rss_of(&after);
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
        }),
        memory: Some(Memory {
            connections: still_open,
            node_kib_per_connection: per(true),
            all_kib_per_connection: per(false),
            before_kib,
            after_kib,
            loadgen_kib: rss_kib(std::process::id()).unwrap_or(0),
        }),
        ..Report::default()
    };
    let mut connect = Phase {
        name: "connect".into(),
        seconds: connect_s,
        sent: n as u64,
        delivered: opened as u64,
        expected: Some(n as u64),
        delivered_per_s: opened as f64 / connect_s.max(1e-9),
        cpu: cpu_between(&before, &connected),
        ..Phase::default()
    };
    connect
        .extra
        .insert("open_after_hold".into(), still_open as f64);
    report.phases.push(connect.finish());
    let mut holding = Phase {
        name: "hold".into(),
        seconds: args.hold_seconds,
        cpu: cpu_between(&connected, &after),
        ..Phase::default()
    };
    holding.extra.insert("open".into(), still_open as f64);
    report.phases.push(holding);
    report.headline = Some("connect".into());
    for t in tasks.into_iter().flatten() {
        t.abort();
    }
    errors.fill(&mut report);
    Ok(report)
}
