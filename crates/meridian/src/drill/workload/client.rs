//! One workload client: connect through the router, hello/resume with its version vector,
//! join, publish and send direct messages, follow `reconnect`, and log everything for the
//! ledger.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{ClientPlan, Phase, Shared};
use crate::drill::ledger::{ClientLog, DirectSent, Disruption, Published};
use crate::tls::Ws;

/// The client's position in its room: where it is connected and the version vector.
#[derive(Debug, Default, Clone)]
struct Positions {
    /// The region of the current (or last) connection, from the hello reply.
    region: String,
    /// The last position in that region's room sequence.
    epoch: String,
    seq: u64,
    /// Per origin region: the last (epoch, seq) of that region's own events received.
    vector: BTreeMap<String, (String, u64)>,
}

impl Positions {
    /// A join reply or a `resumed` entry of a hello reply, in `region`.
    fn seed(&mut self, region: &str, result: &Value) {
        self.region = region.to_owned();
        self.epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
        self.seq = result["seq"].as_u64().unwrap_or(0);
        self.vector
            .insert(region.to_owned(), (self.epoch.clone(), self.seq));
        for o in result["origins"].as_array().into_iter().flatten() {
            let origin = o["region"].as_str().unwrap_or_default().to_owned();
            let pos = (
                o["epoch"].as_str().unwrap_or_default().to_owned(),
                o["seq"].as_u64().unwrap_or(0),
            );
            self.vector.entry(origin).or_insert(pos);
        }
    }

    /// A room event received on the current connection.
    fn on_event(&mut self, event: &Value) {
        let (Some(epoch), Some(seq)) = (event["epoch"].as_str(), event["seq"].as_u64()) else {
            return;
        };
        if epoch == self.epoch {
            self.seq = self.seq.max(seq);
        } else {
            // The region's history restarted: a new run of its sequence.
            self.epoch = epoch.to_owned();
            self.seq = seq;
        }
        let origin = &event["origin"];
        let (region, pos) = match (
            origin["region"].as_str(),
            origin["epoch"].as_str(),
            origin["seq"].as_u64(),
        ) {
            (Some(r), Some(e), Some(s)) => (r.to_owned(), (e.to_owned(), s)),
            _ => (self.region.clone(), (epoch.to_owned(), seq)),
        };
        let slot = self.vector.entry(region).or_insert(pos.clone());
        if slot.0 != pos.0 || slot.1 < pos.1 {
            *slot = pos;
        }
    }

    /// Whether a replicated event is at or below the vector's position for its origin. Per
    /// origin, events reach a region in order (one hop, one lane per room), so such an event
    /// is one this client received already in another region: the resume's replay skipped it,
    /// but it can still arrive live when the relay applied it here after the resume.
    fn already_seen(&self, event: &Value) -> bool {
        let origin = &event["origin"];
        match (
            origin["region"].as_str(),
            origin["epoch"].as_str(),
            origin["seq"].as_u64(),
        ) {
            (Some(r), Some(e), Some(s)) => self
                .vector
                .get(r)
                .is_some_and(|(epoch, seq)| epoch == e && s <= *seq),
            _ => false,
        }
    }

    /// The resume entry for `room`.
    fn resume_entry(&self, room: &str) -> Value {
        let origins: Vec<Value> = self
            .vector
            .iter()
            .map(|(r, (e, s))| json!({"region": r, "epoch": e, "seq": s}))
            .collect();
        json!({"room": room, "epoch": self.epoch, "seq": self.seq, "origins": origins})
    }

    fn origins(&self) -> Vec<String> {
        self.vector.keys().cloned().collect()
    }
}

enum Pending {
    Join,
    Publish,
    Direct,
}

enum SessionEnd {
    /// The connection ended; the disruption was recorded already when `recorded`.
    Lost {
        cause: String,
        recorded: bool,
    },
    Done,
}

/// One workload client: runs until the phase is [`Phase::Done`].
pub async fn run_client(
    plan: Arc<ClientPlan>,
    token: String,
    shared: Arc<Shared>,
    log: Arc<Mutex<ClientLog>>,
) {
    let mut client = Client {
        plan,
        token,
        rng: StdRng::seed_from_u64(shared.seed),
        shared,
        log,
        positions: Positions::default(),
        joined: false,
        pending_publish: None,
        echo: None,
        publishes: 0,
        pending_direct: None,
        directs: 0,
        open_disruption: false,
        attempts: 0,
    };
    let index = client.plan.index as u64;
    client.rng =
        StdRng::seed_from_u64(client.shared.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    client.run().await;
}

struct Client {
    plan: Arc<ClientPlan>,
    token: String,
    shared: Arc<Shared>,
    log: Arc<Mutex<ClientLog>>,
    rng: StdRng,
    positions: Positions,
    joined: bool,
    pending_publish: Option<String>,
    /// The pending publish's own message came back (from this region): it was published.
    echo: Option<String>,
    publishes: u64,
    pending_direct: Option<String>,
    directs: u64,
    open_disruption: bool,
    attempts: u32,
}

impl Client {
    fn log<R>(&self, f: impl FnOnce(&mut ClientLog) -> R) -> R {
        let mut guard = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// The pending publish was seen published (its own message came back) without its `ok`:
    /// record it as published and do not retry it.
    fn publish_echoed(&mut self) {
        let Some(region) = self.echo.take() else {
            return;
        };
        if let Some(key) = self.pending_publish.take() {
            let at = self.shared.now();
            self.log(|l| {
                l.published.push(Published { key, region, at });
                l.recovered_acks += 1;
            });
        }
    }

    /// Updates the version vector; publishes the known origins when one is new.
    fn on_event(&mut self, frame: &Value) {
        let known = self.positions.vector.len();
        self.positions.on_event(frame);
        if self.positions.vector.len() != known {
            let origins = self.positions.origins();
            self.log(|l| l.origins = origins);
        }
    }

    fn phase(&self) -> Phase {
        *self.shared.phase.borrow()
    }

    async fn run(&mut self) {
        if let Some(region) = self.plan.wait_for_region.clone() {
            self.wait_for_route(&region).await;
        }
        let mut round = 0u32;
        loop {
            if self.phase() == Phase::Done {
                break;
            }
            match self.connect().await {
                Ok((ws, region)) => {
                    round = 0;
                    match self.session(ws, &region).await {
                        SessionEnd::Done => break,
                        SessionEnd::Lost { cause, recorded } => {
                            let now = self.shared.now();
                            self.log(|l| l.set_region(now, None));
                            if !recorded {
                                self.disrupted(now, cause, Some(region));
                            }
                        }
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    self.log(|l| l.error(text));
                    // Full-jitter exponential backoff: 0..min(3 s, 200 ms × 2^round).
                    let cap = 200u64.saturating_mul(1 << round.min(4)).min(3000);
                    round += 1;
                    let wait = Duration::from_millis(self.rng.gen_range(0..=cap));
                    let mut phase = self.shared.phase.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = phase.wait_for(|p| *p == Phase::Done) => {}
                    }
                }
            }
        }
        let (publish, direct) = (
            self.pending_publish.is_some(),
            self.pending_direct.is_some(),
        );
        let now = self.shared.now();
        self.log(|l| {
            l.publish_pending_at_end = publish;
            l.direct_pending_at_end = direct;
            l.set_region(now, None);
        });
    }

    fn disrupted(&mut self, at: Duration, cause: String, from: Option<String>) {
        self.open_disruption = true;
        self.attempts = 0;
        self.log(|l| {
            l.disruptions.push(Disruption {
                lost_at: at,
                cause,
                from,
                resumed_at: None,
                to: None,
                attempts: 0,
            })
        });
    }

    /// Return-of-traffic clients: wait (bounded) until the router ranks `region` first.
    async fn wait_for_route(&mut self, region: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && self.phase() != Phase::Done {
            if let Ok(answer) = self.shared.router.route(self.plan.address).await {
                if answer.regions.first().is_some_and(|r| r.name == region) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the router, then tries the ranked regions in order.
    async fn connect(&mut self) -> Result<(Ws, String)> {
        let ranking: Vec<(String, String)> = match self.shared.router.route(self.plan.address).await
        {
            Ok(answer) if !answer.regions.is_empty() => answer
                .regions
                .into_iter()
                .map(|r| (r.name, r.ws_url))
                .collect(),
            // The router is down or has no answer: fall back to the first ranking.
            _ => self.plan.ranking.clone(),
        };
        let mut errors = Vec::new();
        for (region, url) in &ranking {
            self.attempts += 1;
            match self.try_region(region, url).await {
                Ok(done) => return Ok(done),
                Err(e) => errors.push(format!("{region}: {e:#}")),
            }
        }
        bail!("no region took the connection: {}", errors.join("; "))
    }

    /// Connects to one region and says hello (with `resume` once joined); returns the
    /// socket and the region named by the hello reply.
    async fn try_region(&mut self, region: &str, url: &str) -> Result<(Ws, String)> {
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(3), crate::tls::connect_ws(url))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
            .with_context(|| format!("connect {url}"))?;
        let mut hello = json!({"id": 1, "op": "hello", "token": self.token});
        if self.joined {
            hello["resume"] = json!([self.positions.resume_entry(&self.plan.room)]);
        }
        ws.send(Message::Text(hello.to_string().into())).await?;
        let reply = read_reply(&mut ws, Duration::from_secs(5)).await?;
        if reply["type"] != "ok" {
            let _ = ws.close(None).await;
            bail!(
                "hello refused in {region}: {} {}",
                reply["code"].as_str().unwrap_or("?"),
                reply["message"].as_str().unwrap_or("")
            );
        }
        let result = &reply["result"];
        let actual = result["region"].as_str().unwrap_or(region).to_owned();
        let mut in_room = false;
        let mut statuses = Vec::new();
        for entry in result["resumed"].as_array().into_iter().flatten() {
            let status = entry["status"].as_str().unwrap_or("?").to_owned();
            if status != "error" {
                in_room = true;
                self.positions.seed(&actual, entry);
            }
            statuses.push(status);
        }
        self.positions.region.clone_from(&actual);
        let now = self.shared.now();
        let attempts = self.attempts;
        let resumed = std::mem::take(&mut self.open_disruption);
        let origins = self.positions.origins();
        self.log(|l| {
            for s in statuses {
                *l.resume_status.entry(s).or_default() += 1;
            }
            l.set_region(now, Some(actual.clone()));
            l.origins = origins;
            if resumed {
                if let Some(d) = l.disruptions.last_mut() {
                    d.resumed_at = Some(now);
                    d.to = Some(actual.clone());
                    d.attempts = attempts;
                }
            }
        });
        if self.joined && !in_room {
            // The resume entry failed: the session joins again.
            self.joined = false;
        }
        Ok((ws, actual))
    }

    async fn session(&mut self, mut ws: Ws, region: &str) -> SessionEnd {
        // Seen published on the last connection, `ok` lost with it: nothing to retry.
        self.publish_echoed();
        let publish_every = self.shared.publish_every;
        let direct_every = self.shared.direct_every;
        let first_publish = Instant::now() + jitter(&mut self.rng, publish_every);
        let first_direct = Instant::now() + jitter(&mut self.rng, direct_every);
        let mut publish_tick = tokio::time::interval_at(first_publish, publish_every);
        publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut direct_tick = tokio::time::interval_at(first_direct, direct_every);
        direct_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut phase = self.shared.phase.clone();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next_id = 1u64;
        let mut go_away: Option<Instant> = None;
        let mut publish_in_flight = false;
        let mut direct_in_flight = false;
        let mut in_room = self.joined;
        if !self.joined {
            next_id += 1;
            pending.insert(next_id, Pending::Join);
            let join = json!({"id": next_id, "op": "join", "room": self.plan.room});
            if let Err(e) = ws.send(Message::Text(join.to_string().into())).await {
                return SessionEnd::Lost {
                    cause: format!("error:{e}"),
                    recorded: false,
                };
            }
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let can_send =
                self.phase() == Phase::Running && go_away.is_none() && in_room && self.plan.active;
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        None => return SessionEnd::Lost { cause: "closed".into(), recorded: go_away.is_some() },
                        Some(Err(e)) => return SessionEnd::Lost { cause: format!("error:{e}"), recorded: go_away.is_some() },
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.map_or(1005, |f| u16::from(f.code));
                            return SessionEnd::Lost { cause: format!("closed:{code}"), recorded: go_away.is_some() };
                        }
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    let kind = frame["type"].as_str().unwrap_or("");
                    let id = frame["id"].as_u64();
                    match (kind, id) {
                        ("ok" | "error", Some(id)) => {
                            let Some(what) = pending.remove(&id) else { continue };
                            let ok = kind == "ok";
                            let code = frame["code"].as_str().unwrap_or("").to_owned();
                            if !ok {
                                let code = code.clone();
                                self.log(|l| *l.request_errors.entry(code).or_default() += 1);
                            }
                            match what {
                                Pending::Join => {
                                    if ok {
                                        self.positions.seed(region, &frame["result"]);
                                        let origins = self.positions.origins();
                                        self.log(|l| l.origins = origins);
                                        self.joined = true;
                                        in_room = true;
                                        self.log(|l| l.joined = true);
                                    }
                                }
                                Pending::Publish => {
                                    publish_in_flight = false;
                                    if ok {
                                        self.echo = None;
                                        if let Some(key) = self.pending_publish.take() {
                                            let at = self.shared.now();
                                            let region = region.to_owned();
                                            self.log(|l| l.published.push(Published { key, region, at }));
                                        }
                                    } else if code == "not_joined" {
                                        in_room = false;
                                        next_id += 1;
                                        pending.insert(next_id, Pending::Join);
                                        let join = json!({"id": next_id, "op": "join", "room": self.plan.room});
                                        let _ = ws.send(Message::Text(join.to_string().into())).await;
                                    }
                                }
                                Pending::Direct => {
                                    direct_in_flight = false;
                                    if ok {
                                        if let Some(id) = self.pending_direct.take() {
                                            let at = self.shared.now();
                                            let region = region.to_owned();
                                            self.log(|l| l.directs_acked.push(DirectSent { id, region, at }));
                                        }
                                    } else if code == "user_offline" {
                                        let region = region.to_owned();
                                        self.log(|l| *l.direct_refused.entry(region).or_default() += 1);
                                    }
                                }
                            }
                        }
                        ("reconnect", _) if go_away.is_none() => {
                            let after = frame["after_ms"].as_u64().unwrap_or(0).min(10_000);
                            go_away = Some(Instant::now() + Duration::from_millis(after));
                            let reason = frame["reason"].as_str().unwrap_or("?");
                            let now = self.shared.now();
                            self.disrupted(now, format!("reconnect:{reason}"), Some(region.to_owned()));
                        }
                        ("message" | "joined" | "left" | "state_changed", _)
                            if self.positions.already_seen(&frame) =>
                        {
                            // Seen already on the last connection (replicated into this
                            // region after the resume read its history).
                            self.log(|l| l.deduped += 1);
                        }
                        ("message", _) => {
                            self.on_event(&frame);
                            let data = &frame["data"];
                            let own = frame["from"] == self.plan.user.as_str();
                            if data["drill"] == self.shared.run.as_str() && !own {
                                if let Some(key) = data["k"].as_str() {
                                    let key = key.to_owned();
                                    self.log(|l| *l.received.entry(key).or_default() += 1);
                                }
                            }
                            // Our own pending publish came back: it is published even if its
                            // `ok` never arrives (the region died after committing it), so it
                            // must not be sent again (idempotency keys are per region).
                            let key = data["k"].as_str();
                            if own && key.is_some() && key == self.pending_publish.as_deref() {
                                let origin = frame["origin"]["region"].as_str().unwrap_or(region).to_owned();
                                self.echo = Some(origin);
                                if !publish_in_flight {
                                    self.publish_echoed();
                                }
                            }
                        }
                        ("direct", _) => {
                            let data = &frame["data"];
                            if data["drill"] == self.shared.run.as_str() {
                                if let Some(id) = data["dm"].as_str() {
                                    let id = id.to_owned();
                                    self.log(|l| *l.directs_received.entry(id).or_default() += 1);
                                }
                            }
                        }
                        ("joined" | "left" | "state_changed", _) => self.on_event(&frame),
                        _ => {}
                    }
                }
                _ = publish_tick.tick(), if can_send && !publish_in_flight => {
                    let key = match &self.pending_publish {
                        Some(key) => {
                            // No `ok` on the last connection: the same key again, here.
                            let (key, region) = (key.clone(), region.to_owned());
                            self.log(|l| l.retried.push((key.clone(), region)));
                            key
                        }
                        None => {
                            self.publishes += 1;
                            let key = format!("{}-p{}", self.plan.user, self.publishes);
                            self.pending_publish = Some(key.clone());
                            key
                        }
                    };
                    next_id += 1;
                    pending.insert(next_id, Pending::Publish);
                    publish_in_flight = true;
                    let req = json!({"id": next_id, "op": "publish", "room": self.plan.room,
                        "data": {"drill": self.shared.run, "k": key}, "idempotency_key": key});
                    if let Err(e) = ws.send(Message::Text(req.to_string().into())).await {
                        return SessionEnd::Lost { cause: format!("error:{e}"), recorded: false };
                    }
                }
                _ = direct_tick.tick(), if can_send && !direct_in_flight && self.plan.partner.is_some() => {
                    let id = match &self.pending_direct {
                        Some(id) => id.clone(),
                        None => {
                            self.directs += 1;
                            let id = format!("{}-d{}", self.plan.user, self.directs);
                            self.pending_direct = Some(id.clone());
                            id
                        }
                    };
                    next_id += 1;
                    pending.insert(next_id, Pending::Direct);
                    direct_in_flight = true;
                    let req = json!({"id": next_id, "op": "send", "to": self.plan.partner,
                        "data": {"drill": self.shared.run, "dm": id}});
                    if let Err(e) = ws.send(Message::Text(req.to_string().into())).await {
                        return SessionEnd::Lost { cause: format!("error:{e}"), recorded: false };
                    }
                }
                _ = tokio::time::sleep_until(go_away.unwrap_or(far)), if go_away.is_some() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return SessionEnd::Lost { cause: "go-away".into(), recorded: true };
                }
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Done {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        return SessionEnd::Done;
                    }
                }
            }
        }
    }
}

fn jitter(rng: &mut StdRng, every: Duration) -> Duration {
    let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rng.gen_range(0..ms))
}

/// Reads frames until the reply to request 1 (or an `id: null` error) arrives.
async fn read_reply(ws: &mut Ws, within: Duration) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no reply to hello within {within:?}"))?;
        match frame {
            None => bail!("closed before the hello reply"),
            Some(Err(e)) => bail!("connection error before the hello reply: {e}"),
            Some(Ok(Message::Close(f))) => {
                bail!(
                    "closed before the hello reply ({})",
                    f.map_or(1005, |f| u16::from(f.code))
                )
            }
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).context("a frame that is not JSON")?;
                let is_reply =
                    matches!(v["type"].as_str(), Some("ok" | "error")) && v.get("id").is_some();
                if is_reply && (v["id"] == 1 || v["id"].is_null()) {
                    return Ok(v);
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_vector_follows_origins_and_the_connected_region() {
        let mut pos = Positions::default();
        pos.seed(
            "ap",
            &json!({"epoch":"aaaa0000","seq":3,"origins":[{"region":"eu","epoch":"eeee0000","seq":40}]}),
        );
        pos.on_event(&json!({"type":"message","epoch":"aaaa0000","seq":7}));
        pos.on_event(&json!({"type":"message","epoch":"aaaa0000","seq":8,
                    "origin":{"region":"eu","epoch":"eeee0000","seq":41}}));
        let entry = pos.resume_entry("r");
        assert_eq!(entry["epoch"], "aaaa0000");
        assert_eq!(entry["seq"], 8);
        assert_eq!(
            entry["origins"],
            json!([{"region":"ap","epoch":"aaaa0000","seq":7},{"region":"eu","epoch":"eeee0000","seq":41}])
        );
        // Resumed in eu: its own events now come without origin.
        pos.seed("eu", &json!({"epoch":"eeee0000","seq":45}));
        pos.on_event(&json!({"type":"message","epoch":"eeee0000","seq":46}));
        pos.on_event(&json!({"type":"joined","epoch":"eeee0000","seq":47,
                    "origin":{"region":"us","epoch":"uuuu0000","seq":2}}));
        let entry = pos.resume_entry("r");
        assert_eq!(
            (entry["epoch"].clone(), entry["seq"].clone()),
            (json!("eeee0000"), json!(47))
        );
        assert_eq!(pos.vector["eu"], ("eeee0000".to_owned(), 46));
        assert_eq!(pos.vector["us"], ("uuuu0000".to_owned(), 2));
        assert_eq!(pos.vector["ap"], ("aaaa0000".to_owned(), 7));
        // ap's seq 7 arriving again through eu is a duplicate; seq 8 is news.
        let again = json!({"type":"message","epoch":"eeee0000","seq":48,
                           "origin":{"region":"ap","epoch":"aaaa0000","seq":7}});
        assert!(pos.already_seen(&again));
        let news = json!({"type":"message","epoch":"eeee0000","seq":48,
                          "origin":{"region":"ap","epoch":"aaaa0000","seq":8}});
        assert!(!pos.already_seen(&news));
        let restarted = json!({"type":"message","epoch":"eeee0000","seq":49,
                               "origin":{"region":"ap","epoch":"bbbb0000","seq":1}});
        assert!(!pos.already_seen(&restarted));
        assert!(!pos.already_seen(&json!({"type":"message","epoch":"eeee0000","seq":3})));
    }
}
