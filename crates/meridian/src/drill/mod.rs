//! `meridian drill`: a regional failover rehearsal with a report.
//!
//! The drill places synthetic users over the world with the router (`/v1/route?ip=` with
//! addresses of the demo cities), puts them in rooms shared across regions, lets them publish
//! and exchange direct messages ([`workload`]), then drains region R through the routing
//! controls and its nodes (`drain`) or kills its processes (`kill`, local mesh only). It
//! measures when the router stops sending users to R (DNS with ECS and HTTP, polled), how long
//! each affected client takes to be connected and resumed elsewhere, every message's fate
//! ([`ledger`]), ghost and missing members after the grace period, and — after undraining or
//! restarting R — the return of traffic. [`report`] prints the table and writes the JSON; SLO
//! flags turn violations into exit status 3.
//!
//! Modules: [`run`] (the drill as phases over one `DrillRun`: setup, disrupt, observe,
//! restore, report), [`timeline`] (connections per second and notes), [`target`] (what the
//! drill talks to), [`mesh`] (router, DNS and `meridian up` control clients), [`workload`]
//! (clients), [`routing`] (watching the routing move), [`membership`] (members listings
//! against the connected clients), [`restore`] (the return of traffic), [`ledger`] (pure
//! accounting), [`report`] (output and SLOs).

pub mod ledger;
mod membership;
pub mod mesh;
pub mod report;
mod restore;
mod routing;
mod run;
mod target;
mod timeline;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

pub use membership::Membership;
pub use restore::Restore;
pub use routing::RouteWatch;
pub use timeline::TimelinePoint;

/// How region R is taken away.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Routing-control drain on the router, then the region's nodes send `reconnect`.
    Drain,
    /// SIGKILL every process of the region (local mesh only), front first.
    Kill,
}

/// `meridian drill` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// The region to drain or kill.
    #[arg(long)]
    pub region: String,
    /// `drain` (routing control + node drain) or `kill` (local mesh only).
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Synthetic clients (spread over the regions by the router).
    #[arg(long, default_value_t = 24)]
    pub clients: usize,
    /// Rooms; each mixes clients of every region.
    #[arg(long, default_value_t = 6)]
    pub rooms: usize,
    /// How long the workload publishes (the drill also waits for the grace period and the
    /// return of traffic): `90s`, `2m`, `45`.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub duration: Duration,
    /// Write the JSON report here (the readable report goes to stdout). Default with a local
    /// mesh: `<state-dir>/drill-<run>.json`; for a deployment, only when given.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// `endpoints.json` of a running `meridian up`.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// The state directory of a running `meridian up` (reads its endpoints.json).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The router's HTTP API (`http://HOST:PORT`) for a deployment; must allow `?ip=`.
    #[arg(long)]
    pub router: Option<String>,
    /// The router's admin API (`http(s)://HOST:PORT`: its `admin_listen`, not the public HTTP
    /// port) for --mode drain; a local mesh has it in endpoints.json.
    #[arg(long, env = "MERIDIAN_ROUTER_ADMIN")]
    pub router_admin: Option<String>,
    /// A PEM certificate to trust for an `https://` --router-admin (the router's self-signed
    /// admin certificate, or your CA), besides the platform's roots.
    #[arg(long, env = "MERIDIAN_ROUTER_ADMIN_CA")]
    pub router_admin_ca: Option<PathBuf>,
    /// The router's DNS server (`HOST:PORT`) to poll with ECS; without it only HTTP is polled.
    #[arg(long)]
    pub dns: Option<String>,
    /// The zone the router serves (`ws.<zone>` is queried).
    #[arg(long)]
    pub zone: Option<String>,
    /// The router's admin bearer token (drain / undrain).
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The token secret the nodes accept (the drill mints its users' tokens).
    #[arg(long, env = "MERIDIAN_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// The relays' region-down grace period (default: from endpoints.json, else 15 s).
    #[arg(long, value_parser = crate::duration::parse_duration)]
    pub grace: Option<Duration>,
    /// Deployment drain: a shell command that makes R's nodes drain (e.g. an `ssh … systemctl
    /// stop meridian-node` loop); without it only the routing control is drained.
    #[arg(long)]
    pub drain_command: Option<String>,
    /// Deployment restore: a shell command that starts R's nodes again.
    #[arg(long)]
    pub restore_command: Option<String>,
    /// Leave R drained / killed at the end (no return-of-traffic measurement).
    #[arg(long)]
    pub no_restore: bool,
    /// Mean interval between one client's room publishes.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse_duration)]
    pub publish_every: Duration,
    /// Mean interval between one client's direct messages.
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse_duration)]
    pub direct_every: Duration,
    /// SLO: route-away time (HTTP and DNS) at most this.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub slo_route_away: Duration,
    /// SLO: 95 % of affected clients re-homed and resumed within this.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse_duration)]
    pub slo_rehome_p95: Duration,
    /// SLO: 99 % of affected clients re-homed and resumed within this.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub slo_rehome_p99: Duration,
    /// SLO: room messages lost at most this many (message × recipient).
    #[arg(long, default_value_t = 0)]
    pub max_lost: u64,
    /// SLO: duplicated room messages at most this many.
    #[arg(long, default_value_t = 0)]
    pub max_duplicated: u64,
    /// SLO: ghost members after the grace period at most this many.
    #[arg(long, default_value_t = 0)]
    pub max_ghosts: u64,
    /// Optional SLO: missing members after the grace period.
    #[arg(long)]
    pub max_missing: Option<u64>,
    /// Optional SLO: lost direct messages (they are at-most-once by protocol).
    #[arg(long)]
    pub max_direct_lost: Option<u64>,
    /// Seed for placement jitter and timers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the drill; returns whether every SLO held.
pub fn run(args: DrillArgs) -> Result<bool> {
    let target = target::resolve(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run::drill(args, target))
}
