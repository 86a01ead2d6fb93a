//! Signaling pairs: `pairs` callers on the first server, each with a callee on the second, so
//! every message crosses between servers through Redis. A burst is what a WebRTC call setup
//! sends: the caller's offer, the callee's answer and `--ice` candidates, then the caller's
//! `--ice` candidates (2 + 2 × ice direct messages, each acknowledged by the server). Phase
//! `paced` starts one burst per pair every `--interval-ms` (spread evenly), a fixed offered
//! rate; phase `closed` starts the next burst as soon as the last one completed (saturation).
//! Latency is per direct message, send → receive; `burst_rtt` is offer sent → caller has the
//! answer and every candidate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use super::{now_us, open_many, Progress};
use crate::client::{Client, ClientError, Stage};
use crate::hist::{Recorder, MAX_PHASES};
use crate::procstat::{cpu_between, snapshot};
use crate::report::{Errors, Phase, Report};
use crate::wire::{payload, stamp, Incoming};
use crate::{LoadgenError, OutputArgs, TargetArgs};

/// Options of `pairs`.
#[derive(Debug, Clone, clap::Args)]
pub struct PairsArgs {
    /// What to connect to.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Reports and accounting.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Caller/callee pairs (twice as many connections).
    #[arg(long, default_value_t = 5000)]
    pub pairs: usize,
    /// ICE candidates each side sends per burst.
    #[arg(long, default_value_t = 4)]
    pub ice: u64,
    /// Paced phase: each pair starts a burst this often (10 s: 5,000 pairs offer 5,000
    /// messages/s, a moderate load for either system on one core here).
    #[arg(long, default_value_t = 10_000)]
    pub interval_ms: u64,
    /// Seconds of the paced phase (0: skip).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of the closed-loop phase (0: skip).
    #[arg(long, default_value_t = 10.0)]
    pub closed_seconds: f64,
    /// Filler bytes per message (an SDP offer is a few KiB; candidates ~100 B).
    #[arg(long, default_value_t = 200)]
    pub pad: usize,
    /// Clients connecting at once during setup.
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
    /// A burst not complete after this long is given up (counted) and the next one starts.
    #[arg(long, default_value_t = 5000)]
    pub burst_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Idle,
    Paced { tag: usize, interval: Duration },
    Closed { tag: usize },
}

#[derive(Debug)]
struct Shared {
    latency: Recorder,
    burst_rtt: Recorder,
    sent: Vec<AtomicU64>,
    bursts: Vec<AtomicU64>,
    skipped: Vec<AtomicU64>,
    timed_out: Vec<AtomicU64>,
    errors: Errors,
}

fn counters() -> Vec<AtomicU64> {
    (0..MAX_PHASES).map(|_| AtomicU64::new(0)).collect()
}

fn bump(v: &[AtomicU64], tag: usize, n: u64) {
    if let Some(c) = v.get(tag) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

fn traffic(detail: String) -> ClientError {
    ClientError {
        stage: Stage::Traffic,
        detail,
    }
}

struct Burst {
    number: u64,
    tag: usize,
    started: Instant,
    answered: bool,
    ice: u64,
}

async fn send_all(
    client: &mut Client,
    to: &str,
    frames: impl Iterator<Item = Box<serde_json::value::RawValue>>,
) -> Result<u64, ClientError> {
    let mut n = 0;
    for data in frames {
        let f = client.send_frame(to, data)?;
        client
            .feed(f)
            .await
            .map_err(|e| traffic(format!("send: {e}")))?;
        n += 1;
    }
    client
        .flush()
        .await
        .map_err(|e| traffic(format!("flush: {e}")))?;
    Ok(n)
}

async fn caller(
    mut client: Client,
    pair: usize,
    pairs: usize,
    args: Arc<PairsArgs>,
    shared: Arc<Shared>,
    mut mode_rx: watch::Receiver<Mode>,
) {
    let callee = format!("pe{pair}");
    let timeout = Duration::from_millis(args.burst_timeout_ms);
    let mut mode = *mode_rx.borrow();
    let mut current: Option<Burst> = None;
    let mut number = 0u64;
    let mut next_at = tokio::time::Instant::now() + Duration::from_secs(3600);
    let result: Result<(), ClientError> = async {
        loop {
            let paced = matches!(mode, Mode::Paced { .. });
            let closed = matches!(mode, Mode::Closed { .. });
            let give_up_at = current.as_ref().map_or(next_at, |b| {
                tokio::time::Instant::from_std(b.started) + timeout
            });
            let start_now = tokio::select! {
                _ = tokio::time::sleep_until(give_up_at), if closed && current.is_some() => true,
                changed = mode_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    mode = *mode_rx.borrow();
                    if let Mode::Paced { interval, .. } = mode {
                        // Spread the pairs' bursts evenly over one interval.
                        let offset = interval.mul_f64(pair as f64 / pairs.max(1) as f64);
                        next_at = tokio::time::Instant::now() + offset;
                    }
                    matches!(mode, Mode::Closed { .. }) && current.is_none()
                }
                _ = tokio::time::sleep_until(next_at), if paced => {
                    if let Mode::Paced { interval, tag } = mode {
                        next_at += interval;
                        match &current {
                            Some(b) if b.started.elapsed() < timeout => {
                                bump(&shared.skipped, tag, 1);
                                false
                            }
                            Some(b) => {
                                bump(&shared.timed_out, b.tag, 1);
                                true
                            }
                            None => true,
                        }
                    } else {
                        false
                    }
                }
                text = client.next_text() => {
                    let text = text
                        .map_err(|e| traffic(format!("caller: {e}")))?
                        .ok_or_else(|| traffic("caller: connection closed".into()))?;
                    let mut ice_to_send = None;
                    let mut complete = false;
                    match client.classify(text.as_str()) {
                        Incoming::Delivery { direct: true, body } => {
                            if let Some(s) = stamp(body) {
                                shared.latency.record(s.phase, now_us().saturating_sub(s.sent_us));
                                if let Some(b) = current.as_mut().filter(|b| b.number == s.burst) {
                                    match s.kind {
                                        b'a' => {
                                            b.answered = true;
                                            ice_to_send = Some((b.number, b.tag));
                                        }
                                        b'i' => b.ice += 1,
                                        _ => {}
                                    }
                                    complete = b.answered && b.ice >= args.ice;
                                }
                            }
                        }
                        Incoming::Reply { ok: false, error, .. } => {
                            shared.errors.add(&traffic(format!("caller send refused: {}", error.unwrap_or_default())));
                        }
                        Incoming::Refused(why) => return Err(traffic(format!("caller: {why}"))),
                        _ => {}
                    }
                    if let Some((b, tag)) = ice_to_send {
                        let pad = args.pad.min(100);
                        let n = send_all(
                            &mut client,
                            &callee,
                            (0..args.ice).map(|_| payload(now_us(), tag, Some(('i', b)), pad)),
                        )
                        .await?;
                        bump(&shared.sent, tag, n);
                    }
                    if complete {
                        if let Some(b) = current.take() {
                            shared.burst_rtt.record(b.tag, b.started.elapsed().as_micros() as u64);
                            bump(&shared.bursts, b.tag, 1);
                        }
                    }
                    complete && matches!(mode, Mode::Closed { .. })
                }
            };
            if start_now {
                if let Some(b) = current.take() {
                    if !(b.answered && b.ice >= args.ice) {
                        bump(&shared.timed_out, b.tag, 1);
                    }
                }
                let tag = match mode {
                    Mode::Paced { tag, .. } | Mode::Closed { tag } => tag,
                    Mode::Idle => continue,
                };
                number += 1;
                current = Some(Burst {
                    number,
                    tag,
                    started: Instant::now(),
                    answered: false,
                    ice: 0,
                });
                let offer = payload(now_us(), tag, Some(('o', number)), args.pad);
                let n = send_all(&mut client, &callee, std::iter::once(offer)).await?;
                bump(&shared.sent, tag, n);
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.errors.add(&e);
    }
}

async fn callee(mut client: Client, pair: usize, args: Arc<PairsArgs>, shared: Arc<Shared>) {
    let caller = format!("pc{pair}");
    let result: Result<(), ClientError> = async {
        loop {
            let text = client
                .next_text()
                .await
                .map_err(|e| traffic(format!("callee: {e}")))?
                .ok_or_else(|| traffic("callee: connection closed".into()))?;
            let mut answer = None;
            match client.classify(text.as_str()) {
                Incoming::Delivery { direct: true, body } => {
                    if let Some(s) = stamp(body) {
                        shared
                            .latency
                            .record(s.phase, now_us().saturating_sub(s.sent_us));
                        if s.kind == b'o' {
                            answer = Some((s.burst, s.phase));
                        }
                    }
                }
                Incoming::Reply {
                    ok: false, error, ..
                } => shared.errors.add(&traffic(format!(
                    "callee send refused: {}",
                    error.unwrap_or_default()
                ))),
                Incoming::Refused(why) => return Err(traffic(format!("callee: {why}"))),
                _ => {}
            }
            if let Some((b, tag)) = answer {
                let pad = args.pad;
                let frames = std::iter::once(payload(now_us(), tag, Some(('a', b)), pad)).chain(
                    (0..args.ice).map(|_| payload(now_us(), tag, Some(('i', b)), pad.min(100))),
                );
                let n = send_all(&mut client, &caller, frames).await?;
                bump(&shared.sent, tag, n);
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.errors.add(&e);
    }
}

/// Runs the signaling-pairs scenario.
pub async fn run(args: PairsArgs) -> Result<Report, LoadgenError> {
    let target = Arc::new(args.target.target()?);
    let args = Arc::new(args);
    let pairs = args.pairs;
    let shared = Arc::new(Shared {
        latency: Recorder::new(),
        burst_rtt: Recorder::new(),
        sent: counters(),
        bursts: counters(),
        skipped: counters(),
        timed_out: counters(),
        errors: Errors::default(),
    });
    let (mode_tx, mode_rx) = watch::channel(Mode::Idle);
    eprintln!(
        "pairs on {:?}: {pairs} pairs ({} connections), callers on server 1, callees on server 2",
        target.system,
        pairs * 2
    );
    let setup = Instant::now();
    // Callees first: a send to a user who is not connected yet would fail.
    let callees = open_many(pairs, args.concurrency, |i| {
        let (target, args, shared) = (target.clone(), args.clone(), shared.clone());
        async move {
            match Client::open(&target, 2 * i + 1, &format!("pe{i}")).await {
                Ok(c) => Some(tokio::spawn(callee(c, i, args, shared))),
                Err(e) => {
                    shared.errors.add(&e);
                    None
                }
            }
        }
    })
    .await;
    let callers = open_many(pairs, args.concurrency, |i| {
        let (target, args, shared, rx) = (
            target.clone(),
            args.clone(),
            shared.clone(),
            mode_rx.clone(),
        );
        async move {
            match Client::open(&target, 2 * i, &format!("pc{i}")).await {
                Ok(c) => Some(tokio::spawn(caller(c, i, pairs, args, shared, rx))),
                Err(e) => {
                    shared.errors.add(&e);
                    None
                }
            }
        }
    })
    .await;
    let setup_s = setup.elapsed().as_secs_f64();
    let connected = callers.iter().flatten().count() + callees.iter().flatten().count();
    eprintln!(
        "  {connected} of {} connections up in {setup_s:.1}s",
        pairs * 2
    );
    if connected == 0 {
        return Err(LoadgenError::Servers("no client could connect".into()));
    }
    let msgs_per_burst = 2 + 2 * args.ice;
    let mut report = Report {
        scenario: "pairs".into(),
        system: format!("{:?}", target.system).to_lowercase(),
        params: json!({
            "pairs": pairs, "connected": connected, "ice": args.ice,
            "messages_per_burst": msgs_per_burst, "interval_ms": args.interval_ms,
            "seconds": args.seconds, "closed_seconds": args.closed_seconds, "pad": args.pad,
            "setup_s": setup_s,
        }),
        ..Report::default()
    };
    let progress = {
        let shared = shared.clone();
        let last = std::sync::Mutex::new((shared.latency.received(), Instant::now()));
        Progress::start(Duration::from_millis(args.output.progress_ms), move || {
            let now = (shared.latency.received(), Instant::now());
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            let rate = (now.0 - l.0) as f64 / now.1.duration_since(l.1).as_secs_f64().max(1e-3);
            *l = now;
            format!(
                "{rate:.0} messages/s received, {} errors",
                shared.errors.total()
            )
        })
    };
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let mut plan = Vec::new();
    if args.seconds > 0.0 {
        plan.push(("paced", Mode::Paced { tag: 1, interval }, args.seconds));
    }
    if args.closed_seconds > 0.0 {
        plan.push(("closed", Mode::Closed { tag: 2 }, args.closed_seconds));
    }
    for (name, mode, seconds) in plan {
        let tag = match mode {
            Mode::Paced { tag, .. } | Mode::Closed { tag } => tag,
            Mode::Idle => 0,
        };
        eprintln!("  phase {name} for {seconds}s");
        let before = snapshot(&args.output.pids);
        let received_before = shared.latency.received();
        let t0 = Instant::now();
        let _ = mode_tx.send(mode);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let _ = mode_tx.send(Mode::Idle);
        let window = t0.elapsed().as_secs_f64();
        let after = snapshot(&args.output.pids);
        let in_window = shared.latency.received() - received_before;
        let s2 = shared.clone();
        super::settle(
            move || s2.latency.phase(tag).len(),
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
        .await;
        let hist = shared.latency.phase(tag);
        let get = |v: &[AtomicU64]| v[tag].load(Ordering::Relaxed);
        let sent = get(&shared.sent);
        let mut phase = Phase {
            name: name.into(),
            seconds: window,
            offered_per_s: match mode {
                Mode::Paced { interval, .. } => {
                    Some(pairs as f64 * msgs_per_burst as f64 / interval.as_secs_f64())
                }
                _ => None,
            },
            sent,
            delivered: hist.len(),
            expected: Some(sent),
            delivered_per_s: in_window as f64 / window,
            latency: hist.summary(),
            cpu: cpu_between(&before, &after),
            ..Phase::default()
        };
        let rtt = shared.burst_rtt.phase(tag).summary();
        phase
            .extra
            .insert("bursts_completed".into(), get(&shared.bursts) as f64);
        phase
            .extra
            .insert("bursts_skipped".into(), get(&shared.skipped) as f64);
        phase
            .extra
            .insert("bursts_timed_out".into(), get(&shared.timed_out) as f64);
        phase.extra.insert("burst_rtt_p50_ms".into(), rtt.p50_ms);
        phase.extra.insert("burst_rtt_p99_ms".into(), rtt.p99_ms);
        let phase = phase.finish();
        eprintln!(
            "    {:.0} messages/s, {}",
            phase.delivered_per_s, phase.latency
        );
        report.phases.push(phase);
    }
    drop(progress);
    report.headline = Some(if args.closed_seconds > 0.0 {
        "closed".into()
    } else {
        "paced".into()
    });
    for h in callers.into_iter().chain(callees).flatten() {
        h.abort();
    }
    shared.errors.fill(&mut report);
    Ok(report)
}
