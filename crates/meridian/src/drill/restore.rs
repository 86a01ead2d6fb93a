//! The restore phase's work: undrain or restart R, watch the routing come back, and see where
//! new clients from R's cities land.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;
use tokio::time::Instant;

use super::ledger;
use super::membership::probe_connect;
use super::routing::{shell, watch_route, RouteWatch};
use super::target::Target;
use super::{DrillArgs, Mode};

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

pub(super) async fn restore(
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
        let token = crate::token::mint(&user, &[], 600, &target.token_secret)?;
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
