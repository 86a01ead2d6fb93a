//! Fan-out: one room with `members` subscribers spread over the servers and one publisher (also
//! a member, on the first server). Phase `fixed` publishes at `--rate` and gives end-to-end
//! latency (publish sent → event received, one clock, every delivery). Then `stepN` phases
//! raise the rate by `--factor` each until delivered messages per second stop growing (two
//! steps under 5 % above the best), latency explodes (p99 over `--latency-limit-ms`) or
//! `--max-steps` is reached; the best step is the saturation figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{now_us, open_many, Progress};
use crate::client::{Client, ClientError, Stage};
use crate::hist::{Recorder, MAX_PHASES};
use crate::procstat::{cpu_between, snapshot};
use crate::report::{Errors, Phase, Report};
use crate::wire::{payload, stamp, Incoming};
use crate::{LoadgenError, OutputArgs, TargetArgs};

/// Options of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// What to connect to.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Reports and accounting.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Subscribers in the room (the publisher comes on top).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// The room.
    #[arg(long, default_value = "fanout")]
    pub room: String,
    /// Publishes per second of the fixed-rate latency phase (20 × 1,000 members is well
    /// under either system's saturation on one core here: latency at a moderate load).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of the fixed-rate phase.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// First rate of the saturation ramp (default: 2 × --rate).
    #[arg(long)]
    pub ramp_start: Option<f64>,
    /// Rate multiplier between ramp steps.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Seconds per ramp step.
    #[arg(long, default_value_t = 4.0)]
    pub step_seconds: f64,
    /// Most ramp steps (0: no ramp).
    #[arg(long, default_value_t = 14)]
    pub max_steps: usize,
    /// A step whose p99 exceeds this ends the ramp.
    #[arg(long, default_value_t = 1000.0)]
    pub latency_limit_ms: f64,
    /// Publishes without a reply yet beyond which the publisher waits.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: u64,
    /// Filler bytes in each payload.
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
    /// Clients connecting at once while the room fills.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// The publisher and its reply accounting.
struct Publisher {
    client: Client,
    sent: u64,
    acked: u64,
}

impl Publisher {
    fn handle(&mut self, text: &str, errors: &Errors) -> Result<(), ClientError> {
        match self.client.classify(text) {
            Incoming::Reply { ok, error, .. } => {
                self.acked += 1;
                if !ok {
                    errors.add(&ClientError {
                        stage: Stage::Traffic,
                        detail: format!("publish refused: {}", error.unwrap_or_default()),
                    });
                }
                Ok(())
            }
            Incoming::Refused(why) => Err(ClientError {
                stage: Stage::Traffic,
                detail: format!("publisher: {why}"),
            }),
            _ => Ok(()),
        }
    }

    async fn read_one(&mut self, errors: &Errors) -> Result<(), ClientError> {
        match self.client.next_text().await {
            Ok(Some(t)) => self.handle(t.as_str(), errors),
            Ok(None) => Err(ClientError {
                stage: Stage::Traffic,
                detail: "publisher: connection closed".into(),
            }),
            Err(e) => Err(ClientError {
                stage: Stage::Traffic,
                detail: format!("publisher: {e}"),
            }),
        }
    }

    /// Publishes at `rate` for `seconds` with tag `phase`; returns (sent, seconds throttled).
    async fn run_phase(
        &mut self,
        args: &FanoutArgs,
        rate: f64,
        seconds: f64,
        phase: usize,
        errors: &Errors,
    ) -> Result<(u64, f64), ClientError> {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sent = 0u64;
        let mut throttled = Duration::ZERO;
        loop {
            tokio::select! {
                biased;
                r = self.read_one(errors) => r?,
                at = tick.tick() => {
                    let at = at.into_std();
                    if at >= end {
                        break;
                    }
                    let due = (at.duration_since(start).as_secs_f64() * rate) as u64;
                    let mut burst = due.saturating_sub(sent);
                    let room = args.max_in_flight.saturating_sub(self.sent - self.acked);
                    if burst > room {
                        burst = room;
                        throttled += Duration::from_millis(1);
                    }
                    if burst == 0 {
                        continue;
                    }
                    for _ in 0..burst {
                        let data = payload(now_us(), phase, None, args.pad);
                        let frame = self.client.publish_frame(&args.room, data)?;
                        self.client.feed(frame).await.map_err(|e| ClientError {
                            stage: Stage::Traffic,
                            detail: format!("publisher send: {e}"),
                        })?;
                    }
                    self.client.flush().await.map_err(|e| ClientError {
                        stage: Stage::Traffic,
                        detail: format!("publisher flush: {e}"),
                    })?;
                    sent += burst;
                    self.sent += burst;
                }
            }
        }
        Ok((sent, throttled.as_secs_f64()))
    }

    /// Reads replies until `count()` has not changed for 300 ms (at most `max`).
    async fn settle(
        &mut self,
        count: impl Fn() -> u64,
        max: Duration,
        errors: &Errors,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + max;
        let mut last = count();
        let mut since = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while Instant::now() < deadline {
            tokio::select! {
                r = self.read_one(errors) => r?,
                _ = tick.tick() => {
                    let now = count();
                    if now != last {
                        last = now;
                        since = Instant::now();
                    } else if since.elapsed() >= Duration::from_millis(300)
                        && self.sent == self.acked
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

async fn subscriber(mut client: Client, recorder: Arc<Recorder>, errors: Arc<Errors>) {
    loop {
        let failure = match client.next_text().await {
            Ok(Some(t)) => match client.classify(t.as_str()) {
                Incoming::Delivery { body, .. } => {
                    if let Some(s) = stamp(body) {
                        recorder.record(s.phase, now_us().saturating_sub(s.sent_us));
                    }
                    continue;
                }
                Incoming::Refused(why) => why,
                _ => continue,
            },
            Ok(None) => "subscriber: connection closed".to_owned(),
            Err(e) => format!("subscriber: {e}"),
        };
        errors.add(&ClientError {
            stage: Stage::Traffic,
            detail: failure,
        });
        return;
    }
}

/// Runs the fan-out scenario.
pub async fn run(args: FanoutArgs) -> Result<Report, LoadgenError> {
    let target = Arc::new(args.target.target()?);
    let recorder = Arc::new(Recorder::new());
    let errors = Arc::new(Errors::default());
    let members = args.members;
    let room = args.room.clone();
    eprintln!(
        "fanout on {:?}: {members} members over {} servers, 1 publisher",
        target.system,
        target.servers.len()
    );

    let setup = Instant::now();
    let readers = open_many(members, args.concurrency, |i| {
        let (target, recorder, errors, room) = (
            target.clone(),
            recorder.clone(),
            errors.clone(),
            room.clone(),
        );
        async move {
            let opened = async {
                let mut c = Client::open(&target, i, &format!("sub{i}")).await?;
                c.join(&room).await?;
                Ok::<_, ClientError>(c)
            }
            .await;
            match opened {
                Ok(c) => Some(tokio::spawn(subscriber(c, recorder, errors))),
                Err(e) => {
                    errors.add(&e);
                    None
                }
            }
        }
    })
    .await;
    let readers: Vec<_> = readers.into_iter().flatten().collect();
    let joined = readers.len();
    if joined == 0 {
        return Err(LoadgenError::Servers(format!(
            "no subscriber could join: {:?}",
            {
                let mut r = Report::default();
                errors.fill(&mut r);
                r.error_samples
            }
        )));
    }
    let client = Client::open(&target, 0, "publisher")
        .await
        .map_err(|e| LoadgenError::Servers(format!("publisher: {e}")))?;
    let mut publisher = Publisher {
        client,
        sent: 0,
        acked: 0,
    };
    publisher
        .client
        .join(&room)
        .await
        .map_err(|e| LoadgenError::Servers(format!("publisher: {e}")))?;
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!("  {joined} of {members} subscribers joined in {setup_s:.1}s");
    // Let the joined events of the fill drain before measuring.
    publisher
        .settle(|| 0, Duration::from_millis(500), &errors)
        .await
        .map_err(|e| LoadgenError::Servers(e.to_string()))?;

    let progress = {
        let recorder = recorder.clone();
        let errors = errors.clone();
        let last = std::sync::Mutex::new((recorder.received(), Instant::now()));
        Progress::start(Duration::from_millis(args.output.progress_ms), move || {
            let now = (recorder.received(), Instant::now());
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            let rate = (now.0 - l.0) as f64 / now.1.duration_since(l.1).as_secs_f64().max(1e-3);
            *l = now;
            format!("{rate:.0} deliveries/s, {} errors", errors.total())
        })
    };

    let mut report = Report {
        scenario: "fanout".into(),
        system: format!("{:?}", target.system).to_lowercase(),
        params: json!({
            "members": members, "joined": joined, "servers": target.servers.len(),
            "rate": args.rate, "seconds": args.seconds, "factor": args.factor,
            "step_seconds": args.step_seconds, "max_steps": args.max_steps,
            "latency_limit_ms": args.latency_limit_ms, "max_in_flight": args.max_in_flight,
            "pad": args.pad, "setup_s": setup_s,
        }),
        ..Report::default()
    };

    let mut phase_no = 1usize;
    let mut measure = |name: String, rate: f64, seconds: f64| {
        let tag = phase_no;
        phase_no += 1;
        (name, rate, seconds, tag)
    };
    let mut plan = vec![measure("fixed".into(), args.rate, args.seconds)];
    let ramp_start = args.ramp_start.unwrap_or(args.rate * 2.0);
    let steps = args.max_steps.min(MAX_PHASES - 2);
    for k in 0..steps {
        plan.push(measure(
            format!("step{}", k + 1),
            ramp_start * args.factor.powi(k as i32),
            args.step_seconds,
        ));
    }

    let mut best: Option<(f64, String)> = None;
    let mut flat_steps = 0;
    for (name, rate, seconds, tag) in plan {
        eprintln!("  phase {name}: {rate:.0} publishes/s for {seconds}s");
        let before = snapshot(&args.output.pids);
        let received_before = recorder.received();
        let t0 = Instant::now();
        let (sent, throttled_s) = match publisher
            .run_phase(&args, rate, seconds, tag, &errors)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                errors.add(&e);
                report.notes.push(format!("{name}: stopped: {e}"));
                break;
            }
        };
        let window = t0.elapsed().as_secs_f64();
        let after = snapshot(&args.output.pids);
        let in_window = recorder.received() - received_before;
        let rec = recorder.clone();
        if let Err(e) = publisher
            .settle(
                move || rec.phase(tag).len(),
                Duration::from_secs(10),
                &errors,
            )
            .await
        {
            errors.add(&e);
            report.notes.push(format!("{name}: publisher lost: {e}"));
            break;
        }
        let hist = recorder.phase(tag);
        let mut phase = Phase {
            name: name.clone(),
            seconds: window,
            offered_per_s: Some(rate),
            sent,
            delivered: hist.len(),
            expected: Some(sent * joined as u64),
            delivered_per_s: in_window as f64 / window,
            latency: hist.summary(),
            cpu: cpu_between(&before, &after),
            ..Phase::default()
        };
        phase
            .extra
            .insert("published_per_s".into(), (sent as f64 / window).round());
        phase
            .extra
            .insert("publisher_throttled_s".into(), throttled_s);
        let phase = phase.finish();
        eprintln!(
            "    {:.0} deliveries/s ({} of {}), {}",
            phase.delivered_per_s,
            phase.delivered,
            sent * joined as u64,
            phase.latency
        );
        let rate_now = phase.delivered_per_s;
        let p99 = phase.latency.p99_ms;
        let is_step = name != "fixed";
        report.phases.push(phase);
        if !is_step {
            continue;
        }
        match &best {
            Some((b, _)) if rate_now < b * 1.05 => flat_steps += 1,
            _ => flat_steps = 0,
        }
        if best.as_ref().is_none_or(|(b, _)| rate_now > *b) {
            best = Some((rate_now, name.clone()));
        }
        if p99 > args.latency_limit_ms {
            report.notes.push(format!(
                "ramp ended at {name}: p99 {p99:.0} ms over the {} ms limit",
                args.latency_limit_ms
            ));
            break;
        }
        if flat_steps >= 2 {
            report.notes.push(format!(
                "ramp ended at {name}: deliveries/s did not grow 5 % over the best for 2 steps"
            ));
            break;
        }
    }
    drop(progress);
    if let Some((_, name)) = best {
        report.headline = Some(name);
    }
    for r in readers {
        r.abort();
    }
    publisher.client.close().await;
    errors.fill(&mut report);
    Ok(report)
}
