//! `meridian up`: the whole mesh on one machine, from a region catalogue.
//!
//! Per region: a `redis-server`, N `region-node`s behind HAProxy (`leastconn`, `/readyz` health
//! checks; the nodes directly when HAProxy is not installed), and the region's relay; in front,
//! one `geo-router` (DNS + HTTP) over a runtime copy of the catalogue that points at the real
//! ports. Certificates, the token secret and the admin token are made on the fly. Everything
//! lives in the state directory (logs, certificates, Redis data, configs) and on loopback.
//!
//! `up` prints a table of endpoints and writes the same as `<state-dir>/endpoints.json`
//! ([`Endpoints`]; its fields are listed in the README's `meridian up` section). It also serves a small control API on
//! loopback (`control` in the JSON) that `meridian drill --mode kill` uses to kill and restart a
//! region's processes: only the parent can restart its children. Ctrl-C or SIGTERM stops every
//! child (SIGTERM, then SIGKILL after a grace period). When `examples/webrtc/` (`--demo`) is
//! there, it serves that WebRTC demo page on a loopback port (`demo` in the JSON) with a
//! `/config.json` holding the router's URL and the dev tokens, and prints its URL.
//!
//! Files: [`plan`] (ports and the runtime catalogue), [`start`] (the processes), [`checks`]
//! (readiness and `--smoke`), [`table`] (what is printed), [`control`] (the control API, on
//! axum), [`demo`] (the demo page server, on axum).

mod checks;
mod control;
mod demo;
mod plan;
mod start;
mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::procs::{free_tcp_port, free_udp_port, installed, sibling_binary, Supervisor};
use checks::{smoke, smoke_tls, wait_healthy};
use plan::{check_ports, region_endpoints, wan_peers, write_region, RegionPlan};
use start::{child_log_filter, start_region, start_wan_proxies, Mesh};
use table::print_table;

/// `meridian up` options.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// The region catalogue.
    #[arg(long, default_value = "regions")]
    pub regions: PathBuf,
    /// Where logs, certificates, configs and Redis data live (default: a fresh temporary dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Region nodes per region (behind HAProxy).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// A MaxMind-format City database (default: the synthetic demo database).
    #[arg(long)]
    pub geoip: Option<PathBuf>,
    /// Put the impairment proxy between regions with RTTs computed from their coordinates.
    #[arg(long)]
    pub wan: bool,
    /// Pick free ports for everything instead of the catalogue's `[local]` ports.
    #[arg(long)]
    pub auto_ports: bool,
    /// HAProxy terminates TLS with a fresh dev CA: clients use wss:// and https:// (the CA is
    /// `tls_ca` in endpoints.json; `meridian` commands with --state-dir trust it).
    #[arg(long)]
    pub tls: bool,
    /// The geo-router's DNS address (UDP and TCP); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub dns: SocketAddr,
    /// The geo-router's HTTP address; port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:8053")]
    pub http: SocketAddr,
    /// The zone the router serves.
    #[arg(long, default_value = "mesh.localhost.")]
    pub zone: String,
    /// Start, print the endpoints, check the mesh answers, and stop (for scripts and CI).
    #[arg(long)]
    pub smoke: bool,
    /// How long the relays wait after losing a region before its members get `left
    /// {reason: region_down}` (`[replication] grace_ms`). Short values make drills quick.
    #[arg(long, default_value = "15s", value_parser = crate::duration::parse_duration)]
    pub relay_grace: Duration,
    /// The WebRTC demo page (served on a loopback port when the directory exists).
    #[arg(long, default_value = "examples/webrtc")]
    pub demo: PathBuf,
}

/// What `up` writes to `<state-dir>/endpoints.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The zone served by the router.
    pub zone: String,
    /// The geo-router.
    pub router: RouterEndpoints,
    /// Every region.
    pub regions: Vec<RegionEndpoints>,
    /// The token secret every node accepts (dev only).
    pub token_secret: String,
    /// Ready-made tokens (user → token), valid 24 h, allowed to join and publish everywhere.
    pub tokens: BTreeMap<String, String>,
    /// The router's admin bearer token (actor `meridian-up`).
    pub admin_token: String,
    /// The GeoIP database in use and whether it is the synthetic demo one.
    pub geoip: PathBuf,
    /// True when `geoip` is the synthetic demo database.
    pub geoip_synthetic: bool,
    /// With `--tls`: the dev CA that signed the balancers' certificate (clients must trust it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// `up`'s own control API (used by `meridian drill --mode kill`).
    pub control: SocketAddr,
    /// `up`'s process id.
    pub pid: u32,
    /// The relays' region-down grace period (`--relay-grace`), in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub relay_grace_ms: u64,
    /// Process ids of every child of the mesh when it came up (name → pid).
    #[serde(default)]
    pub pids: BTreeMap<String, u32>,
    /// The WebRTC demo page's URL (`examples/webrtc/`), when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo: Option<String>,
}

fn default_grace_ms() -> u64 {
    15_000
}

/// The router's addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterEndpoints {
    /// DNS (UDP and TCP).
    pub dns: SocketAddr,
    /// HTTP API.
    pub http: SocketAddr,
    /// The admin API (drain, undrain, audit; loopback, plain HTTP).
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

/// One region's addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionEndpoints {
    /// Region name.
    pub name: String,
    /// What clients connect to (the balancer, or the first node without HAProxy).
    pub ws_url: String,
    /// What the router probes.
    pub health_url: String,
    /// `haproxy` or `none`.
    pub balancer: String,
    /// `redis://…`, or `memory` when redis-server is not installed.
    pub store: String,
    /// Each node's client address (`/v1/ws`).
    pub nodes: Vec<SocketAddr>,
    /// Each node's ops address (`/healthz`, `/readyz`, `/metrics`), in the order of `nodes`.
    #[serde(default)]
    pub node_ops: Vec<SocketAddr>,
    /// The relay's QUIC address as the catalogue gives it.
    pub relay: SocketAddr,
    /// The relay's HTTP address (`/metrics`).
    pub relay_http: SocketAddr,
    /// The standby relay's HTTP address (it takes over the QUIC address when the active
    /// relay dies; absent on the memory store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_standby_http: Option<SocketAddr>,
}

pub(super) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Raises this process's soft open-files limit to its hard limit, so the nodes, relays and
/// HAProxy it starts (which inherit it) can hold many sockets.
pub(super) fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 65_536 => eprintln!(
            "note: open files are limited to {n} (ulimit -Hn); each node can hold about that many clients"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("note: cannot raise the open-files limit: {e}"),
    }
}

/// Runs `meridian up` until Ctrl-C / SIGTERM (or right away with `--smoke`).
pub fn run(args: UpArgs) -> Result<()> {
    let catalogue = meridian_catalogue::load_dir(&args.regions)
        .with_context(|| format!("reading the catalogue {}", args.regions.display()))?;
    if catalogue.is_empty() {
        bail!("the catalogue {} has no regions", args.regions.display());
    }
    if args.nodes == 0 || args.nodes > 16 {
        bail!("--nodes must be in 1..=16");
    }
    let state = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "meridian-up-{}-{}",
            std::process::id(),
            random_hex(3)
        )),
    };
    std::fs::create_dir_all(&state).with_context(|| format!("create {}", state.display()))?;
    let state = state.canonicalize()?;
    raise_open_files_limit();
    let redis = installed("redis-server");
    let haproxy = installed("haproxy");
    if !redis {
        eprintln!(
            "\n*** redis-server is not installed: every region runs ONE node on the in-process \
             memory store (nothing shared, nothing persisted). Install it: apt-get install -y \
             redis-server ***\n"
        );
    }
    if !haproxy {
        eprintln!(
            "*** haproxy is not installed: clients connect to the first node directly. Install \
             it: apt-get install -y haproxy ***"
        );
    }
    let nodes = if redis { args.nodes } else { 1 };
    if args.tls && !haproxy {
        bail!("--tls needs haproxy (it terminates TLS in front of the nodes): apt-get install -y haproxy");
    }

    // Plans: ports from the catalogue's [local] table, or free ones.
    let mut plans = Vec::new();
    for region in catalogue.values() {
        let local = region.local.as_ref();
        let auto = args.auto_ports || local.is_none();
        let node_ports: Vec<u16> = if auto {
            (0..nodes).map(|_| free_tcp_port()).collect::<Result<_>>()?
        } else {
            let listed = local.map(|l| l.node_ports.clone()).unwrap_or_default();
            if listed.len() < nodes {
                bail!(
                    "region {}: the catalogue lists {} node port(s) for {nodes} nodes; use --auto-ports or --nodes {}",
                    region.name,
                    listed.len(),
                    listed.len()
                );
            }
            listed.into_iter().take(nodes).collect()
        };
        let redis_port = match (redis, auto) {
            (false, _) => None,
            (true, true) => Some(free_tcp_port()?),
            (true, false) => local.map(|l| l.redis_port),
        };
        let lb_port = match (haproxy, auto) {
            (false, _) => None,
            (true, true) => Some(free_tcp_port()?),
            (true, false) => Some(
                local
                    .and_then(|l| l.lb_port)
                    .ok_or_else(|| anyhow!("region {}: no [local] lb_port", region.name))?,
            ),
        };
        let relay = if auto {
            SocketAddr::from(([127, 0, 0, 1], free_udp_port()?))
        } else {
            region.relay.address
        };
        let relay_http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let relay_standby_http = match redis_port {
            Some(_) => Some(SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?))),
            None => None,
        };
        let node_ops_ports = (0..node_ports.len())
            .map(|_| free_tcp_port())
            .collect::<Result<_>>()?;
        plans.push(RegionPlan {
            region: region.clone(),
            redis_port,
            node_ports,
            node_ops_ports,
            lb_port,
            relay,
            relay_http,
            relay_standby_http,
            dir: state.join(&region.name),
            tls: args.tls,
        });
    }

    check_ports(&plans, &args)?;

    let secret = random_hex(24);
    let admin_token = random_hex(24);
    let certs = state.join("certs");
    interregion_relay::certs::generate_dev_mesh(
        plans.iter().map(|p| p.region.name.as_str()),
        &certs,
        true,
    )
    .context("creating the dev mesh certificates")?;
    let web = if args.tls {
        let web =
            crate::tls::generate_web_certs(&certs).context("creating the dev web certificates")?;
        // `up`'s own readiness checks go through the TLS balancers too.
        crate::tls::trust_ca(&web.ca)?;
        Some(web)
    } else {
        None
    };

    let (geoip, synthetic) = match &args.geoip {
        Some(path) => (path.canonicalize()?, false),
        None => {
            let path = state.join("demo-geoip.mmdb");
            std::fs::write(&path, mmdb_writer::demo::demo_database()?)?;
            (path, true)
        }
    };

    // The runtime catalogue: the same regions with the ports actually used.
    let catalogue_dir = state.join("regions");
    std::fs::create_dir_all(&catalogue_dir)?;
    for plan in &plans {
        write_region(&catalogue_dir, plan)?;
    }
    let wan_peers = if args.wan {
        wan_peers(&plans)?
    } else {
        BTreeMap::new()
    };

    let mut mesh = Mesh {
        supervisor: Supervisor::new(&state.join("logs"))?,
        plans: plans.clone(),
        secret: secret.clone(),
        catalogue_dir: catalogue_dir.clone(),
        certs: certs.clone(),
        wan_peers,
        grace_ms: u64::try_from(args.relay_grace.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
        endpoints_file: None,
        web_pem: web.as_ref().map(|w| w.haproxy_pem.clone()),
    };
    if args.wan {
        start_wan_proxies(&mut mesh)?;
    }
    for plan in &plans {
        start_region(&mut mesh, plan)?;
    }

    // The router.
    let router_dns = if args.dns.port() == 0 {
        SocketAddr::new(args.dns.ip(), free_udp_port()?)
    } else {
        args.dns
    };
    let router_config = state.join("geo-router.toml");
    std::fs::write(
        &router_config,
        format!(
            "regions = {catalogue:?}\ngeoip = {geoip:?}\nzone = {zone:?}\ndns_listen = \"{router_dns}\"\n\
             http_listen = \"{http}\"\nadmin_listen = \"127.0.0.1:0\"\ninstance = \"router-1\"\nallow_debug_ip = true\nttl = 5\n\
             [health]\ninterval_ms = 500\ntimeout_ms = 400\nfall = 2\nrise = 2\n\
             [controls]\naudit_file = {audit:?}\n[[controls.admin_tokens]]\nactor = \"meridian-up\"\ntoken = {admin_token:?}\n\
             [rtt]\nreport_key = {report_key:?}\n",
            report_key = random_hex(32),
            catalogue = catalogue_dir.display().to_string(),
            geoip = geoip.display().to_string(),
            zone = args.zone,
            http = args.http,
            audit = state.join("router-audit.jsonl").display().to_string(),
        ),
    )?;
    let mut command = Command::new(sibling_binary("geo-router")?);
    command
        .arg("--config")
        .arg(&router_config)
        .env("RUST_LOG", child_log_filter());
    if let Some(web) = &web {
        // The router probes the regions' https:// health URLs: trust the dev CA.
        command.env("MERIDIAN_HEALTH__CA_FILE", &web.ca);
    }
    mesh.supervisor.spawn("geo-router", command)?;
    let dns: SocketAddr = mesh
        .supervisor
        .wait_line("geo-router", "dns listening on ", Duration::from_secs(20))?
        .parse()?;
    let http: SocketAddr = mesh
        .supervisor
        .wait_line("geo-router", "http listening on ", Duration::from_secs(20))?
        .parse()?;
    let admin: SocketAddr = mesh
        .supervisor
        .wait_line("geo-router", "admin listening on ", Duration::from_secs(20))?
        .parse()?;
    wait_healthy(http, plans.len(), Duration::from_secs(20))?;

    let mut tokens = BTreeMap::new();
    for user in ["alice", "bob", "carol"] {
        tokens.insert(
            user.to_owned(),
            crate::token::mint(user, &[], 86_400, &secret)?,
        );
    }
    // `up`'s own servers (the control API and the demo page) run on this runtime.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let control_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let control = control_listener.local_addr()?;
    let demo = demo::serve(&servers, &args.demo, http, &tokens)?;
    let endpoints = Endpoints {
        state_dir: state.clone(),
        zone: args.zone.clone(),
        router: RouterEndpoints {
            dns,
            http,
            admin: Some(admin),
        },
        regions: plans
            .iter()
            .map(|p| region_endpoints(p, haproxy, redis))
            .collect(),
        token_secret: secret,
        tokens,
        admin_token,
        geoip: geoip.clone(),
        geoip_synthetic: synthetic,
        tls_ca: web.as_ref().map(|w| w.ca.clone()),
        control,
        pid: std::process::id(),
        relay_grace_ms: mesh.grace_ms,
        pids: mesh.supervisor.pids(),
        demo,
    };
    let json_path = state.join("endpoints.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&endpoints)?)?;
    mesh.endpoints_file = Some(json_path.clone());
    print_table(&endpoints, &json_path, args.smoke);

    if args.smoke {
        if args.tls {
            smoke_tls(&endpoints)?;
        } else {
            smoke(&endpoints)?;
        }
        println!("smoke check passed; stopping");
        mesh.supervisor.stop_all(Duration::from_secs(10));
        return Ok(());
    }

    // Serve the control API and wait for a signal.
    let mesh = Arc::new(Mutex::new(mesh));
    let stopping = Arc::new(AtomicBool::new(false));
    control::serve(
        &servers,
        control_listener,
        Arc::clone(&mesh),
        Arc::clone(&stopping),
    )?;
    servers.block_on(wait_for_signal())?;
    stopping.store(true, Ordering::Relaxed);
    println!("stopping the mesh…");
    mesh.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .supervisor
        .stop_all(Duration::from_secs(10));
    servers.shutdown_background();
    println!("stopped; logs and data stay in {}", state.display());
    Ok(())
}

/// Returns on SIGINT or SIGTERM.
async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
