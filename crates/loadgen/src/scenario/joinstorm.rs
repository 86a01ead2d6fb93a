//! Join storm: `--clients` clients connect (TCP + WebSocket), authenticate and join a room as
//! fast as the servers let them, with at most `--concurrency` attempts in flight. Reported:
//! the time until the last client has its join reply, errors by stage, and the per-client time
//! from connect start to join reply. Rooms hold `--room-size` members each (every join sends a
//! `joined` event to the room's earlier members on both systems), so `--room-size 10000` is
//! one huge room.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{now_us, open_many, Progress};
use crate::client::Client;
use crate::hist::Recorder;
use crate::procstat::{cpu_between, snapshot};
use crate::report::{Errors, Phase, Report};
use crate::{LoadgenError, OutputArgs, TargetArgs};

/// Options of `joinstorm`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinstormArgs {
    /// What to connect to.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Reports and accounting.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Clients.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Attempts in flight at once.
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Seconds to keep the clients connected after the last join (their close is not timed).
    #[arg(long, default_value_t = 1.0)]
    pub linger_seconds: f64,
}

/// Runs the join-storm scenario.
pub async fn run(args: JoinstormArgs) -> Result<Report, LoadgenError> {
    let target = Arc::new(args.target.target()?);
    let errors = Arc::new(Errors::default());
    let recorder = Arc::new(Recorder::new());
    let n = args.clients;
    let room_size = args.room_size.max(1);
    eprintln!(
        "joinstorm on {:?}: {n} clients, rooms of {room_size}, {} in flight",
        target.system, args.concurrency
    );
    let progress = {
        let (recorder, errors) = (recorder.clone(), errors.clone());
        Progress::start(Duration::from_millis(args.output.progress_ms), move || {
            format!("{} joined, {} errors", recorder.received(), errors.total())
        })
    };
    let before = snapshot(&args.output.pids);
    let t0 = Instant::now();
    let clients = open_many(n, args.concurrency, |i| {
        let (target, errors, recorder) = (target.clone(), errors.clone(), recorder.clone());
        async move {
            let start = now_us();
            let r = async {
                let mut c = Client::open(&target, i, &format!("storm{i}")).await?;
                c.join(&format!("storm-{}", i / room_size)).await?;
                Ok::<_, crate::client::ClientError>(c)
            }
            .await;
            match r {
                Ok(c) => {
                    recorder.record(1, now_us().saturating_sub(start));
                    Some(c)
                }
                Err(e) => {
                    errors.add(&e);
                    None
                }
            }
        }
    })
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let after = snapshot(&args.output.pids);
    drop(progress);
    let joined = clients.iter().flatten().count() as u64;
    eprintln!("  {joined} of {n} joined in {elapsed:.2}s");
    let mut report = Report {
        scenario: "joinstorm".into(),
        system: format!("{:?}", target.system).to_lowercase(),
        params: json!({
            "clients": n, "room_size": room_size, "concurrency": args.concurrency,
            "servers": target.servers.len(), "sources": target.sources.len(),
        }),
        ..Report::default()
    };
    let mut phase = Phase {
        name: "storm".into(),
        seconds: elapsed,
        sent: n as u64,
        delivered: joined,
        expected: Some(n as u64),
        delivered_per_s: joined as f64 / elapsed.max(1e-9),
        latency: recorder.phase(1).summary(),
        cpu: cpu_between(&before, &after),
        ..Phase::default()
    };
    phase.extra.insert(
        "time_to_all_joined_s".into(),
        (elapsed * 1000.0).round() / 1000.0,
    );
    report.phases.push(phase.finish());
    report.headline = Some("storm".into());
    tokio::time::sleep(Duration::from_secs_f64(args.linger_seconds)).await;
    drop(clients);
    errors.fill(&mut report);
    Ok(report)
}
