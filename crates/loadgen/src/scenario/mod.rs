//! The scenarios, and what they share: the clock every payload is stamped with, a progress
//! printer, and opening many clients with bounded concurrency.

pub mod fanout;
pub mod floor;
pub mod idle;
pub mod joinstorm;
pub mod pairs;
pub mod route;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use crate::{LoadgenError, OutputArgs, Report};

/// A scenario with its options.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// One room, N members over the servers, one publisher: a fixed-rate latency phase, then a
    /// rate ramp until deliveries stop growing or latency explodes.
    Fanout(fanout::FanoutArgs),
    /// Signaling pairs exchanging offer/answer/ICE bursts with direct messages.
    Pairs(pairs::PairsArgs),
    /// Many idle connections; resident memory per connection of the server processes.
    Idle(idle::IdleArgs),
    /// Clients connect, authenticate and join as fast as possible.
    Joinstorm(joinstorm::JoinstormArgs),
    /// HTTP GET load on a front door (`/v1/route`, nginx's geoip2 redirect).
    Route(route::RouteArgs),
    /// The machine's fan-out latency floor: `fanout`'s load over plain TCP against
    /// `floor-serve`.
    Floor(floor::FloorArgs),
    /// The floor server: one write(2) per subscriber per published line, nothing else; runs
    /// until killed.
    FloorServe(floor::ServeArgs),
}

impl Scenario {
    /// The output options of whichever scenario this is.
    pub fn output(&self) -> &OutputArgs {
        match self {
            Self::Fanout(a) => &a.output,
            Self::Pairs(a) => &a.output,
            Self::Idle(a) => &a.output,
            Self::Joinstorm(a) => &a.output,
            Self::Route(a) => &a.output,
            Self::Floor(a) => &a.output,
            Self::FloorServe(a) => &a.output,
        }
    }
}

/// Runs a scenario to its report (without printing it).
pub async fn run(scenario: Scenario) -> Result<Report, LoadgenError> {
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut report = match scenario {
        Scenario::Fanout(a) => fanout::run(a).await?,
        Scenario::Pairs(a) => pairs::run(a).await?,
        Scenario::Idle(a) => idle::run(a).await?,
        Scenario::Joinstorm(a) => joinstorm::run(a).await?,
        Scenario::Route(a) => route::run(a).await?,
        Scenario::Floor(a) => floor::run(a).await?,
        Scenario::FloorServe(a) => {
            tokio::task::spawn_blocking(move || floor::serve(&a))
                .await
                .map_err(|e| LoadgenError::Io(std::io::Error::other(e)))??;
            Report::default()
        }
    };
    report.started_unix = started_unix;
    report.shed_retries += crate::client::SHED_RETRIES.swap(0, Ordering::Relaxed);
    Ok(report)
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds on the load generator's monotonic clock (one clock for sender and receiver).
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// Prints a progress line every `period` until dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
}

impl Progress {
    /// Calls `line()` every `period` and prints it to stderr (`period` zero: nothing).
    pub fn start(period: Duration, line: impl Fn() -> String + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !period.is_zero() {
            let flag = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    eprintln!("  .. {}", line());
                }
            });
        }
        Self { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `open(i)` for `0..count` with at most `concurrency` at a time and returns the results
/// in order.
pub async fn open_many<T, F, Fut>(count: usize, concurrency: usize, open: F) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let fut = open(i);
        handles.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(count);
    for h in handles {
        out.push(h.await.ok().flatten());
    }
    out
}

/// Waits until `count()` stops changing for `quiet`, at most `max`.
pub async fn settle(count: impl Fn() -> u64, quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = count();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}
