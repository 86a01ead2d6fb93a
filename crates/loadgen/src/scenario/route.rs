//! HTTP front-door load: `--connections` keep-alive HTTP/1.1 connections, each sending GETs
//! back to back for `--seconds`, rotating the client address of `--path` (`{ip}` is replaced
//! by each of `--ips` in turn). Reported: requests/s, latency percentiles, responses by
//! status. Used for geo-router's `/v1/route` (and `/v1/connect`) against nginx's geoip2
//! redirect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Progress;
use crate::client::tcp_connect;
use crate::hist::Histogram;
use crate::procstat::{cpu_between, snapshot};
use crate::report::{Phase, Report};
use crate::{LoadgenError, OutputArgs};

/// Options of `route`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouteArgs {
    /// Reports and accounting.
    #[command(flatten)]
    pub output: OutputArgs,
    /// The HTTP server, host:port.
    #[arg(long)]
    pub server: SocketAddr,
    /// A name for the report (`geo-router`, `nginx`).
    #[arg(long, default_value = "http")]
    pub name: String,
    /// Request path; `{ip}` is replaced by the client addresses of `--ips` in turn.
    #[arg(long, default_value = "/v1/route?ip={ip}")]
    pub path: String,
    /// Client addresses to ask about.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "81.20.3.1,23.10.4.1,103.40.1.1,177.10.2.1"
    )]
    pub ips: Vec<String>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_seconds: f64,
}

#[derive(Default)]
struct Tally {
    hist: Histogram,
    status: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Reads one response; returns its status and whether the server closes the connection
/// after it. `buf` keeps bytes past the response. The load generator's own cost per response
/// shows in what it measures (a slower client leaves the server idle and waking more often),
/// so it reads into spare capacity (no zeroed chunk per read) and scans only new bytes.
async fn read_response(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, bool), String> {
    let mut scanned: usize = 0;
    loop {
        let from = scanned.saturating_sub(3);
        if let Some(at) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at;
            let head = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line: {head:.60}"))?;
            let mut length = None;
            let mut close = false;
            for line in head.split("\r\n").skip(1) {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.trim().eq_ignore_ascii_case("close");
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err("chunked responses are not supported".into());
                }
            }
            let total = end + 4 + length.unwrap_or(0);
            while buf.len() < total {
                read_more(stream, buf, "closed mid-body").await?;
            }
            buf.drain(..total);
            return Ok((status, close));
        }
        scanned = buf.len();
        read_more(stream, buf, "connection closed").await?;
    }
}

/// Appends what the socket has to `buf`.
async fn read_more(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    eof: &str,
) -> Result<(), String> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    let n = stream.read_buf(buf).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(eof.into());
    }
    Ok(())
}

async fn worker(
    args: Arc<RouteArgs>,
    index: usize,
    recording: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut local = Tally::default();
    let requests: Vec<Vec<u8>> = args
        .ips
        .iter()
        .map(|ip| {
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: meridian-loadgen\r\n\r\n",
                args.path.replace("{ip}", ip),
                args.server
            )
            .into_bytes()
        })
        .collect();
    let mut n = index;
    'outer: while !stop.load(Ordering::Relaxed) {
        let mut stream = match tcp_connect(args.server, None).await {
            Ok(s) => s,
            Err(e) => {
                local.errors += 1;
                local.first_error.get_or_insert(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut buf = Vec::with_capacity(16384);
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let req = &requests[n % requests.len()];
            let t = Instant::now();
            if let Err(e) = stream.write_all(req).await {
                local.errors += 1;
                local.first_error.get_or_insert(format!("write: {e}"));
                continue 'outer;
            }
            match read_response(&mut stream, &mut buf).await {
                Ok((status, close)) => {
                    if recording.load(Ordering::Relaxed) {
                        local.hist.record(t.elapsed().as_micros() as u64);
                        *local.status.entry(status).or_default() += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    if close {
                        continue 'outer;
                    }
                }
                Err(e) => {
                    local.errors += 1;
                    local.first_error.get_or_insert(e);
                    continue 'outer;
                }
            }
        }
    }
    if let Ok(mut t) = tally.lock() {
        t.hist.merge(&local.hist);
        for (k, v) in local.status {
            *t.status.entry(k).or_default() += v;
        }
        t.errors += local.errors;
        if t.first_error.is_none() {
            t.first_error = local.first_error;
        }
    }
}

/// Runs the HTTP front-door scenario.
pub async fn run(args: RouteArgs) -> Result<Report, LoadgenError> {
    if args.ips.is_empty() {
        return Err(LoadgenError::Config("--ips is empty".into()));
    }
    let args = Arc::new(args);
    eprintln!(
        "route on {} ({}): {} connections, {}s",
        args.name, args.server, args.connections, args.seconds
    );
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..args.connections)
        .map(|i| {
            tokio::spawn(worker(
                args.clone(),
                i,
                recording.clone(),
                stop.clone(),
                count.clone(),
                tally.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_seconds)).await;
    let progress = {
        let count = count.clone();
        let last = Mutex::new((0u64, Instant::now()));
        Progress::start(Duration::from_millis(args.output.progress_ms), move || {
            let now = (count.load(Ordering::Relaxed), Instant::now());
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            let rate = (now.0 - l.0) as f64 / now.1.duration_since(l.1).as_secs_f64().max(1e-3);
            *l = now;
            format!("{rate:.0} requests/s")
        })
    };
    let before = snapshot(&args.output.pids);
    recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    recording.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let after = snapshot(&args.output.pids);
    stop.store(true, Ordering::Relaxed);
    drop(progress);
    for w in workers {
        if tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .is_err()
        {
            eprintln!("  a connection did not finish in 5 s");
        }
    }
    let t = tally
        .lock()
        .map_err(|_| LoadgenError::Config("tally poisoned".into()))?;
    let done = t.hist.len();
    let mut phase = Phase {
        name: "load".into(),
        seconds: window,
        sent: done,
        delivered: done,
        delivered_per_s: done as f64 / window,
        latency: t.hist.summary(),
        cpu: cpu_between(&before, &after),
        ..Phase::default()
    };
    for (status, n) in &t.status {
        phase.extra.insert(format!("status_{status}"), *n as f64);
    }
    let mut report = Report {
        scenario: "route".into(),
        system: args.name.clone(),
        params: json!({
            "server": args.server.to_string(), "path": args.path, "ips": args.ips,
            "connections": args.connections, "seconds": args.seconds,
        }),
        phases: vec![phase.finish()],
        headline: Some("load".into()),
        ..Report::default()
    };
    if t.errors > 0 {
        report.errors.insert("http".into(), t.errors);
    }
    if let Some(e) = &t.first_error {
        report.error_samples.push(e.clone());
    }
    Ok(report)
}
