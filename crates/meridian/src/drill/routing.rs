//! Watching the routing move (HTTP `/v1/route` and DNS with ECS, polled), and the shell
//! commands a deployment drill runs.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::time::Instant;

use super::ledger;
use super::mesh;
use super::target::Target;

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
pub(super) async fn watch_route(
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

pub(super) fn fmt_opt(s: Option<f64>) -> String {
    s.map_or_else(|| "never".into(), |s| format!("{s:.2}s"))
}

pub(super) async fn shell(command: &str) -> Result<()> {
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
