//! The machine's floor for fan-out latency: what any server pays at the least to hand one
//! message to N TCP connections on this machine, so that fan-out latencies can be read against
//! it.
//!
//! `floor-serve` is a server that does nothing else: blocking sockets, and for every line the
//! publisher sends, one `write(2)` of that line to each subscriber connection in turn (no
//! framing, no parsing, no queue, no task switch). `floor` is its load: the fan-out scenario's
//! publisher and subscribers over plain TCP (lines instead of WebSocket frames), the same
//! payload (stamp and padding), the same clock, the same histogram. Its latency is a lower
//! bound for the `fanout` scenario's with the same members and rate on the same pinned core:
//! a real signaling server does this work and more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::now_us;
use crate::hist::Recorder;
use crate::procstat::{cpu_between, snapshot};
use crate::report::{Phase, Report};
use crate::wire::{payload, stamp};
use crate::{LoadgenError, OutputArgs};

/// Options of `floor-serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where to listen (loopback); prints `listening on ADDR` once bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Unused (no report); present so that every subcommand takes the output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `floor`.
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// The `floor-serve` address.
    #[arg(long)]
    pub server: SocketAddr,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Publishes per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of the measured phase.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Filler bytes in each payload (as `fanout --pad`).
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
    /// Reports and accounting.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs the floor server until the process is killed. Each client first sends `P\n`
/// (publisher) or `S\n` (subscriber).
pub fn serve(args: &ServeArgs) -> Result<(), LoadgenError> {
    let listener = TcpListener::bind(args.listen)?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    serve_on(listener)
}

/// [`serve`] on a bound listener.
pub fn serve_on(listener: TcpListener) -> Result<(), LoadgenError> {
    let subscribers: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        // A client that never names its role must not stall the accept loop.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut role = [0u8; 2];
        if stream.read_exact(&mut role).is_err() {
            continue;
        }
        let _ = stream.set_read_timeout(None);
        match &role {
            b"S\n" => subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(stream),
            b"P\n" => {
                let subscribers = subscribers.clone();
                std::thread::spawn(move || publish_loop(stream, &subscribers));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes every line the publisher sends to every subscriber, one `write(2)` each; drops
/// subscribers whose write fails.
fn publish_loop(publisher: TcpStream, subscribers: &Mutex<Vec<TcpStream>>) {
    let mut lines = BufReader::new(publisher);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain_mut(|s| s.write_all(&line).is_ok());
    }
}

/// Runs the floor load against `floor-serve`: one fixed-rate phase.
pub async fn run(args: FloorArgs) -> Result<Report, LoadgenError> {
    let recorder = Arc::new(Recorder::new());
    let connect = |role: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(args.server).await?;
        s.set_nodelay(true)?;
        s.write_all(role).await?;
        Ok::<_, std::io::Error>(s)
    };
    let mut readers = Vec::with_capacity(args.members);
    for _ in 0..args.members {
        let mut s = connect(b"S\n")
            .await
            .map_err(|e| LoadgenError::Servers(format!("floor subscriber: {e}")))?;
        let recorder = recorder.clone();
        readers.push(tokio::spawn(async move {
            // As tungstenite's reads in the other scenarios: a 4 KiB buffer, then split.
            let mut buf = vec![0u8; 4096];
            let mut have = 0;
            loop {
                let n = match s.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                have += n;
                let mut start = 0;
                while let Some(end) = buf[start..have].iter().position(|&c| c == b'\n') {
                    if let Some(st) = std::str::from_utf8(&buf[start..start + end])
                        .ok()
                        .and_then(stamp)
                    {
                        recorder.record(st.phase, now_us().saturating_sub(st.sent_us));
                    }
                    start += end + 1;
                }
                buf.copy_within(start..have, 0);
                have -= start;
                if have == buf.len() {
                    return; // a line longer than the buffer: not ours
                }
            }
        }));
    }
    let mut publisher = connect(b"P\n")
        .await
        .map_err(|e| LoadgenError::Servers(format!("floor publisher: {e}")))?;
    // The server registers subscribers as it accepts them; let it catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let phase_tag = 1;
    let before = snapshot(&args.output.pids);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    loop {
        let at = tick.tick().await.into_std();
        if at >= end {
            break;
        }
        let due = (at.duration_since(start).as_secs_f64() * args.rate) as u64;
        let mut lines = String::new();
        for _ in sent..due {
            lines.push_str(payload(now_us(), phase_tag, None, args.pad).get());
            lines.push('\n');
        }
        if !lines.is_empty() {
            publisher
                .write_all(lines.as_bytes())
                .await
                .map_err(|e| LoadgenError::Servers(format!("floor publisher: {e}")))?;
            sent = due;
        }
    }
    let window = start.elapsed().as_secs_f64();
    let after = snapshot(&args.output.pids);
    let expected = sent * args.members as u64;
    let settle = Instant::now() + Duration::from_secs(10);
    while recorder.phase(phase_tag).len() < expected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in readers {
        r.abort();
    }
    let hist = recorder.phase(phase_tag);
    let phase = Phase {
        name: "fixed".into(),
        seconds: window,
        offered_per_s: Some(args.rate),
        sent,
        delivered: hist.len(),
        expected: Some(expected),
        delivered_per_s: hist.len() as f64 / window,
        latency: hist.summary(),
        cpu: cpu_between(&before, &after),
        ..Phase::default()
    }
    .finish();
    Ok(Report {
        scenario: "floor".into(),
        system: "floor".into(),
        params: json!({
            "members": args.members, "rate": args.rate, "seconds": args.seconds, "pad": args.pad,
        }),
        headline: Some("fixed".into()),
        phases: vec![phase],
        ..Report::default()
    })
}
