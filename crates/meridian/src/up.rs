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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use meridian_catalogue::Region;
use serde::{Deserialize, Serialize};

use crate::procs::{
    free_tcp_port, free_udp_port, http_get, installed, sibling_binary, wait_port, Supervisor,
};

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
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
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

/// Ports and paths of one region, fixed for the life of the mesh (a restart reuses them).
#[derive(Debug, Clone)]
struct RegionPlan {
    region: Region,
    redis_port: Option<u16>,
    node_ports: Vec<u16>,
    /// Each node's ops listener (`/healthz`, `/readyz`, `/metrics`); always free ports.
    node_ops_ports: Vec<u16>,
    lb_port: Option<u16>,
    relay: SocketAddr,
    relay_http: SocketAddr,
    relay_standby_http: Option<SocketAddr>,
    dir: PathBuf,
    /// The balancer terminates TLS (`--tls`).
    tls: bool,
}

/// The running mesh: supervisor plus what is needed to restart a region.
struct Mesh {
    supervisor: Supervisor,
    plans: Vec<RegionPlan>,
    secret: String,
    catalogue_dir: PathBuf,
    certs: PathBuf,
    wan_peers: BTreeMap<String, BTreeMap<String, SocketAddr>>,
    grace_ms: u64,
    /// `endpoints.json`, once written (its `pids` are refreshed after a restart).
    endpoints_file: Option<PathBuf>,
    /// With `--tls`: the balancers' certificate and key (one PEM file, for HAProxy).
    web_pem: Option<PathBuf>,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `meridian up` until Ctrl-C / SIGTERM (or right away with `--smoke`).
/// Raises this process's soft open-files limit to its hard limit, so the nodes, relays and
/// HAProxy it starts (which inherit it) can hold many sockets.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 65_536 => eprintln!(
            "note: open files are limited to {n} (ulimit -Hn); each node can hold about that many clients"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("note: cannot raise the open-files limit: {e}"),
    }
}

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
        tokens.insert(user.to_owned(), crate::mint(user, &[], 86_400, &secret)?);
    }
    let control_listener = TcpListener::bind("127.0.0.1:0")?;
    let control = control_listener.local_addr()?;
    let demo = serve_demo(&args.demo, http, &tokens)?;
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
    {
        let mesh = Arc::clone(&mesh);
        let stopping = Arc::clone(&stopping);
        std::thread::spawn(move || control_loop(control_listener, mesh, stopping));
    }
    wait_for_signal()?;
    stopping.store(true, Ordering::Relaxed);
    println!("stopping the mesh…");
    mesh.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .supervisor
        .stop_all(Duration::from_secs(10));
    println!("stopped; logs and data stay in {}", state.display());
    Ok(())
}

/// Every address the mesh will listen on must be free before anything starts; otherwise one
/// line per taken port with its owner, and the way out.
fn check_ports(plans: &[RegionPlan], args: &UpArgs) -> Result<()> {
    use crate::ports::Wanted;
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut wanted = vec![
        Wanted::udp("geo-router DNS", args.dns),
        Wanted::tcp("geo-router DNS", args.dns),
        Wanted::tcp("geo-router HTTP", args.http),
    ];
    for plan in plans {
        let name = &plan.region.name;
        if let Some(port) = plan.redis_port {
            wanted.push(Wanted::tcp(format!("{name}/redis"), local(port)));
        }
        for (i, port) in plan.node_ports.iter().enumerate() {
            wanted.push(Wanted::tcp(format!("{name}/node-{}", i + 1), local(*port)));
        }
        if let Some(port) = plan.lb_port {
            wanted.push(Wanted::tcp(format!("{name}/haproxy"), local(port)));
        }
        wanted.push(Wanted::udp(format!("{name}/relay QUIC"), plan.relay));
        wanted.push(Wanted::tcp(format!("{name}/relay HTTP"), plan.relay_http));
        if let Some(standby) = plan.relay_standby_http {
            wanted.push(Wanted::tcp(format!("{name}/relay-standby HTTP"), standby));
        }
    }
    let clashes = crate::ports::clashes(&wanted);
    if clashes.is_empty() {
        return Ok(());
    }
    bail!(
        "{} address(es) this mesh needs are taken; nothing was started:\n  {}\n\
         Another mesh is probably running. Stop it, or pick free ports: \
         meridian up --auto-ports --dns 127.0.0.1:0 --http 127.0.0.1:0",
        clashes.len(),
        clashes.join("\n  ")
    )
}

/// Waits until the Redis on `port` answers and is the one this mesh started (a Redis that
/// could not bind exits, and another mesh's Redis may be answering there).
fn wait_own_redis(mesh: &mut Mesh, proc_name: &str, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ours = mesh.supervisor.pids().get(proc_name).copied();
        let Some(ours) = ours else {
            bail!(
                "{proc_name} exited: it could not listen on {addr}{}; see {}",
                match crate::ports::owner(port, false) {
                    Some(owner) => format!(", which {owner} holds"),
                    None => String::new(),
                },
                mesh.supervisor.log_of(proc_name).display()
            );
        };
        match crate::ports::redis_pid(addr) {
            Some(pid) if pid == ours => return Ok(()),
            Some(other) if Instant::now() > deadline => bail!(
                "{addr} is answered by another Redis (pid {other}), not {proc_name} (pid {ours}); \
                 use --auto-ports"
            ),
            None if Instant::now() > deadline => {
                bail!("{proc_name} does not answer on {addr} after 10 s")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn region_endpoints(plan: &RegionPlan, haproxy: bool, redis: bool) -> RegionEndpoints {
    RegionEndpoints {
        name: plan.region.name.clone(),
        ws_url: ws_url(plan),
        health_url: tls_url(plan, health_url(plan)),
        balancer: if haproxy && plan.lb_port.is_some() {
            "haproxy".into()
        } else {
            "none".into()
        },
        store: match plan.redis_port {
            Some(port) if redis => format!("redis://127.0.0.1:{port}/"),
            _ => "memory".into(),
        },
        nodes: plan
            .node_ports
            .iter()
            .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect(),
        node_ops: plan
            .node_ops_ports
            .iter()
            .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect(),
        relay: plan.relay,
        relay_http: plan.relay_http,
        relay_standby_http: plan.relay_standby_http,
    }
}

fn front_port(plan: &RegionPlan) -> u16 {
    plan.lb_port
        .or_else(|| plan.node_ports.first().copied())
        .unwrap_or(0)
}

fn ws_url(plan: &RegionPlan) -> String {
    let scheme = if plan.tls { "wss" } else { "ws" };
    format!("{scheme}://127.0.0.1:{}/v1/ws", front_port(plan))
}

/// Where the region's `/readyz` answers: the balancer (which asks a ready node's ops port), or
/// without one the first node's ops port.
fn health_port(plan: &RegionPlan) -> u16 {
    plan.lb_port
        .or_else(|| plan.node_ops_ports.first().copied())
        .unwrap_or(0)
}

fn health_url(plan: &RegionPlan) -> String {
    format!("http://127.0.0.1:{}/readyz", health_port(plan))
}

fn write_region(dir: &Path, plan: &RegionPlan) -> Result<()> {
    let r = &plan.region;
    let addresses: Vec<String> = r
        .ingress
        .addresses
        .iter()
        .map(|a| format!("{:?}", a.to_string()))
        .collect();
    let text = format!(
        "# Written by `meridian up`: {name} with the ports this mesh uses.\n\
         name = {name:?}\nlatitude = {lat}\nlongitude = {lon}\ncapacity = {cap}\n\
         cloud = \"local\"\ncloud_region = \"\"\n\
         [ingress]\naddresses = [{addresses}]\nws_url = {ws:?}\nhealth_url = {health:?}\n\
         [relay]\naddress = \"{relay}\"\n",
        name = r.name,
        lat = r.latitude,
        lon = r.longitude,
        cap = r.capacity,
        addresses = addresses.join(", "),
        ws = ws_url(plan),
        health = tls_url(plan, health_url(plan)),
        relay = plan.relay,
    );
    std::fs::write(dir.join(format!("{}.toml", r.name)), text)?;
    Ok(())
}

/// One impairment proxy per pair of regions, in the direction the relays dial (the region
/// whose name sorts first dials): one-way delay = great-circle distance / 200 km per ms, so the
/// RTT matches the router's model (100 km per ms of RTT).
fn wan_peers(plans: &[RegionPlan]) -> Result<BTreeMap<String, BTreeMap<String, SocketAddr>>> {
    let mut peers: BTreeMap<String, BTreeMap<String, SocketAddr>> = BTreeMap::new();
    for a in plans {
        for b in plans {
            if a.region.name < b.region.name {
                let proxy = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
                peers
                    .entry(a.region.name.clone())
                    .or_default()
                    .insert(b.region.name.clone(), proxy);
            }
        }
    }
    Ok(peers)
}

fn start_wan_proxies(mesh: &mut Mesh) -> Result<()> {
    let binary = sibling_binary("impair-proxy")?;
    let pairs: Vec<(String, String, SocketAddr)> = mesh
        .wan_peers
        .iter()
        .flat_map(|(a, peers)| peers.iter().map(move |(b, p)| (a.clone(), b.clone(), *p)))
        .collect();
    for (a, b, proxy) in pairs {
        let (Some(pa), Some(pb)) = (
            mesh.plans.iter().find(|p| p.region.name == a),
            mesh.plans.iter().find(|p| p.region.name == b),
        ) else {
            continue;
        };
        let km = pa.region.distance_km(pb.region.position());
        let one_way_ms = (km / 200.0).round() as u64;
        let mut command = Command::new(&binary);
        command
            .arg("--listen")
            .arg(proxy.to_string())
            .arg("--upstream")
            .arg(pb.relay.to_string())
            .arg("--delay-ms")
            .arg(one_way_ms.to_string())
            .arg("--jitter-ms")
            .arg((one_way_ms / 20).to_string());
        println!("wan: {a} -> {b}: {} ms RTT via {proxy}", one_way_ms * 2);
        mesh.supervisor.spawn(&format!("wan/{a}-{b}"), command)?;
    }
    Ok(())
}

/// Starts (or restarts) every process of one region and waits until it is ready.
fn start_region(mesh: &mut Mesh, plan: &RegionPlan) -> Result<()> {
    let name = plan.region.name.clone();
    std::fs::create_dir_all(&plan.dir)?;
    if let Some(port) = plan.redis_port {
        let data = plan.dir.join("redis");
        std::fs::create_dir_all(&data)?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // Persistence as production runs it: a Redis restart keeps the region's rooms,
            // history and watermarks (at most the last second of writes is lost, and the
            // relays re-send what other regions published in it: docs/relay.md).
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "everysec"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&data);
        mesh.supervisor.spawn(&format!("{name}/redis"), command)?;
        wait_own_redis(mesh, &format!("{name}/redis"), port)?;
    }
    start_nodes(mesh, plan)?;
    if let Some(lb) = plan.lb_port {
        let config = plan.dir.join("haproxy.cfg");
        let servers: String = plan
            .node_ports
            .iter()
            .enumerate()
            .zip(&plan.node_ops_ports)
            .map(|((i, p), ops)| {
                format!(
                    "  server node-{} 127.0.0.1:{p} check port {ops} inter 500ms fall 2 rise 2\n",
                    i + 1
                )
            })
            .collect();
        let ops_servers: String = plan
            .node_ops_ports
            .iter()
            .enumerate()
            .map(|(i, ops)| {
                format!(
                    "  server node-{}-ops 127.0.0.1:{ops} check inter 500ms fall 2 rise 2\n",
                    i + 1
                )
            })
            .collect();
        std::fs::write(
            &config,
            format!(
                "# Written by `meridian up` for region {name}.\n\
                 # Health checks go to each node's ops port; `/readyz` of the region (what the\n\
                 # router probes) is answered by a ready node's ops listener; `/metrics` is not\n\
                 # reachable here. `timeout http-request` closes a connection that has not sent a\n\
                 # complete request in 5 s, so silent sockets cannot hold the 4,000 slots.\n\
                 global\n  maxconn 4000\n\
                 defaults\n  mode http\n  timeout connect 2s\n  timeout http-request 5s\n  timeout http-keep-alive 5s\n  timeout client 30s\n  timeout server 60s\n  timeout tunnel 1h\n\
                 frontend {name}\n  bind 127.0.0.1:{lb}\n  option forwardfor\n  use_backend ops if {{ path /readyz }} || {{ path /healthz }}\n  default_backend nodes\n\
                 backend nodes\n  balance leastconn\n  option httpchk GET /readyz\n  http-check expect status 200\n{servers}\
                 backend ops\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n{ops_servers}"
            ),
        )?;
        if let (Some(pem), true) = (&mesh.web_pem, plan.tls) {
            // `--tls`: the frontend terminates TLS with the dev certificate.
            let text = std::fs::read_to_string(&config)?;
            let bind = format!("bind 127.0.0.1:{lb}\n");
            if !text.contains(&bind) {
                bail!(
                    "{}: no `{}` line to add TLS to",
                    config.display(),
                    bind.trim()
                );
            }
            let tls_bind = format!("bind 127.0.0.1:{lb} ssl crt {}\n", pem.display());
            std::fs::write(&config, text.replacen(&bind, &tls_bind, 1))?;
        }
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(&config);
        mesh.supervisor.spawn(&format!("{name}/haproxy"), command)?;
        wait_port(
            SocketAddr::from(([127, 0, 0, 1], lb)),
            Duration::from_secs(10),
        )?;
    }
    // The relay.
    let peers: String = mesh
        .wan_peers
        .get(&name)
        .map(|peers| {
            peers
                .iter()
                .map(|(peer, addr)| format!("{peer} = \"{addr}\"\n"))
                .collect()
        })
        .unwrap_or_default();
    // The relays: with Redis, an active one and a standby (the `[lease]` in Redis decides
    // which); on the memory store one relay that keeps links only.
    let redis = match plan.redis_port {
        Some(port) => format!(
            "[redis]\nurl = \"redis://127.0.0.1:{port}/\"\n\
             [replication]\ngrace_ms = {grace}\n[lease]\nttl_ms = 3000\nrenew_ms = 1000\n",
            grace = mesh.grace_ms
        ),
        None => String::new(),
    };
    let mut relays = vec![("relay", plan.relay_http)];
    if let Some(standby) = plan.relay_standby_http {
        relays.push(("relay-standby", standby));
    }
    for (i, (proc_name, http)) in relays.into_iter().enumerate() {
        let config = plan.dir.join(format!("{proc_name}.toml"));
        std::fs::write(
            &config,
            format!(
                "region = {name:?}\ncatalogue_dir = {catalogue:?}\nlisten = \"{listen}\"\nhttp_listen = \"{http}\"\n\
                 [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[peers]\n{peers}\
                 [timing]\nkeep_alive_ms = 1000\nidle_timeout_ms = 4000\n{redis}",
                catalogue = mesh.catalogue_dir.display().to_string(),
                listen = plan.relay,
                ca = mesh.certs.join("ca.pem").display().to_string(),
                cert = mesh
                    .certs
                    .join(interregion_relay::certs::region_cert_file(&name))
                    .display()
                    .to_string(),
                key = mesh
                    .certs
                    .join(interregion_relay::certs::region_key_file(&name))
                    .display()
                    .to_string(),
            ),
        )?;
        let mut command = Command::new(sibling_binary("interregion-relay")?);
        command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", child_log_filter());
        mesh.supervisor
            .spawn(&format!("{name}/{proc_name}"), command)?;
        if i == 0 {
            // The first one takes the lease; the standby starts after it.
            wait_port(http, Duration::from_secs(20))?;
        }
    }
    if let Some(standby) = plan.relay_standby_http {
        wait_port(standby, Duration::from_secs(20))?;
    }
    wait_front_ready(plan)
}

/// Starts (or restarts) the region's nodes on their ports and waits until each listens.
fn start_nodes(mesh: &mut Mesh, plan: &RegionPlan) -> Result<()> {
    let name = plan.region.name.clone();
    for (i, port) in plan.node_ports.iter().enumerate() {
        let store = match plan.redis_port {
            Some(redis) => format!("{{ kind = \"redis\", url = \"redis://127.0.0.1:{redis}/\" }}"),
            None => "{ kind = \"memory\" }".into(),
        };
        let config = plan.dir.join(format!("node-{}.toml", i + 1));
        let ops = plan.node_ops_ports.get(i).copied().unwrap_or(0);
        std::fs::write(
            &config,
            format!(
                "region = {name:?}\nlisten = \"127.0.0.1:{port}\"\nops_listen = \"127.0.0.1:{ops}\"\n\
                 token_secret = {secret:?}\nstore = {store}\n\
                 [timing]\nlease_ttl_ms = 3000\nlease_renew_ms = 1000\nreap_interval_ms = 1000\n\
                 drain_deadline_ms = 5000\n",
                secret = mesh.secret,
            ),
        )?;
        let node = format!("{name}/node-{}", i + 1);
        let mut command = Command::new(sibling_binary("region-node")?);
        command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", child_log_filter());
        mesh.supervisor.spawn(&node, command)?;
        mesh.supervisor
            .wait_line(&node, "listening on ", Duration::from_secs(20))?;
    }
    Ok(())
}

/// Waits until the region answers `/readyz` through its front door (balancer or first node).
fn wait_front_ready(plan: &RegionPlan) -> Result<()> {
    let name = &plan.region.name;
    let front = SocketAddr::from(([127, 0, 0, 1], health_port(plan)));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if matches!(front_get(plan.tls, front, "/readyz"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("region {name} is not ready through {front}; see the logs in its state dir");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `http://…` as `https://…` when the region's balancer terminates TLS (`--tls`).
fn tls_url(plan: &RegionPlan, url: String) -> String {
    match url.strip_prefix("http://") {
        Some(rest) if plan.tls => format!("https://{rest}"),
        _ => url,
    }
}

/// GET `path` at `addr`, over TLS when the region's balancer terminates it.
fn front_get(tls: bool, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    if tls {
        crate::tls::https_get(addr, path)
    } else {
        http_get(addr, path)
    }
}

/// `--smoke --tls`: the router answers, and each region's balancer answers `/readyz` over TLS
/// with the dev certificate.
fn smoke_tls(e: &Endpoints) -> Result<()> {
    let (status, body) = http_get(e.router.http, "/v1/route?ip=81.20.1.1")?;
    if status != 200 {
        bail!("/v1/route answered {status}: {body}");
    }
    for region in &e.regions {
        let addr: SocketAddr = region
            .ws_url
            .trim_start_matches("wss://")
            .trim_end_matches("/v1/ws")
            .parse()?;
        let (status, _) = crate::tls::https_get(addr, "/readyz")?;
        if status != 200 {
            bail!("region {} is not ready through https://{addr}", region.name);
        }
    }
    Ok(())
}

/// Waits until the router sees every region up.
fn wait_healthy(http: SocketAddr, regions: usize, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, body)) = http_get(http, "/v1/regions") {
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let up = parsed["regions"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|r| r["health"] == "up").count());
            if up == regions {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the router does not see every region up after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_table(e: &Endpoints, json: &Path, smoke: bool) {
    println!(
        "\nMeridian mesh is up  (state: {})\n",
        e.state_dir.display()
    );
    println!(
        "  geo-router   DNS {}   HTTP http://{}   zone {}",
        e.router.dns, e.router.http, e.zone
    );
    println!(
        "  GeoIP        {}{}",
        e.geoip.display(),
        if e.geoip_synthetic {
            "  (SYNTHETIC demo data)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "  {:<14} {:<32} {:<9} {:<26} {:<20} nodes",
        "region", "ws_url", "balancer", "store", "relay"
    );
    for r in &e.regions {
        let nodes: Vec<String> = r.nodes.iter().map(ToString::to_string).collect();
        println!(
            "  {:<14} {:<32} {:<9} {:<26} {:<20} {}",
            r.name,
            r.ws_url,
            r.balancer,
            r.store,
            r.relay.to_string(),
            nodes.join(" ")
        );
    }
    let port = e.router.dns.port();
    println!("\nTry it:");
    println!(
        "  dig @127.0.0.1 -p {port} ws.{} A +subnet=103.20.1.0/24   # a Singapore user",
        e.zone
    );
    println!(
        "  dig @127.0.0.1 -p {port} ws.{} A +subnet=81.20.1.0/24    # a Berlin user",
        e.zone
    );
    println!(
        "  curl 'http://{}/v1/route?ip=23.10.1.1'                 # a New York user",
        e.router.http
    );
    let me = cli_command();
    let state = shell_word(&e.state_dir.display().to_string());
    if let (Some(a), Some(b)) = (e.regions.first(), e.regions.get(1)) {
        println!(
            "  {me} chat --state-dir {state} --region {} --user alice --room lobby",
            a.name
        );
        println!(
            "  {me} chat --state-dir {state} --region {} --user bob --room lobby",
            b.name
        );
        println!(
            "  {me} members --state-dir {state} --region {} --user carol --room lobby",
            b.name
        );
    }
    println!(
        "  (clients connect to a region's ws_url above; the DNS answers name the region's public address)"
    );
    if let Some(ca) = &e.tls_ca {
        let ca = shell_word(&ca.display().to_string());
        println!(
            "\nTLS: the balancers serve wss:// and https:// with a certificate of the dev CA {ca}"
        );
        println!(
            "  meridian commands given --state-dir trust it; elsewhere: --ca {ca} (or MERIDIAN_CA)"
        );
        if let Some(r) = e.regions.first() {
            println!("  curl --cacert {ca} {}", r.health_url);
        }
        println!(
            "  browsers: import {ca} as an authority (Firefox: Settings > Certificates; Chromium: \
             certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n meridian-dev -i {ca})"
        );
    }
    if let Some(demo) = &e.demo {
        println!("\nWebRTC demo (open it twice: alice in Singapore, bob in Berlin):");
        println!("  {demo}?user=alice&ip=103.20.1.7");
        println!("  {demo}?user=bob&ip=81.20.1.7");
    }
    println!("\nEvery endpoint as JSON: {}", json.display());
    if !smoke {
        println!("Ctrl-C stops everything.");
    }
}

/// How to run this `meridian` in a shell: `meridian` when that is on the PATH and is this very
/// binary, else this binary's absolute path.
fn cli_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "meridian".into();
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("meridian"))
            .find(|p| p.is_file())
    });
    if on_path.and_then(|p| p.canonicalize().ok()).as_ref() == Some(&exe) {
        return "meridian".into();
    }
    // Absolute: `scripts/up.sh` runs from the repository root, the reader's shell may not.
    shell_word(&exe.display().to_string())
}

/// `text` quoted for a POSIX shell when it needs it.
fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// `--smoke`: the router answers DNS and HTTP, and each region takes a WebSocket hello.
fn smoke(e: &Endpoints) -> Result<()> {
    let (status, body) = http_get(e.router.http, "/v1/route?ip=81.20.1.1")?;
    if status != 200 {
        bail!("/v1/route answered {status}: {body}");
    }
    for region in &e.regions {
        let addr: SocketAddr = region
            .health_url
            .trim_start_matches("http://")
            .trim_end_matches("/readyz")
            .parse()?;
        let (status, _) = http_get(addr, "/readyz")?;
        if status != 200 {
            bail!("region {} is not ready through {addr}", region.name);
        }
    }
    Ok(())
}

/// Serves the WebRTC demo directory (`examples/webrtc/`) on a loopback port, plus
/// `/config.json` (the router's URL and the ready-made dev tokens), from a thread; returns the
/// page's URL, or `None` when the directory is missing (e.g. `up` run outside the repository).
fn serve_demo(
    dir: &Path,
    router: SocketAddr,
    tokens: &BTreeMap<String, String>,
) -> Result<Option<String>> {
    if !dir.join("index.html").is_file() {
        return Ok(None);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let config = serde_json::to_string(&serde_json::json!({
        "router": format!("http://{router}"),
        "tokens": tokens,
    }))?;
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (dir, config) = (dir.clone(), config.clone());
            std::thread::spawn(move || {
                if let Err(e) = serve_demo_file(stream, &dir, &config) {
                    eprintln!("meridian up: demo request failed: {e:#}");
                }
            });
        }
    });
    Ok(Some(format!("http://{addr}/")))
}

/// One `GET` of the demo server: a file of the directory (no subdirectories), or `/config.json`.
fn serve_demo_file(mut stream: TcpStream, dir: &Path, config: &str) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers (the browser waits for us to read them on keep-alive sockets).
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let name = path
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let name = if name.is_empty() { "index.html" } else { name };
    let (status, kind, body) = if name == "config.json" {
        (200, "application/json", config.as_bytes().to_vec())
    } else if name.contains('/') || name.contains("..") || name.starts_with('.') {
        (404, "text/plain", b"not found".to_vec())
    } else {
        match std::fs::read(dir.join(name)) {
            Ok(body) => {
                let kind = match name.rsplit('.').next() {
                    Some("html") => "text/html; charset=utf-8",
                    Some("js") => "text/javascript",
                    Some("css") => "text/css",
                    _ => "application/octet-stream",
                };
                (200, kind, body)
            }
            Err(_) => (404, "text/plain", b"not found".to_vec()),
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), anyhow::Error>(())
    })
}

/// `POST /regions/<name>/kill` (SIGKILL every process of the region: nodes and balancer first,
/// relays and Redis ~500 ms later), `POST /regions/<name>/drain` (SIGTERM the region's nodes:
/// clients get `reconnect`), `POST /regions/<name>/start-nodes` (the nodes again, after a
/// drain) and `POST /regions/<name>/restart` (every process again on the same ports), for
/// drills.
fn control_loop(listener: TcpListener, mesh: Arc<Mutex<Mesh>>, stopping: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let mesh = Arc::clone(&mesh);
        std::thread::spawn(move || {
            if let Err(e) = handle_control(stream, &mesh) {
                eprintln!("meridian up: control request failed: {e:#}");
            }
        });
    }
}

/// Rewrites `pids` in endpoints.json after a restart (the new processes have new pids).
fn refresh_pids(mesh: &mut Mesh) -> Result<()> {
    let Some(path) = mesh.endpoints_file.clone() else {
        return Ok(());
    };
    let mut endpoints: Endpoints = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    endpoints.pids = mesh.supervisor.pids();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&endpoints)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn mesh_lock(mesh: &Mutex<Mesh>) -> std::sync::MutexGuard<'_, Mesh> {
    mesh.lock().unwrap_or_else(PoisonError::into_inner)
}

fn handle_control(mut stream: TcpStream, mesh_ref: &Mutex<Mesh>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, body) = match (method, segments.as_slice()) {
        ("POST", ["regions", region, action]) => {
            let mut mesh = mesh_lock(mesh_ref);
            match mesh
                .plans
                .iter()
                .find(|p| p.region.name == *region)
                .cloned()
            {
                None => (404, format!("no region {region}")),
                Some(plan) => match *action {
                    "kill" => {
                        // Front first: the nodes and the balancer die at once, so nothing is
                        // acknowledged any more; the relays and Redis ~500 ms later, which
                        // leaves the relays the time to ship what was acknowledged in the
                        // last moments (replication is asynchronous; docs/drills.md).
                        let mut n = mesh.supervisor.signal(&format!("{region}/node-"), "KILL");
                        n += mesh.supervisor.signal(&format!("{region}/haproxy"), "KILL");
                        drop(mesh);
                        std::thread::sleep(Duration::from_millis(500));
                        let mut mesh = mesh_lock(mesh_ref);
                        n += mesh.supervisor.signal(&format!("{region}/relay"), "KILL");
                        n += mesh.supervisor.signal(&format!("{region}/redis"), "KILL");
                        (200, format!("killed {n} processes of {region}"))
                    }
                    "drain" => {
                        // Planned drain: SIGTERM makes each node send `reconnect` (draining)
                        // to its clients and exit within its drain deadline.
                        let n = mesh.supervisor.signal(&format!("{region}/node-"), "TERM");
                        (200, format!("draining {n} nodes of {region}"))
                    }
                    "start-nodes" => {
                        // After a drain: the nodes again, on the region's running Redis and
                        // relays (its state survives, as in a planned drain of a real region).
                        mesh.supervisor.signal(&format!("{region}/node-"), "KILL");
                        std::thread::sleep(Duration::from_millis(200));
                        match start_nodes(&mut mesh, &plan).and_then(|()| wait_front_ready(&plan)) {
                            Ok(()) => {
                                if let Err(e) = refresh_pids(&mut mesh) {
                                    eprintln!("meridian up: could not update the pids in endpoints.json: {e:#}");
                                }
                                (200, format!("{region}: nodes started"))
                            }
                            Err(e) => (500, format!("{e:#}")),
                        }
                    }
                    "restart" => {
                        mesh.supervisor.signal(&format!("{region}/"), "KILL");
                        std::thread::sleep(Duration::from_millis(200));
                        match start_region(&mut mesh, &plan) {
                            Ok(()) => {
                                if let Err(e) = refresh_pids(&mut mesh) {
                                    eprintln!("meridian up: could not update the pids in endpoints.json: {e:#}");
                                }
                                (200, format!("{region} restarted"))
                            }
                            Err(e) => (500, format!("{e:#}")),
                        }
                    }
                    other => (404, format!("unknown action {other}")),
                },
            }
        }
        _ => (
            404,
            "POST /regions/<name>/kill | /regions/<name>/drain | /regions/<name>/start-nodes | /regions/<name>/restart"
                .to_owned(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// The children's log filter: `RUST_LOG` when set (e.g. `RUST_LOG=info,interregion_relay=debug
/// meridian up`), else `info`.
fn child_log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}
