//! Membership checks: a plain protocol client ([`Monitor`]) lists every room in every live
//! region and compares the listings with where the workload's clients are connected.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::ledger::{self, ClientLog};
use super::mesh::RouterApi;
use super::workload::ClientPlan;

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
    let mut ws = Monitor::connect(&best.ws_url, token).await?;
    let region = ws.region.clone();
    ws.close().await;
    Ok(region)
}

/// A plain protocol client for the drill's own checks (members listings, probes).
pub(super) struct Monitor {
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
    for (_, m) in &mut monitors {
        m.close().await;
    }
    out
}
