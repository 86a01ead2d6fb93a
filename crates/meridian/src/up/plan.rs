//! Where each region's processes listen: the ports from the catalogue's `[local]` table or free
//! ones, checked before anything starts, and the runtime catalogue that points at them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use meridian_catalogue::Region;

use super::{RegionEndpoints, UpArgs};
use crate::procs::free_udp_port;

/// Ports and paths of one region, fixed for the life of the mesh (a restart reuses them).
#[derive(Debug, Clone)]
pub(super) struct RegionPlan {
    pub(super) region: Region,
    pub(super) redis_port: Option<u16>,
    pub(super) node_ports: Vec<u16>,
    /// Each node's ops listener (`/healthz`, `/readyz`, `/metrics`); always free ports.
    pub(super) node_ops_ports: Vec<u16>,
    pub(super) lb_port: Option<u16>,
    pub(super) relay: SocketAddr,
    pub(super) relay_http: SocketAddr,
    pub(super) relay_standby_http: Option<SocketAddr>,
    pub(super) dir: PathBuf,
    /// The balancer terminates TLS (`--tls`).
    pub(super) tls: bool,
}

/// Every address the mesh will listen on must be free before anything starts; otherwise one
/// line per taken port with its owner, and the way out.
pub(super) fn check_ports(plans: &[RegionPlan], args: &UpArgs) -> Result<()> {
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

pub(super) fn region_endpoints(plan: &RegionPlan, haproxy: bool, redis: bool) -> RegionEndpoints {
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

pub(super) fn front_port(plan: &RegionPlan) -> u16 {
    plan.lb_port
        .or_else(|| plan.node_ports.first().copied())
        .unwrap_or(0)
}

pub(super) fn ws_url(plan: &RegionPlan) -> String {
    let scheme = if plan.tls { "wss" } else { "ws" };
    format!("{scheme}://127.0.0.1:{}/v1/ws", front_port(plan))
}

/// Where the region's `/readyz` answers: the balancer (which asks a ready node's ops port), or
/// without one the first node's ops port.
pub(super) fn health_port(plan: &RegionPlan) -> u16 {
    plan.lb_port
        .or_else(|| plan.node_ops_ports.first().copied())
        .unwrap_or(0)
}

pub(super) fn health_url(plan: &RegionPlan) -> String {
    format!("http://127.0.0.1:{}/readyz", health_port(plan))
}

/// `http://…` as `https://…` when the region's balancer terminates TLS (`--tls`).
pub(super) fn tls_url(plan: &RegionPlan, url: String) -> String {
    match url.strip_prefix("http://") {
        Some(rest) if plan.tls => format!("https://{rest}"),
        _ => url,
    }
}

pub(super) fn write_region(dir: &Path, plan: &RegionPlan) -> Result<()> {
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
pub(super) fn wan_peers(
    plans: &[RegionPlan],
) -> Result<BTreeMap<String, BTreeMap<String, SocketAddr>>> {
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
