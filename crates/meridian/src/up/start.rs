//! Starting a region's processes (Redis, nodes, HAProxy, active and standby relays, the WAN
//! proxies) under the [`Supervisor`], and waiting until they answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::plan::{health_port, RegionPlan};
use super::Endpoints;
use crate::procs::{http_get, sibling_binary, wait_port, Supervisor};

/// The running mesh: supervisor plus what is needed to restart a region.
pub(super) struct Mesh {
    pub(super) supervisor: Supervisor,
    pub(super) plans: Vec<RegionPlan>,
    pub(super) secret: String,
    pub(super) catalogue_dir: PathBuf,
    pub(super) certs: PathBuf,
    pub(super) wan_peers: BTreeMap<String, BTreeMap<String, SocketAddr>>,
    pub(super) grace_ms: u64,
    /// `endpoints.json`, once written (its `pids` are refreshed after a restart).
    pub(super) endpoints_file: Option<PathBuf>,
    /// With `--tls`: the balancers' certificate and key (one PEM file, for HAProxy).
    pub(super) web_pem: Option<PathBuf>,
}

/// Waits until the Redis on `port` answers and is the one this mesh started (a Redis that
/// could not bind exits, and another mesh's Redis may be answering there).
pub(super) fn wait_own_redis(mesh: &mut Mesh, proc_name: &str, port: u16) -> Result<()> {
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

pub(super) fn start_wan_proxies(mesh: &mut Mesh) -> Result<()> {
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
pub(super) fn start_region(mesh: &mut Mesh, plan: &RegionPlan) -> Result<()> {
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
pub(super) fn start_nodes(mesh: &mut Mesh, plan: &RegionPlan) -> Result<()> {
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
pub(super) fn wait_front_ready(plan: &RegionPlan) -> Result<()> {
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

/// GET `path` at `addr`, over TLS when the region's balancer terminates it.
pub(super) fn front_get(tls: bool, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    if tls {
        crate::tls::https_get(addr, path)
    } else {
        http_get(addr, path)
    }
}

/// Rewrites `pids` in endpoints.json after a restart (the new processes have new pids).
pub(super) fn refresh_pids(mesh: &mut Mesh) -> Result<()> {
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

/// The children's log filter: `RUST_LOG` when set (e.g. `RUST_LOG=info,interregion_relay=debug
/// meridian up`), else `info`.
pub(super) fn child_log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}
