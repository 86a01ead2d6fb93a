//! Membership checks: a `meridian-client` connection ([`Monitor`]) lists every room in every live
//! region and compares the listings with where the workload's clients are connected.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use meridian_client::{ConnectOptions, Connection};
use meridian_protocol::{RoomId, UserId};
use serde::Serialize;
use tokio::time::Instant;

use super::ledger::{self, ClientLog};
use super::mesh::RouterApi;
use super::workload::ClientPlan;

/// How long one request of the checks may take.
const REPLY_WAIT: Duration = Duration::from_secs(5);

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

/// A client that asks the router and says hello: the region it landed in.
pub(super) async fn probe_connect(
    router: &RouterApi,
    address: IpAddr,
    token: &str,
) -> Result<String> {
    let answer = router.route(address).await?;
    let best = answer
        .regions
        .first()
        .ok_or_else(|| anyhow!("the router offers no region"))?;
    let ws = Monitor::connect(&best.ws_url, token).await?;
    let region = ws.region.clone();
    ws.close().await;
    Ok(region)
}

/// The drill's own checks' client (members listings, probes): the typed `meridian-client`.
pub(super) struct Monitor {
    conn: Connection,
    pub(super) region: String,
}

impl Monitor {
    pub(super) async fn connect(url: &str, token: &str) -> Result<Monitor> {
        let options = ConnectOptions {
            tls: Some(crate::tls::client_config()?),
            ..ConnectOptions::default()
        };
        let mut conn = tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect_with(url, &options),
        )
        .await
        .map_err(|_| anyhow!("connect {url}: timed out"))?
        .with_context(|| format!("connect {url}"))?;
        let hello = tokio::time::timeout(REPLY_WAIT, conn.hello(token, Vec::new()))
            .await
            .map_err(|_| anyhow!("no reply within 5 s"))??;
        Ok(Monitor {
            conn,
            region: hello.region,
        })
    }

    /// Every member of `room`: user → region.
    pub(super) async fn members(&mut self, room: &str) -> Result<BTreeMap<String, String>> {
        let room = RoomId::new(room)?;
        let mut out = BTreeMap::new();
        let mut after: Option<UserId> = None;
        loop {
            let page = tokio::time::timeout(
                REPLY_WAIT,
                self.conn.members(&room, after.as_ref(), Some(100)),
            )
            .await
            .map_err(|_| anyhow!("no reply within 5 s"))??;
            for m in page.members {
                out.insert(m.user.to_string(), m.region);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    pub(super) async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.close()).await;
    }
}

/// Lists every room in every live region until the listings match the connected clients (or
/// 10 s pass): ghosts, missing and stale-region members.
pub(super) async fn check_membership(
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
    let token = match crate::token::mint(
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
    for (_, m) in monitors {
        m.close().await;
    }
    out
}
