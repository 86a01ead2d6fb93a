//! Meridian's load generator: the client side of the benchmarks of issue 8, speaking either
//! Meridian's protocol v1 (`/v1/ws`) or Socket.IO's own (Engine.IO v4 over a WebSocket), so both
//! systems get the same load from the same code.
//!
//! Scenarios ([`Scenario`]): `fanout` (one room, one publisher, a fixed-rate latency phase and a
//! saturation ramp), `pairs` (signaling pairs exchanging offer/answer/ICE bursts with `send`),
//! `idle` (many idle connections from several loopback source addresses; server RSS per
//! connection), `joinstorm` (clients connect, authenticate and join as fast as possible) and
//! `route` (HTTP GET load on a front door such as `/v1/route`). Each prints progress and a
//! summary on stderr and can write a JSON [`Report`].
//!
//! The load generator never starts servers: `bench/run.sh` starts them (Redis, two
//! `region-node`s or two Socket.IO processes, the geo-router or nginx), pins them, and passes
//! their pids with `--pid LABEL=PID` so CPU seconds and RSS come from `/proc` for exactly the
//! measured window.
//!
//! Entry points: [`run`] (blocking; builds its own tokio runtime) and [`run_async`]. The
//! `meridian` CLI can offer `meridian bench SCENARIO ...` by holding a [`BenchArgs`] in its
//! subcommand enum (`Bench(loadgen::BenchArgs)`) and calling
//! `Command::Bench(args) => loadgen::run(args).map(|_| ())?` — the binary `meridian-loadgen`
//! here does exactly that.
//!
//! Modules: [`wire`] (the two protocols as pure functions), [`client`] (one connection),
//! [`hist`] (latency histogram and per-phase recorder), [`procstat`] (CPU and RSS from `/proc`),
//! [`report`], and one module per scenario under [`scenario`].

#![forbid(unsafe_code)]

pub mod client;
pub mod hist;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use report::Report;
pub use scenario::Scenario;
pub use wire::System;

/// Why a run could not be carried out (failures of single clients are counted in the report,
/// not returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadgenError {
    /// A bad flag or combination of flags; retrying the same command cannot help.
    #[error("bad arguments: {0}")]
    Config(String),
    /// The servers could not be used at all (e.g. no client could connect); the servers may
    /// not be up yet, so retrying can help.
    #[error("servers unusable: {0}")]
    Servers(String),
    /// A local resource failed: the runtime, the report file, the file descriptor limit.
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// `meridian-loadgen SCENARIO [OPTIONS]` (and, later, `meridian bench SCENARIO [OPTIONS]`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The scenario and its options.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options shared by the WebSocket scenarios: what to connect to and how.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The system under test (decides the protocol and the WebSocket path).
    #[arg(long, value_enum)]
    pub system: System,
    /// Its servers, host:port (repeat or comma-separate; clients alternate between them).
    #[arg(long = "server", value_delimiter = ',', required = true)]
    pub servers: Vec<SocketAddr>,
    /// The HS256 token secret the servers verify.
    #[arg(
        long,
        env = "MERIDIAN_TOKEN_SECRET",
        default_value = "bench-secret-0123456789"
    )]
    pub secret: String,
    /// Loopback source addresses to connect from, round robin: `FIRST-LAST` (a range in the
    /// last octet), a comma-separated list, or `none` (the kernel chooses). Each source
    /// address has its own ~28,000 ephemeral ports towards one server.
    #[arg(long, default_value = "127.0.0.2-127.0.0.17")]
    pub sources: String,
    /// How long one connect, handshake or reply may take, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl TargetArgs {
    /// The resolved target.
    pub fn target(&self) -> Result<client::Target, LoadgenError> {
        Ok(client::Target {
            system: self.system,
            servers: self.servers.clone(),
            secret: self.secret.clone(),
            sources: parse_sources(&self.sources)?,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

/// Options about what is measured besides the client side and where the report goes.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// A server process to account for, `LABEL=PID` (repeatable): CPU seconds per phase, and
    /// RSS for `idle`. Labels starting with `node` are the processes whose RSS per connection
    /// `idle` reports (region nodes, Socket.IO processes); others (`redis`) are listed apart.
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<procstat::Watched>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A free-form label stored in the report (e.g. the run id).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Progress line period in milliseconds (0: none).
    #[arg(long, default_value_t = 1000)]
    pub progress_ms: u64,
}

/// Parses `127.0.0.2-127.0.0.17`, `127.0.0.2,127.0.0.3` or `none`.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, LoadgenError> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "none" {
        return Ok(Vec::new());
    }
    let bad = || LoadgenError::Config(format!("--sources `{spec}`: expected FIRST-LAST or a list"));
    if let Some((a, b)) = spec.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            return Err(bad());
        }
        return Ok((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))).collect());
    }
    spec.split(',')
        .map(|s| s.trim().parse::<IpAddr>().map_err(|_| bad()))
        .collect()
}

/// Raises the soft open-files limit to the hard one (tens of thousands of sockets).
pub fn raise_nofile() -> Result<u64, LoadgenError> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    Ok(hard)
}

/// Runs one scenario on a runtime of its own with `threads` worker threads (0: one per CPU this
/// process may use, which is 1 when `bench/run.sh` pins it with taskset).
pub fn run_with_threads(args: BenchArgs, threads: usize) -> Result<Report, LoadgenError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run_async(args))
}

/// Runs one scenario (blocking): the entry point for `meridian bench`.
pub fn run(args: BenchArgs) -> Result<Report, LoadgenError> {
    run_with_threads(args, 0)
}

/// Runs one scenario on the current tokio runtime, prints its summary, writes `--json`.
pub async fn run_async(args: BenchArgs) -> Result<Report, LoadgenError> {
    let limit = raise_nofile()?;
    let output = args.scenario.output().clone();
    let worker = matches!(&args.scenario, Scenario::Idle(a) if a.worker.is_some());
    let mut report = scenario::run(args.scenario).await?;
    report.label = output.label.clone();
    report.nofile_limit = limit;
    if worker {
        return Ok(report);
    }
    eprintln!("{}", report.summary());
    if let Some(path) = &output.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| LoadgenError::Io(std::io::Error::other(e)))?;
        std::fs::write(path, text + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let s = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert!(parse_sources("none").unwrap().is_empty());
        assert_eq!(parse_sources("127.0.0.9,127.0.0.8").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.5-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
    }
}
