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
//! Modules: [`mesh`] (router, DNS and `meridian up` control clients), [`workload`] (clients),
//! [`ledger`] (pure accounting), [`report`] (output and SLOs).

pub mod ledger;
pub mod mesh;
pub mod report;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use ledger::{ClientLog, ClientRecord};
use mesh::{ControlApi, RouterApi};
use workload::{ClientPlan, Phase, Placed, Shared};

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
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
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
    #[arg(long, value_parser = crate::parse_duration)]
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
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub publish_every: Duration,
    /// Mean interval between one client's direct messages.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub direct_every: Duration,
    /// SLO: route-away time (HTTP and DNS) at most this.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub slo_route_away: Duration,
    /// SLO: 95 % of affected clients re-homed and resumed within this.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub slo_rehome_p95: Duration,
    /// SLO: 99 % of affected clients re-homed and resumed within this.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
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

/// Everything the drill talks to.
struct Target {
    router: RouterApi,
    /// The router's admin listener (drain / undrain).
    admin: Option<mesh::AdminApi>,
    dns: Option<SocketAddr>,
    zone: String,
    admin_token: Option<String>,
    token_secret: String,
    control: Option<ControlApi>,
    grace: Duration,
    local: bool,
    /// Where the JSON report goes without --report: the local mesh's state directory.
    report_dir: Option<PathBuf>,
}

fn dns_server(text: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .with_context(|| format!("--dns {text}: give the router's DNS server as HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--dns {text}: the name has no address"))
}

fn resolve(args: &DrillArgs) -> Result<Target> {
    let dns = args.dns.as_deref().map(dns_server).transpose()?;
    let endpoints = mesh::load_endpoints(args.endpoints.as_deref(), args.state_dir.as_deref())?;
    if let Some(ca) = endpoints.as_ref().and_then(|e| e.tls_ca.as_ref()) {
        crate::tls::trust_ca(ca)?;
    }
    let target = match endpoints {
        Some(e) => Target {
            router: RouterApi::new(
                args.router
                    .as_deref()
                    .unwrap_or(&format!("http://{}", e.router.http)),
            )?,
            admin: match (&args.router_admin, e.router.admin) {
                (Some(url), _) => Some(mesh::AdminApi::new(url, args.router_admin_ca.as_deref())?),
                (None, Some(addr)) => Some(mesh::AdminApi::new(&format!("http://{addr}"), None)?),
                (None, None) => None,
            },
            dns: dns.or(Some(e.router.dns)),
            zone: args.zone.clone().unwrap_or(e.zone),
            admin_token: args.admin_token.clone().or(Some(e.admin_token)),
            token_secret: args.token_secret.clone().unwrap_or(e.token_secret),
            control: Some(ControlApi::new(e.control)),
            grace: args
                .grace
                .unwrap_or(Duration::from_millis(e.relay_grace_ms)),
            local: true,
            report_dir: Some(e.state_dir),
        },
        None => {
            let router = args.router.as_deref().ok_or_else(|| {
                anyhow!(
                    "say which mesh to drill: --state-dir DIR (or --endpoints FILE) of a running \
                     `meridian up`, or --router http://HOST:PORT (plus --token-secret and \
                     --admin-token) for a deployment"
                )
            })?;
            Target {
                router: RouterApi::new(router)?,
                admin: args
                    .router_admin
                    .as_deref()
                    .map(|url| mesh::AdminApi::new(url, args.router_admin_ca.as_deref()))
                    .transpose()?,
                dns,
                zone: args
                    .zone
                    .clone()
                    .unwrap_or_else(|| "mesh.localhost.".into()),
                admin_token: args.admin_token.clone(),
                token_secret: args.token_secret.clone().ok_or_else(|| {
                    anyhow!(
                        "--token-secret (or MERIDIAN_TOKEN_SECRET) is needed to mint the \
                         drill's user tokens"
                    )
                })?,
                control: None,
                grace: args.grace.unwrap_or(Duration::from_secs(15)),
                local: false,
                report_dir: None,
            }
        }
    };
    if args.mode == Mode::Kill && target.control.is_none() {
        bail!(
            "--mode kill works on a local mesh only (--state-dir of `meridian up`): on a \
             deployment, kill the region yourself and use --mode drain for the routing side"
        );
    }
    if args.mode == Mode::Drain && target.admin_token.is_none() {
        bail!("--mode drain needs the router's admin token: --admin-token or MERIDIAN_ADMIN_TOKEN");
    }
    if args.mode == Mode::Drain && target.admin.is_none() {
        bail!(
            "--mode drain needs the router's admin API: --router-admin https://HOST:PORT (the \
             router's admin_listen; the public HTTP port does not serve /v1/admin)"
        );
    }
    if args.clients < 2 || args.clients > 5000 {
        bail!("--clients must be in 2..=5000");
    }
    if args.rooms == 0 || args.rooms > args.clients {
        bail!("--rooms must be in 1..=--clients");
    }
    Ok(target)
}

/// Runs the drill; returns whether every SLO held.
pub fn run(args: DrillArgs) -> Result<bool> {
    let target = resolve(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(drill(args, target))
}

/// One synthetic address per client: `a.b.<network>.<host>` in a demo city.
fn synthetic_address(city: &mmdb_writer::demo::DemoCity, index: usize) -> IpAddr {
    let network = ((index / 250) % 16) as u8;
    let host = (1 + index % 250) as u8;
    IpAddr::V4(Ipv4Addr::new(city.v4[0], city.v4[1], network, host))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a route watch saw: seconds from its start until HTTP and DNS answered as wanted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteWatch {
    /// HTTP `/v1/route` for the probe address.
    pub http_s: Option<f64>,
    /// DNS `ws.<zone>` with the probe's ECS network (None when no DNS server is known).
    pub dns_s: Option<f64>,
    /// The later of the two (what the SLO checks).
    pub s: Option<f64>,
    /// Whether DNS was polled.
    pub dns_polled: bool,
    /// Polls made.
    pub polls: u32,
    /// The probe address.
    pub probe: String,
}

/// Polls HTTP and DNS every 100 ms until both route `probe` away from `region` (`away`) or
/// to it (`!away`), or `within` passes.
async fn watch_route(
    target: &Target,
    probe: IpAddr,
    region: &str,
    region_addresses: &[IpAddr],
    away: bool,
    within: Duration,
) -> RouteWatch {
    let start = Instant::now();
    let qname = mesh::ws_name(&target.zone);
    let mut out = RouteWatch {
        dns_polled: target.dns.is_some(),
        probe: probe.to_string(),
        ..RouteWatch::default()
    };
    while start.elapsed() < within {
        out.polls += 1;
        if out.http_s.is_none() {
            if let Ok(answer) = target.router.route(probe).await {
                let first_is_region = answer.regions.first().is_some_and(|r| r.name == region);
                if first_is_region != away {
                    out.http_s = Some(ledger::round3(start.elapsed().as_secs_f64()));
                }
            }
        }
        if let (Some(server), None) = (target.dns, out.dns_s) {
            if let Ok(addresses) =
                mesh::dns_addresses(server, &qname, Some(mesh::client_network(probe))).await
            {
                let to_region = addresses.iter().any(|a| region_addresses.contains(a));
                if !addresses.is_empty() && to_region != away {
                    out.dns_s = Some(ledger::round3(start.elapsed().as_secs_f64()));
                }
            }
        }
        if out.http_s.is_some() && (out.dns_s.is_some() || target.dns.is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.s = match (out.http_s, out.dns_s, target.dns.is_some()) {
        (Some(h), Some(d), true) => Some(h.max(d)),
        (Some(h), _, false) => Some(h),
        _ => None,
    };
    out
}

/// Connections per region at one second of the drill.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the workload started.
    pub t_s: u64,
    /// Connected clients per region.
    pub regions: BTreeMap<String, usize>,
    /// Clients between connections.
    pub reconnecting: usize,
    /// What the drill did during this second, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Membership as seen from each live region after the grace period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Membership {
    /// Seconds after the disruption when the check started.
    pub checked_at_s: f64,
    /// Seconds the listings took to converge (None: never within the window).
    pub converged_after_s: Option<f64>,
    /// Users listed in `members` somewhere while not connected anywhere.
    pub ghosts: u64,
    /// Connected users missing from a region's `members`.
    pub missing: u64,
    /// Users listed under another region than the one they are connected to.
    pub stale_region: u64,
    /// Regions checked.
    pub regions: Vec<String>,
    /// Examples (`region room user: what`), at most 20.
    pub examples: Vec<String>,
    /// Regions whose `members` could not be read.
    pub errors: Vec<String>,
}

/// The return of traffic after undrain / restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Restore {
    /// What was done.
    pub action: String,
    /// Seconds the restore call took (restart of the region's processes).
    pub took_s: f64,
    /// Routing back to R, from the end of the restore call.
    pub route_back: RouteWatch,
    /// New clients from R's cities that connected after the route came back: in which region.
    pub probes: BTreeMap<String, usize>,
    /// Seconds from the end of the restore call to the first new client connected in R.
    pub first_in_region_s: Option<f64>,
}

async fn drill(args: DrillArgs, target: Target) -> Result<bool> {
    let started_at_ms = unix_ms();
    let run = format!(
        "{:06x}",
        (started_at_ms ^ args.seed.wrapping_mul(0x9E37)) & 0xff_ffff
    );
    let regions = target.router.regions().await?;
    let names: Vec<String> = regions.iter().map(|r| r.name.clone()).collect();
    let Some(drilled) = regions.iter().find(|r| r.name == args.region) else {
        bail!(
            "the router knows no region {:?}; it has: {}",
            args.region,
            names.join(", ")
        );
    };
    if drilled.health == "down" {
        bail!(
            "the router sees {} down already; restore it before drilling (meridian up: POST \
             /regions/{}/restart on its control API)",
            args.region,
            args.region
        );
    }
    if drilled.control_state() != "active" {
        bail!(
            "{} is {} by a routing control; undrain it first",
            args.region,
            drilled.control_state()
        );
    }
    let region_addresses = drilled.addresses.clone();
    let ws_urls: BTreeMap<String, String> = regions
        .iter()
        .filter_map(|r| r.ws_url.clone().map(|u| (r.name.clone(), u)))
        .collect();

    // Placement: each demo city's natural region by the router.
    let mut cities_of: BTreeMap<String, Vec<&'static mmdb_writer::demo::DemoCity>> =
        BTreeMap::new();
    for city in &mmdb_writer::demo::CITIES {
        let answer = target.router.route(city.v4_address(0)).await?;
        if let Some(first) = answer.regions.first() {
            cities_of.entry(first.name.clone()).or_default().push(city);
        }
    }
    let Some(drilled_cities) = cities_of.get(&args.region).cloned() else {
        bail!(
            "no demo city is routed to {} first, so no client would be affected; is the router \
             using the synthetic demo GeoIP database (or a real one that places the demo \
             networks)?",
            args.region
        );
    };
    let homes: Vec<&String> = cities_of.keys().collect();
    let mut placed = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let home = homes[i % homes.len()];
        let list = &cities_of[home];
        let city = list[(i / homes.len()) % list.len()];
        let address = synthetic_address(city, i);
        let answer = target.router.route(address).await?;
        placed.push(Placed {
            address,
            ranking: answer
                .regions
                .into_iter()
                .map(|r| (r.name, r.ws_url))
                .collect(),
        });
    }
    let (plans, rooms) = workload::assign_rooms(&run, &placed, args.rooms, false);
    let probe_address = synthetic_address(drilled_cities[0], 250 * 15 + 249);
    let mut placement: BTreeMap<String, usize> = BTreeMap::new();
    for p in &placed {
        if let Some((r, _)) = p.ranking.first() {
            *placement.entry(r.clone()).or_default() += 1;
        }
    }
    println!(
        "drill {run}: {:?} {} with {} clients in {} rooms (placed: {}); grace {:?}",
        args.mode,
        args.region,
        args.clients,
        rooms.len(),
        placement
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        target.grace
    );

    // The workload.
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let shared = Arc::new(Shared {
        run: run.clone(),
        router: target.router.clone(),
        phase: phase_rx,
        publish_every: args.publish_every,
        direct_every: args.direct_every,
        start: Instant::now(),
        seed: args.seed,
    });
    let grant = format!("drill-{run}-*:publish");
    let mut logs: Vec<Arc<Mutex<ClientLog>>> = Vec::new();
    let mut tasks = Vec::new();
    let plans: Vec<Arc<ClientPlan>> = plans.into_iter().map(Arc::new).collect();
    for plan in &plans {
        let token = crate::mint(
            &plan.user,
            std::slice::from_ref(&grant),
            86_400,
            &target.token_secret,
        )?;
        let log = Arc::new(Mutex::new(ClientLog::default()));
        logs.push(Arc::clone(&log));
        tasks.push(tokio::spawn(workload::run_client(
            Arc::clone(plan),
            token,
            Arc::clone(&shared),
            log,
        )));
    }
    let snapshot = |logs: &[Arc<Mutex<ClientLog>>]| -> Vec<ClientLog> {
        logs.iter()
            .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    };

    // Setup: every client joined, and its vector knows every region of its room.
    let mut home_regions: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for p in plans.iter() {
        if let Some((r, _)) = p.ranking.first() {
            home_regions
                .entry(p.room.as_str())
                .or_default()
                .insert(r.clone());
        }
    }
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = snapshot(&logs);
        let joined = now.iter().filter(|l| l.joined).count();
        let settled = plans.iter().zip(&now).all(|(p, l)| {
            l.joined
                && home_regions
                    .get(p.room.as_str())
                    .is_none_or(|want| want.iter().all(|r| l.origins.contains(r)))
        });
        if settled {
            break;
        }
        if Instant::now() > setup_deadline {
            let _ = phase_tx.send(Phase::Done);
            let errors: Vec<String> = now
                .iter()
                .flat_map(|l| l.errors.iter().cloned())
                .take(5)
                .collect();
            let unsettled: Vec<String> = plans
                .iter()
                .zip(&now)
                .filter_map(|(p, l)| {
                    let want = home_regions.get(p.room.as_str())?;
                    let lacking: Vec<&String> =
                        want.iter().filter(|r| !l.origins.contains(r)).collect();
                    (!lacking.is_empty()).then(|| {
                        format!(
                            "{} in {} (connected to {}) has seen nothing from {lacking:?}",
                            p.user,
                            p.room,
                            l.region.as_deref().unwrap_or("-")
                        )
                    })
                })
                .take(5)
                .collect();
            bail!(
                "{joined} of {} clients joined, but not every one saw every region of its room \
                 within 30 s (are the relays linked? see the relay logs in the state dir): \
                 {unsettled:?}; connection errors: {errors:?}",
                plans.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = phase_tx.send(Phase::Running);
    let running_at = Instant::now();
    let t = |at: Instant| at.saturating_duration_since(shared.start);

    // The timeline sampler.
    let notes: Arc<Mutex<Vec<(Instant, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let timeline: Arc<Mutex<Vec<TimelinePoint>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let logs = logs.clone();
        let timeline = Arc::clone(&timeline);
        let names = names.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let mut regions: BTreeMap<String, usize> =
                    names.iter().map(|n| (n.clone(), 0)).collect();
                let mut reconnecting = 0;
                for log in &logs {
                    match &log.lock().unwrap_or_else(PoisonError::into_inner).region {
                        Some(r) => *regions.entry(r.clone()).or_default() += 1,
                        None => reconnecting += 1,
                    }
                }
                let point = TimelinePoint {
                    t_s: running_at.elapsed().as_secs(),
                    regions,
                    reconnecting,
                    note: None,
                };
                timeline
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(point);
            }
        })
    };
    let note = |what: String| {
        println!("[{:>5.1}s] {what}", running_at.elapsed().as_secs_f64());
        notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Instant::now(), what));
    };

    // Warm-up, then the disruption.
    let warmup = (args.duration / 4).clamp(Duration::from_secs(3), Duration::from_secs(20));
    tokio::time::sleep(warmup).await;
    let before = snapshot(&logs);
    let affected: Vec<usize> = before
        .iter()
        .enumerate()
        .filter(|(_, l)| l.region.as_deref() == Some(args.region.as_str()))
        .map(|(i, _)| i)
        .collect();
    let disrupted = Instant::now();
    let disrupted_at = t(disrupted);
    note(format!(
        "{} {} ({} clients connected there)",
        match args.mode {
            Mode::Drain => "draining",
            Mode::Kill => "killing",
        },
        args.region,
        affected.len()
    ));
    let watch_away = async {
        watch_route(
            &target,
            probe_address,
            &args.region,
            &region_addresses,
            true,
            Duration::from_secs(60),
        )
        .await
    };
    let act = async {
        match args.mode {
            Mode::Drain => {
                let token = target.admin_token.as_deref().unwrap_or_default();
                target
                    .admin
                    .as_ref()
                    .ok_or_else(|| anyhow!("no router admin API"))?
                    .admin(
                        token,
                        &args.region,
                        "drain",
                        &format!("meridian drill {run}"),
                    )
                    .await?;
                if let Some(control) = &target.control {
                    control.call(&args.region, "drain").await?;
                } else if let Some(command) = &args.drain_command {
                    shell(command).await?;
                }
            }
            Mode::Kill => {
                if let Some(control) = &target.control {
                    control.call(&args.region, "kill").await?;
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    let (route_away, acted) = tokio::join!(watch_away, act);
    if let Err(e) = acted {
        let _ = phase_tx.send(Phase::Done);
        return Err(e.context(format!("could not {:?} {}", args.mode, args.region)));
    }
    note(format!(
        "router stopped sending users to {}: HTTP after {}, DNS after {}",
        args.region,
        fmt_opt(route_away.http_s),
        if route_away.dns_polled {
            fmt_opt(route_away.dns_s)
        } else {
            "not polled".into()
        }
    ));

    // Re-homing: until every affected client resumed elsewhere (bounded by the p99 SLO).
    let rehome_deadline = disrupted + args.slo_rehome_p99 + Duration::from_secs(5);
    loop {
        let now = snapshot(&logs);
        let done = affected.iter().all(|&i| {
            now.get(i)
                .is_some_and(|l| ledger::rehome_of(l, &args.region, disrupted_at).is_some())
        });
        if done || Instant::now() > rehome_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same per-client figure as the report's re-home line (resumed elsewhere, measured
    // from the disruption), not the time this loop noticed it.
    let rehomed: Vec<f64> = {
        let now = snapshot(&logs);
        affected
            .iter()
            .filter_map(|&i| now.get(i))
            .filter_map(|l| ledger::rehome_of(l, &args.region, disrupted_at))
            .map(|(since_disruption, ..)| since_disruption.as_secs_f64())
            .collect()
    };
    note(format!(
        "{}/{} affected clients re-homed{}",
        rehomed.len(),
        affected.len(),
        rehomed
            .iter()
            .copied()
            .reduce(f64::max)
            .map(|max| format!(" (the last {max:.2}s after the disruption)"))
            .unwrap_or_default()
    ));

    // Membership after the grace period (kill: link death + grace; drain: leaves propagate).
    let settle = match args.mode {
        Mode::Kill => target.grace + Duration::from_secs(6),
        Mode::Drain => Duration::from_secs(5),
    };
    tokio::time::sleep_until(disrupted + settle).await;
    let live: Vec<(String, String)> = ws_urls
        .iter()
        .filter(|(name, _)| **name != args.region)
        .map(|(n, u)| (n.clone(), u.clone()))
        .collect();
    let membership = check_membership(
        &run,
        &target.token_secret,
        &live,
        &rooms,
        &plans,
        &logs,
        disrupted,
    )
    .await;
    note(format!(
        "membership: {} ghosts, {} missing, {} listed in a stale region",
        membership.ghosts, membership.missing, membership.stale_region
    ));

    // Keep the workload going for --duration in all.
    tokio::time::sleep_until(running_at + args.duration).await;

    // Restore and the return of traffic.
    let restore = if args.no_restore {
        None
    } else {
        note(format!("restoring {}", args.region));
        Some(restore(&args, &target, probe_address, &region_addresses).await?)
    };
    let mut after_restore = None;
    if let Some(r) = &restore {
        note(format!(
            "{} routed to {} again after {}; new clients: {:?}",
            args.region,
            args.region,
            fmt_opt(r.route_back.s),
            r.probes
        ));
        // Every region again, R included: its listing must match too.
        let all: Vec<(String, String)> = ws_urls
            .iter()
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        let m = check_membership(
            &run,
            &target.token_secret,
            &all,
            &rooms,
            &plans,
            &logs,
            disrupted,
        )
        .await;
        note(format!(
            "membership after the restore: {} ghosts, {} missing, {} listed in a stale region",
            m.ghosts, m.missing, m.stale_region
        ));
        after_restore = Some(m);
    }

    // Stop: no new publishes, let in-flight deliveries land, close.
    let _ = phase_tx.send(Phase::Stopping);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = phase_tx.send(Phase::Done);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    sampler.abort();

    // Accounting.
    let end = snapshot(&logs);
    let records: Vec<ClientRecord> = plans
        .iter()
        .zip(&end)
        .map(|(p, l)| ClientRecord {
            user: p.user.clone(),
            room: p.room.clone(),
            partner: p.partner.clone(),
            log: l.clone(),
        })
        .collect();
    let messages = ledger::account(&records);
    let affected_logs: Vec<&ClientLog> = affected.iter().filter_map(|&i| end.get(i)).collect();
    let rehome = ledger::rehome(
        &affected_logs,
        &args.region,
        disrupted_at,
        args.slo_rehome_p95,
        args.slo_rehome_p99,
    );
    let mut timeline = timeline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (at, what) in notes.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let second = at.saturating_duration_since(running_at).as_secs();
        if let Some(point) = timeline.iter_mut().find(|p| p.t_s == second) {
            point.note = Some(match point.note.take() {
                Some(old) => format!("{old}; {what}"),
                None => what.clone(),
            });
        }
    }
    let mut resume_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut request_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    for l in &end {
        for (k, v) in &l.resume_status {
            *resume_status.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &l.request_errors {
            *request_errors.entry(k.clone()).or_default() += v;
        }
        for e in &l.errors {
            if errors.len() < 10 {
                errors.push(e.clone());
            }
        }
    }
    let report = report::Report::new(report::Inputs {
        args: &args,
        run: run.clone(),
        started_at_ms,
        router: target.router.base(),
        dns: target.dns,
        local: target.local,
        grace: target.grace,
        placement,
        rooms: rooms.len(),
        disrupted_at,
        route_away,
        rehome,
        messages,
        membership,
        membership_after_restore: after_restore,
        restore,
        timeline,
        resume_status,
        request_errors,
        errors,
    });
    print!("{}", report.text());
    let path = args.report.clone().or_else(|| {
        target
            .report_dir
            .as_ref()
            .map(|dir| dir.join(format!("drill-{run}.json")))
    });
    if let Some(path) = &path {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing the report to {}", path.display()))?;
        println!(
            "JSON report (every second of the timeline): {}",
            path.display()
        );
    }
    Ok(report.passed)
}

fn fmt_opt(s: Option<f64>) -> String {
    s.map_or_else(|| "never".into(), |s| format!("{s:.2}s"))
}

async fn shell(command: &str) -> Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .await
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

async fn restore(
    args: &DrillArgs,
    target: &Target,
    probe: IpAddr,
    region_addresses: &[IpAddr],
) -> Result<Restore> {
    let began = Instant::now();
    let mut actions = Vec::new();
    if let Some(control) = &target.control {
        // A drained region kept its Redis and relays: start its nodes again. A killed one
        // starts from nothing.
        let action = match args.mode {
            Mode::Drain => "start-nodes",
            Mode::Kill => "restart",
        };
        control.call(&args.region, action).await?;
        actions.push(action);
    } else if let Some(command) = &args.restore_command {
        shell(command).await?;
        actions.push("restore-command");
    }
    if args.mode == Mode::Drain {
        let token = target.admin_token.as_deref().unwrap_or_default();
        target
            .admin
            .as_ref()
            .ok_or_else(|| anyhow!("no router admin API"))?
            .admin(token, &args.region, "undrain", "meridian drill: restore")
            .await?;
        actions.push("undrain");
    }
    let took = began.elapsed();
    let route_back = watch_route(
        target,
        probe,
        &args.region,
        region_addresses,
        false,
        Duration::from_secs(60),
    )
    .await;
    // New clients from R's cities: where do they land now?
    let mut probes: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_in_region = None;
    for k in 0..3u8 {
        let address = match probe {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, 200 + k))
            }
            other => other,
        };
        let user = format!("drill-probe-{k}");
        let token = crate::mint(&user, &[], 600, &target.token_secret)?;
        let region = match probe_connect(&target.router, address, &token).await {
            Ok(region) => region,
            Err(e) => format!("error: {e:#}"),
        };
        if region == args.region && first_in_region.is_none() {
            first_in_region = Some(ledger::round3(
                began.elapsed().saturating_sub(took).as_secs_f64(),
            ));
        }
        *probes.entry(region).or_default() += 1;
    }
    Ok(Restore {
        action: actions.join("+"),
        took_s: ledger::round3(took.as_secs_f64()),
        route_back,
        probes,
        first_in_region_s: first_in_region,
    })
}

/// A client that asks the router and says hello: the region it landed in.
async fn probe_connect(router: &RouterApi, address: IpAddr, token: &str) -> Result<String> {
    let answer = router.route(address).await?;
    let best = answer
        .regions
        .first()
        .ok_or_else(|| anyhow!("the router offers no region"))?;
    let mut ws = Monitor::connect(&best.ws_url, token).await?;
    let region = ws.region.clone();
    ws.close().await;
    Ok(region)
}

/// A plain protocol client for the drill's own checks (members listings, probes).
struct Monitor {
    ws: crate::tls::Ws,
    next_id: u64,
    region: String,
}

impl Monitor {
    async fn connect(url: &str, token: &str) -> Result<Monitor> {
        let (ws, _) = tokio::time::timeout(Duration::from_secs(3), crate::tls::connect_ws(url))
            .await
            .map_err(|_| anyhow!("connect {url}: timed out"))?
            .with_context(|| format!("connect {url}"))?;
        let mut m = Monitor {
            ws,
            next_id: 0,
            region: String::new(),
        };
        let hello = m.request(json!({"op": "hello", "token": token})).await?;
        m.region = hello["region"].as_str().unwrap_or_default().to_owned();
        Ok(m)
    }

    /// Sends a request; returns its `result` (an `error` reply is an error).
    async fn request(&mut self, mut req: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        self.ws.send(Message::Text(req.to_string().into())).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no reply within 5 s"))?;
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection error: {e}"),
            };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"].as_u64() == Some(id) {
                if v["type"] == "ok" {
                    return Ok(v["result"].clone());
                }
                bail!(
                    "{} {}",
                    v["code"].as_str().unwrap_or("?"),
                    v["message"].as_str().unwrap_or("")
                );
            }
        }
    }

    /// Every member of `room`: user → region.
    async fn members(&mut self, room: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = json!({"op": "members", "room": room, "limit": 100});
            if let Some(a) = &after {
                req["after"] = json!(a);
            }
            let r = self.request(req).await?;
            for m in r["members"].as_array().into_iter().flatten() {
                out.insert(
                    m["user"].as_str().unwrap_or_default().to_owned(),
                    m["region"].as_str().unwrap_or_default().to_owned(),
                );
            }
            match r["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(out),
            }
        }
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// Lists every room in every live region until the listings match the connected clients (or
/// 10 s pass): ghosts, missing and stale-region members.
async fn check_membership(
    run: &str,
    secret: &str,
    live: &[(String, String)],
    rooms: &[String],
    plans: &[Arc<ClientPlan>],
    logs: &[Arc<Mutex<ClientLog>>],
    disrupted: Instant,
) -> Membership {
    let began = Instant::now();
    let mut out = Membership {
        checked_at_s: ledger::round3(disrupted.elapsed().as_secs_f64()),
        regions: live.iter().map(|(n, _)| n.clone()).collect(),
        ..Membership::default()
    };
    let token = match crate::mint(
        &format!("drill-{run}-monitor"),
        &[format!("drill-{run}-*")],
        600,
        secret,
    ) {
        Ok(t) => t,
        Err(e) => {
            out.errors.push(format!("token: {e:#}"));
            return out;
        }
    };
    let mut monitors = Vec::new();
    for (name, url) in live {
        match Monitor::connect(url, &token).await {
            Ok(m) => monitors.push((name.clone(), m)),
            Err(e) => out.errors.push(format!("{name}: {e:#}")),
        }
    }
    loop {
        // Where every client is now (None: reconnecting).
        let connected: BTreeMap<&str, Option<String>> = plans
            .iter()
            .zip(logs)
            .map(|(p, l)| {
                (
                    p.user.as_str(),
                    l.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .region
                        .clone(),
                )
            })
            .collect();
        let (mut ghosts, mut missing, mut stale) = (0u64, 0u64, 0u64);
        let mut examples = Vec::new();
        let mut read_errors = Vec::new();
        for (name, monitor) in &mut monitors {
            for room in rooms {
                let listed = match monitor.members(room).await {
                    Ok(l) => l,
                    Err(e) => {
                        read_errors.push(format!("{name}: {e:#}"));
                        continue;
                    }
                };
                for (user, region) in &listed {
                    match connected.get(user.as_str()) {
                        Some(Some(actual)) if actual == region => {}
                        Some(Some(actual)) => {
                            stale += 1;
                            examples.push(format!(
                                "{name} {room} {user}: listed in {region}, connected to {actual}"
                            ));
                        }
                        _ => {
                            ghosts += 1;
                            examples.push(format!(
                                "{name} {room} {user}: listed ({region}) but not connected"
                            ));
                        }
                    }
                }
                // Interest-only replication: a region lists a room's members only while it
                // has members of its own there, so "missing" is judged only in those regions.
                let room_clients: Vec<&Arc<ClientPlan>> =
                    plans.iter().filter(|p| &p.room == room).collect();
                let interested = room_clients
                    .iter()
                    .any(|p| matches!(connected.get(p.user.as_str()), Some(Some(r)) if r == name));
                for p in room_clients.iter().filter(|_| interested) {
                    let is_connected = matches!(connected.get(p.user.as_str()), Some(Some(_)));
                    if is_connected && !listed.contains_key(&p.user) {
                        missing += 1;
                        examples.push(format!("{name} {room} {}: connected, not listed", p.user));
                    }
                }
            }
        }
        examples.truncate(20);
        out.ghosts = ghosts;
        out.missing = missing;
        out.stale_region = stale;
        out.examples = examples;
        let clean = ghosts == 0 && missing == 0 && stale == 0 && read_errors.is_empty();
        if clean {
            out.converged_after_s = Some(ledger::round3(began.elapsed().as_secs_f64()));
            break;
        }
        if began.elapsed() > Duration::from_secs(10) {
            out.errors.extend(read_errors);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, m) in &mut monitors {
        m.close().await;
    }
    out
}
