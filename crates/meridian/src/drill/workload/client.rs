//! One workload client: connect through the router, hello/resume with its version vector,
//! join, publish and send direct messages, follow `reconnect`, and log everything for the
//! ledger. The connection is a `meridian-client` [`Connection`]: typed requests, replies and
//! events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use meridian_client::{ClientError, ConnectOptions, Connection, Event, Frame, RoomEvent};
use meridian_protocol::{
    JoinResult, OriginPosition, Request, RequestId, ResumePoint, ResumedRoom, RoomEventKind,
    RoomId, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::time::Instant;

use super::{ClientPlan, Phase, Shared};
use crate::drill::ledger::{ClientLog, DirectSent, Disruption, Published};

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
    fn seed(&mut self, region: &str, epoch: &str, seq: u64, origins: &[OriginPosition]) {
        self.region = region.to_owned();
        self.epoch = epoch.to_owned();
        self.seq = seq;
        self.vector
            .insert(region.to_owned(), (self.epoch.clone(), self.seq));
        for o in origins {
            self.vector
                .entry(o.region.clone())
                .or_insert((o.epoch.clone(), o.seq));
        }
    }

    /// A room event received on the current connection.
    fn on_event(&mut self, event: &RoomEvent) {
        let (epoch, seq) = (event.epoch.as_str(), event.seq);
        if epoch == self.epoch {
            self.seq = self.seq.max(seq);
        } else {
            // The region's history restarted: a new run of its sequence.
            self.epoch = epoch.to_owned();
            self.seq = seq;
        }
        let (region, pos) = match &event.origin {
            Some(o) => (o.region.clone(), (o.epoch.clone(), o.seq)),
            None => (self.region.clone(), (epoch.to_owned(), seq)),
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
    fn already_seen(&self, event: &RoomEvent) -> bool {
        event.origin.as_ref().is_some_and(|o| {
            self.vector
                .get(&o.region)
                .is_some_and(|(epoch, seq)| *epoch == o.epoch && o.seq <= *seq)
        })
    }

    /// The resume entry for `room`.
    fn resume_point(&self, room: &RoomId) -> ResumePoint {
        ResumePoint {
            room: room.clone(),
            epoch: self.epoch.clone(),
            seq: self.seq,
            origins: self
                .vector
                .iter()
                .map(|(r, (e, s))| OriginPosition {
                    region: r.clone(),
                    epoch: e.clone(),
                    seq: *s,
                })
                .collect(),
        }
    }

    fn origins(&self) -> Vec<String> {
        self.vector.keys().cloned().collect()
    }
}

/// The `data` of the drill's messages and direct messages.
#[derive(Debug, Default, Deserialize)]
struct DrillData {
    /// The run.
    drill: Option<String>,
    /// A message's key.
    k: Option<String>,
    /// A direct message's id.
    dm: Option<String>,
}

impl DrillData {
    fn read(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
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
    let partner = match plan.partner.as_deref().map(UserId::new).transpose() {
        Ok(partner) => partner,
        Err(e) => {
            let text = format!("partner of {}: {e}", plan.user);
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .error(text);
            return;
        }
    };
    let room = match RoomId::new(&plan.room) {
        Ok(room) => room,
        Err(e) => {
            let text = format!("room {:?}: {e}", plan.room);
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .error(text);
            return;
        }
    };
    let mut client = Client {
        plan,
        room,
        partner,
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
    room: RoomId,
    partner: Option<UserId>,
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
    fn on_event(&mut self, event: &RoomEvent) {
        let known = self.positions.vector.len();
        self.positions.on_event(event);
        if self.positions.vector.len() != known {
            let origins = self.positions.origins();
            self.log(|l| l.origins = origins);
        }
    }

    fn join(&self) -> Request {
        Request::Join {
            room: self.room.clone(),
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
                Ok((conn, region)) => {
                    round = 0;
                    match self.session(conn, &region).await {
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
    async fn connect(&mut self) -> Result<(Connection, String)> {
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
    /// connection and the region named by the hello reply.
    async fn try_region(&mut self, region: &str, url: &str) -> Result<(Connection, String)> {
        let options = ConnectOptions {
            tls: Some(crate::tls::client_config()?),
            ..ConnectOptions::default()
        };
        let mut conn = tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect_with(url, &options),
        )
        .await
        .map_err(|_| anyhow!("connect timed out"))?
        .with_context(|| format!("connect {url}"))?;
        let resume = if self.joined {
            vec![self.positions.resume_point(&self.room)]
        } else {
            Vec::new()
        };
        let within = Duration::from_secs(5);
        let result = match tokio::time::timeout(within, conn.hello(&self.token, resume)).await {
            Err(_) => bail!("no reply to hello within {within:?}"),
            Ok(Err(ClientError::Server(e))) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                bail!("hello refused in {region}: {} {}", e.name, e.message)
            }
            Ok(Err(ClientError::Closed(info))) => bail!(
                "closed before the hello reply ({})",
                info.map_or(1005, |i| i.code)
            ),
            Ok(Err(e)) => bail!("connection error before the hello reply: {e}"),
            Ok(Ok(result)) => result,
        };
        let actual = result.region;
        let mut in_room = false;
        let mut statuses = Vec::new();
        for entry in &result.resumed {
            statuses.push(entry.status().to_owned());
            match entry {
                ResumedRoom::Recovered {
                    epoch,
                    seq,
                    origins,
                    ..
                }
                | ResumedRoom::HistoryLost {
                    epoch,
                    seq,
                    origins,
                    ..
                } => {
                    in_room = true;
                    self.positions.seed(&actual, epoch, *seq, origins);
                }
                ResumedRoom::Error { .. } => {}
            }
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
        Ok((conn, actual))
    }

    async fn session(&mut self, mut conn: Connection, region: &str) -> SessionEnd {
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
        // At most a join, a publish and a direct message in flight.
        let mut pending: Vec<(RequestId, Pending)> = Vec::new();
        let mut go_away: Option<Instant> = None;
        let mut publish_in_flight = false;
        let mut direct_in_flight = false;
        let mut in_room = self.joined;
        if !self.joined {
            match conn.send(&self.join()).await {
                Ok(id) => {
                    pending.push((id, Pending::Join));
                }
                Err(e) => {
                    return SessionEnd::Lost {
                        cause: format!("error:{e}"),
                        recorded: false,
                    }
                }
            }
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let can_send =
                self.phase() == Phase::Running && go_away.is_none() && in_room && self.plan.active;
            tokio::select! {
                received = conn.next_frame() => {
                    let frame = match received {
                        Ok(r) => r.frame,
                        // A frame this client cannot read: skipped.
                        Err(ClientError::Protocol(_)) => continue,
                        Err(ClientError::Closed(None)) => return SessionEnd::Lost { cause: "closed".into(), recorded: go_away.is_some() },
                        Err(ClientError::Closed(Some(info))) => {
                            return SessionEnd::Lost { cause: format!("closed:{}", info.code), recorded: go_away.is_some() };
                        }
                        Err(e) => return SessionEnd::Lost { cause: format!("error:{e}"), recorded: go_away.is_some() },
                    };
                    match frame {
                        Frame::Reply(reply) => {
                            let Some(i) = pending.iter().position(|(id, _)| reply.id.as_ref() == Some(id)) else { continue };
                            let (_, what) = pending.swap_remove(i);
                            let code = match &reply.outcome {
                                Ok(_) => None,
                                Err(e) => Some(e.name.clone()),
                            };
                            if let Some(code) = code.clone() {
                                self.log(|l| *l.request_errors.entry(code).or_default() += 1);
                            }
                            match what {
                                Pending::Join => {
                                    let join = reply.outcome.ok().and_then(|raw| {
                                        serde_json::from_str::<JoinResult>(raw.get()).ok()
                                    });
                                    if let Some(join) = join {
                                        self.positions.seed(region, &join.epoch, join.seq, &join.origins);
                                        let origins = self.positions.origins();
                                        self.log(|l| l.origins = origins);
                                        self.joined = true;
                                        in_room = true;
                                        self.log(|l| l.joined = true);
                                    }
                                }
                                Pending::Publish => {
                                    publish_in_flight = false;
                                    if code.is_none() {
                                        self.echo = None;
                                        if let Some(key) = self.pending_publish.take() {
                                            let at = self.shared.now();
                                            let region = region.to_owned();
                                            self.log(|l| l.published.push(Published { key, region, at }));
                                        }
                                    } else if code.as_deref() == Some("not_joined") {
                                        in_room = false;
                                        if let Ok(id) = conn.send(&self.join()).await {
                                            pending.push((id, Pending::Join));
                                        }
                                    }
                                }
                                Pending::Direct => {
                                    direct_in_flight = false;
                                    if code.is_none() {
                                        if let Some(id) = self.pending_direct.take() {
                                            let at = self.shared.now();
                                            let region = region.to_owned();
                                            self.log(|l| l.directs_acked.push(DirectSent { id, region, at }));
                                        }
                                    } else if code.as_deref() == Some("user_offline") {
                                        let region = region.to_owned();
                                        self.log(|l| *l.direct_refused.entry(region).or_default() += 1);
                                    }
                                }
                            }
                        }
                        Frame::Event(Event::Reconnect(r)) if go_away.is_none() => {
                            let after = r.after_ms.min(10_000);
                            go_away = Some(Instant::now() + Duration::from_millis(after));
                            let now = self.shared.now();
                            self.disrupted(now, format!("reconnect:{}", r.reason), Some(region.to_owned()));
                        }
                        Frame::Event(Event::Room(event)) if self.positions.already_seen(&event) => {
                            // Seen already on the last connection (replicated into this
                            // region after the resume read its history).
                            self.log(|l| l.deduped += 1);
                        }
                        Frame::Event(Event::Room(event)) => {
                            self.on_event(&event);
                            if let RoomEventKind::Message { from, data, .. } = &event.kind {
                                let data = DrillData::read(data.get());
                                let own = from.as_str() == self.plan.user;
                                if data.drill.as_deref() == Some(self.shared.run.as_str()) && !own {
                                    if let Some(key) = data.k.clone() {
                                        self.log(|l| *l.received.entry(key).or_default() += 1);
                                    }
                                }
                                // Our own pending publish came back: it is published even if
                                // its `ok` never arrives (the region died after committing it),
                                // so it must not be sent again (idempotency keys are per region).
                                if own && data.k.is_some() && data.k == self.pending_publish {
                                    let origin = event.origin.as_ref().map_or(region, |o| o.region.as_str()).to_owned();
                                    self.echo = Some(origin);
                                    if !publish_in_flight {
                                        self.publish_echoed();
                                    }
                                }
                            }
                        }
                        Frame::Event(Event::Direct { data, .. }) => {
                            let data = DrillData::read(data.get());
                            if data.drill.as_deref() == Some(self.shared.run.as_str()) {
                                if let Some(id) = data.dm {
                                    self.log(|l| *l.directs_received.entry(id).or_default() += 1);
                                }
                            }
                        }
                        Frame::Event(_) => {}
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
                    let data = serde_json::json!({"drill": self.shared.run, "k": key});
                    let request = serde_json::value::to_raw_value(&data).map(|data| Request::Publish {
                        room: self.room.clone(),
                        data,
                        idempotency_key: Some(key),
                    });
                    let sent = match request {
                        Ok(request) => conn.send(&request).await,
                        Err(e) => Err(ClientError::Encode(e)),
                    };
                    match sent {
                        Ok(id) => {
                            pending.push((id, Pending::Publish));
                            publish_in_flight = true;
                        }
                        Err(e) => return SessionEnd::Lost { cause: format!("error:{e}"), recorded: false },
                    }
                }
                _ = direct_tick.tick(), if can_send && !direct_in_flight && self.partner.is_some() => {
                    let id = match &self.pending_direct {
                        Some(id) => id.clone(),
                        None => {
                            self.directs += 1;
                            let id = format!("{}-d{}", self.plan.user, self.directs);
                            self.pending_direct = Some(id.clone());
                            id
                        }
                    };
                    let Some(to) = self.partner.clone() else { continue };
                    let data = serde_json::json!({"drill": self.shared.run, "dm": id});
                    let sent = match serde_json::value::to_raw_value(&data) {
                        Ok(data) => conn.send(&Request::Send { to, data }).await,
                        Err(e) => Err(ClientError::Encode(e)),
                    };
                    match sent {
                        Ok(id) => {
                            pending.push((id, Pending::Direct));
                            direct_in_flight = true;
                        }
                        Err(e) => return SessionEnd::Lost { cause: format!("error:{e}"), recorded: false },
                    }
                }
                _ = tokio::time::sleep_until(go_away.unwrap_or(far)), if go_away.is_some() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                    return SessionEnd::Lost { cause: "go-away".into(), recorded: true };
                }
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Done {
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A `message` event of room `r` at (`epoch`, `seq`), with `origin` when replicated.
    fn message(epoch: &str, seq: u64, origin: Option<Value>) -> RoomEvent {
        let mut frame = json!({"type": "message", "room": "r", "from": "u", "data": {},
                               "epoch": epoch, "seq": seq});
        if let Some(o) = origin {
            frame["origin"] = o;
        }
        match meridian_client::decode(&frame.to_string()).unwrap() {
            Frame::Event(Event::Room(e)) => e,
            other => panic!("not a room event: {other:?}"),
        }
    }

    fn origin(region: &str, epoch: &str, seq: u64) -> OriginPosition {
        OriginPosition {
            region: region.to_owned(),
            epoch: epoch.to_owned(),
            seq,
        }
    }

    #[test]
    fn the_version_vector_follows_origins_and_the_connected_region() {
        let room = RoomId::new("r").unwrap();
        let mut pos = Positions::default();
        pos.seed("ap", "aaaa0000", 3, &[origin("eu", "eeee0000", 40)]);
        pos.on_event(&message("aaaa0000", 7, None));
        pos.on_event(&message(
            "aaaa0000",
            8,
            Some(json!({"region":"eu","epoch":"eeee0000","seq":41})),
        ));
        let entry = pos.resume_point(&room);
        assert_eq!(entry.epoch, "aaaa0000");
        assert_eq!(entry.seq, 8);
        assert_eq!(
            entry.origins,
            vec![origin("ap", "aaaa0000", 7), origin("eu", "eeee0000", 41)]
        );
        // Resumed in eu: its own events now come without origin.
        pos.seed("eu", "eeee0000", 45, &[]);
        pos.on_event(&message("eeee0000", 46, None));
        pos.on_event(&message(
            "eeee0000",
            47,
            Some(json!({"region":"us","epoch":"uuuu0000","seq":2})),
        ));
        let entry = pos.resume_point(&room);
        assert_eq!((entry.epoch.as_str(), entry.seq), ("eeee0000", 47));
        assert_eq!(pos.vector["eu"], ("eeee0000".to_owned(), 46));
        assert_eq!(pos.vector["us"], ("uuuu0000".to_owned(), 2));
        assert_eq!(pos.vector["ap"], ("aaaa0000".to_owned(), 7));
        // ap's seq 7 arriving again through eu is a duplicate; seq 8 is news.
        let again = message(
            "eeee0000",
            48,
            Some(json!({"region":"ap","epoch":"aaaa0000","seq":7})),
        );
        assert!(pos.already_seen(&again));
        let news = message(
            "eeee0000",
            48,
            Some(json!({"region":"ap","epoch":"aaaa0000","seq":8})),
        );
        assert!(!pos.already_seen(&news));
        let restarted = message(
            "eeee0000",
            49,
            Some(json!({"region":"ap","epoch":"bbbb0000","seq":1})),
        );
        assert!(!pos.already_seen(&restarted));
        assert!(!pos.already_seen(&message("eeee0000", 3, None)));
    }

    #[test]
    fn drill_data_reads_the_keys_and_tolerates_other_payloads() {
        let d = DrillData::read(r#"{"drill":"run1","k":"c1-p3"}"#);
        assert_eq!(
            (d.drill.as_deref(), d.k.as_deref(), d.dm),
            (Some("run1"), Some("c1-p3"), None)
        );
        let d = DrillData::read(r#"{"text":"hi"}"#);
        assert!(d.drill.is_none() && d.k.is_none());
        assert!(DrillData::read("[1,2]").drill.is_none());
    }
}
