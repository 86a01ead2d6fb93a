//! `meridian route`: ask the geo-router where a client address goes and print the ranked
//! answer (and, with a DNS server, what DNS answers for the address's ECS network).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;

use crate::drill::mesh;

/// `meridian route` options.
#[derive(clap::Args, Debug)]
pub struct RouteArgs {
    /// The client address to route.
    #[arg(long)]
    ip: IpAddr,
    /// The router's HTTP API (default: from --state-dir/--endpoints, else
    /// http://127.0.0.1:8053). It must allow `?ip=` (allow_debug_ip = true).
    #[arg(long)]
    router: Option<String>,
    /// Also ask this DNS server (default: the local mesh's) with the address's ECS network.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// The state directory of a running `meridian up`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// `endpoints.json` of a running `meridian up`.
    #[arg(long)]
    endpoints: Option<PathBuf>,
    /// Print the router's JSON as is.
    #[arg(long)]
    json: bool,
}

/// Asks and prints.
pub fn run(args: RouteArgs) -> Result<()> {
    let local = mesh::load_endpoints(args.endpoints.as_deref(), args.state_dir.as_deref())?;
    let base = args
        .router
        .or_else(|| local.as_ref().map(|e| format!("http://{}", e.router.http)))
        .unwrap_or_else(|| "http://127.0.0.1:8053".into());
    let dns = args.dns.or(local.as_ref().map(|e| e.router.dns));
    let zone = local
        .as_ref()
        .map_or_else(|| "mesh.localhost.".to_owned(), |e| e.zone.clone());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(route(&base, args.ip, dns, &zone, args.json))
}

async fn route(
    base: &str,
    ip: IpAddr,
    dns: Option<SocketAddr>,
    zone: &str,
    json: bool,
) -> Result<()> {
    let router = mesh::RouterApi::new(base)?;
    let answer = router.route(ip).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer.raw)?);
        return Ok(());
    }
    let location = &answer.client["location"];
    println!(
        "client {} (network {}, {}{})",
        ip,
        answer.client["network"].as_str().unwrap_or("?"),
        location["country"].as_str().unwrap_or("unknown location"),
        location["continent"]
            .as_str()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    );
    if answer.regions.is_empty() {
        println!("no region can take users (503)");
    }
    println!(
        "  {:<4} {:<16} {:>10} {:<9} ws_url",
        "rank", "region", "est. RTT", "reason"
    );
    for (i, r) in answer.regions.iter().enumerate() {
        println!(
            "  {:<4} {:<16} {:>8.1}ms {:<9} {}",
            i + 1,
            r.name,
            r.estimated_rtt_ms,
            r.reason,
            r.ws_url
        );
    }
    if answer.all_down {
        println!("  (every region is down: this is the least-bad answer)");
    }
    if let Some(scope) = answer.scope {
        println!("  ECS scope for DNS answers: /{scope}");
    }
    if let Some(server) = dns {
        let qname = mesh::ws_name(zone);
        let subnet = mesh::client_network(ip);
        match mesh::dns_addresses(server, &qname, Some(subnet)).await {
            Ok(addresses) => println!(
                "DNS {qname} via {server} with ECS {}/{}: {} (the region's public address; \
                 clients connect to its ws_url)",
                subnet.0,
                subnet.1,
                if addresses.is_empty() {
                    "no address".to_owned()
                } else {
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Err(e) => println!("DNS {qname} via {server}: {e:#}"),
        }
    }
    Ok(())
}
