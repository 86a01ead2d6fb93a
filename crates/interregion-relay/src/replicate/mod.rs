//! Replication: what flows over the links between this region's Redis and the other regions.
//!
//! The transport ([`crate::link`]) hands every received frame to the [`Replicator`] (it is the
//! relay's [`EventSink`]); the replicator also follows this region's Redis
//! ([`region_state::replica::ReplicaStore::start_feed`]) and sends what other regions asked
//! for. Design and bounds: `docs/relay.md` ("Replication").
//!
//! - **Interest.** The rooms with local members (announced by the nodes' join/leave scripts on
//!   `meridian:interest`, rescanned every `rescan`) are announced to every peer, each with the
//!   last position applied from that peer (`since`). A room whose last local member left is
//!   withdrawn `interest_linger` later, unless a member came back.
//! - **Sending.** One pump task per room followed by at least one peer reads the room's history
//!   after each follower's cursor and sends the events that originated here (entries without
//!   an origin tag; member events only for users homed here) on the room's lane, in order,
//!   each with `prev_seq`. A follower without a usable resume point (none, another epoch, or
//!   trimmed away) gets a snapshot first.
//!   A pump's commands wait in a bounded channel; what does not fit merges into a bounded
//!   overflow (see `PumpEntry::offer`), and the pumps run under a `TaskTracker` that
//!   [`Replicator::run`] waits for at shutdown.
//! - **Receiving.** Events are applied by one Lua script that dedupes on the per-origin
//!   watermark, checks `prev_seq` against it (a gap asks the origin again with `Interest`,
//!   at most once per `gap_retry`), and merges membership and state by last-writer-wins.
//! - **Presence and direct messages.** Each region tells the others which users are connected
//!   there; they are recorded as pseudo-connections so `presence` and `send` work for remote
//!   users. A `send` to such a user reaches this relay through its pseudo-node's inbox and
//!   goes to the user's region as a `Direct` frame.
//! - **Region loss.** A peer whose link stays down for `grace` is declared down: its members
//!   leave every local room with `left {reason: region_down}` (a user connected here meanwhile
//!   stays, homed here) and its users' presence is dropped.
//!
//! Over the ~700-line aim: this is still the async actor the relay runs. Its rules exist again
//! as the pure [`core::ReplicationCore`] (tested by `tests/sim.rs`); once a driver runs the
//! relay on the core, this file shrinks to that driver.

pub mod core;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use meridian_protocol::relay::{
    epoch_code, Direct, EventKind, Follow, Frame, Position, Presence, RoomEvent, Snapshot,
};
use meridian_protocol::{Hlc, RoomEventFrame, RoomEventKind, RoomId, UserId};
use region_state::replica::{Applied, Feed, ReplicaStore};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::RelayHandle;
use crate::metrics::Metrics;
use crate::sink::{EventSink, LinkEvent};

/// Replication timers and sizes (defined with the rest of the configuration).
pub use crate::config::ReplicationOptions;

/// Commands for a room's pump.
#[derive(Debug)]
enum PumpCmd {
    /// `peer` follows the room from `since`.
    Follow(String, Option<Position>),
    /// `peer` no longer follows it.
    Unfollow(String),
    /// The room's history may have grown (read it).
    Poke,
    /// One event was appended (from the room channel): sent without reading the history
    /// when it is the next one for a follower and needs nothing the channel lacks.
    Appended(Appended),
}

/// Commands a room's pump holds queued at most (see [`PumpEntry::offer`]).
const PUMP_QUEUE: usize = 1024;

/// A room's pump as the replicator reaches it: a bounded channel, and what did not fit.
#[derive(Debug)]
struct PumpEntry {
    tx: mpsc::Sender<PumpCmd>,
    overflow: Overflow,
}

/// Commands that found the pump's channel full, merged so that they take bounded room: any
/// number of appended events become one `Poke` (the pump then reads the room's history, which
/// holds them all), and follow changes keep the last one per peer.
#[derive(Debug, Default)]
struct Overflow {
    poke: bool,
    /// Per peer: `Some(since)` follow, `None` unfollow.
    follows: BTreeMap<String, Option<Option<Position>>>,
}

impl Overflow {
    fn is_empty(&self) -> bool {
        !self.poke && self.follows.is_empty()
    }

    fn add(&mut self, cmd: PumpCmd) {
        match cmd {
            PumpCmd::Poke | PumpCmd::Appended(_) => self.poke = true,
            PumpCmd::Follow(peer, since) => {
                self.follows.insert(peer, Some(since));
            }
            PumpCmd::Unfollow(peer) => {
                self.follows.insert(peer, None);
            }
        }
    }

    fn into_cmds(self) -> Vec<PumpCmd> {
        let mut cmds: Vec<PumpCmd> = self
            .follows
            .into_iter()
            .map(|(peer, f)| match f {
                Some(since) => PumpCmd::Follow(peer, since),
                None => PumpCmd::Unfollow(peer),
            })
            .collect();
        if self.poke {
            cmds.push(PumpCmd::Poke);
        }
        cmds
    }
}

impl PumpEntry {
    /// Queues `cmd` for the pump without waiting (callers hold the replicator's lock) and
    /// without losing it. The channel is bounded ([`PUMP_QUEUE`]); when it is full, or while
    /// earlier commands wait in the overflow (so that order is kept), the command goes to the
    /// overflow, which merges instead of growing: appended events become one history read,
    /// follow changes keep the last per peer. A slow pump therefore costs history reads, never
    /// memory without bound and never an event. A pump that has ended (closed channel) takes
    /// nothing, as before: the next follow starts a new one.
    fn offer(&mut self, cmd: PumpCmd) {
        if self.overflow.is_empty() {
            match self.tx.try_send(cmd) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(cmd)) => self.overflow.add(cmd),
            }
        } else {
            self.overflow.add(cmd);
        }
    }
}

/// An event as the room channel carried it.
#[derive(Debug, Clone)]
struct Appended {
    seq: u64,
    epoch: String,
    frame: Bytes,
    idempotency: Option<String>,
}

/// Where a follower is in the room's history.
#[derive(Debug, Clone)]
struct Cursor {
    /// The room epoch the cursor belongs to.
    epoch: String,
    /// History position read up to (local and replicated entries).
    seq: u64,
    /// Origin seq of the last event sent (what the follower's watermark is).
    prev: u64,
}

#[derive(Default)]
struct Inner {
    /// Pumps of the rooms some peer follows.
    pumps: HashMap<RoomId, PumpEntry>,
    /// Rooms each peer follows (to apply an interest snapshot).
    followed: HashMap<String, BTreeSet<RoomId>>,
    /// Rooms with local members, announced to the peers.
    interest: BTreeSet<RoomId>,
    /// Rooms whose last local member left, with when to withdraw them.
    withdraw: HashMap<RoomId, Instant>,
    /// Peers whose link is down, since when (from start for peers never connected).
    down_since: HashMap<String, Instant>,
    /// Peers declared down and not back yet.
    declared_down: BTreeSet<String>,
    /// Last gap request per (peer, room).
    gap_asked: HashMap<(String, RoomId), Instant>,
    /// Direct messages waiting for a peer's link, per peer.
    directs: HashMap<String, DirectBuffer>,
    /// Peers still to be asked again for every room after a Redis resync (retried every
    /// tick until Redis answers: right after a restart the first reads can fail).
    refollow: BTreeSet<String>,
}

/// Direct messages for one peer region, held while its link is down (oldest first).
#[derive(Default)]
struct DirectBuffer {
    queue: std::collections::VecDeque<(Instant, Direct)>,
    bytes: usize,
    /// A drain is under way: new messages queue behind it to keep their order.
    draining: bool,
}

/// The replication engine of one relay: an [`EventSink`] for the links and the follower of
/// this region's Redis. Create it, start the links with it as sink, then [`Replicator::run`].
pub struct Replicator {
    store: ReplicaStore,
    peers: Vec<String>,
    options: ReplicationOptions,
    handle: OnceLock<RelayHandle>,
    inner: Mutex<Inner>,
    /// The rooms' pump tasks: [`Replicator::run`] waits for them at shutdown.
    pumps: TaskTracker,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("region", &self.store.region())
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replicator {
    /// A replicator for the region of `store`, whose peers are `peers`.
    pub fn new(store: ReplicaStore, peers: Vec<String>, options: ReplicationOptions) -> Arc<Self> {
        let now = Instant::now();
        let inner = Inner {
            down_since: peers.iter().map(|p| (p.clone(), now)).collect(),
            ..Inner::default()
        };
        Arc::new(Self {
            store,
            peers,
            options,
            handle: OnceLock::new(),
            inner: Mutex::new(inner),
            pumps: TaskTracker::new(),
        })
    }

    fn region(&self) -> &str {
        self.store.region()
    }

    fn handle(&self) -> Option<&RelayHandle> {
        self.handle.get()
    }

    fn metrics(&self) -> Option<&Metrics> {
        self.handle().map(RelayHandle::metrics)
    }

    /// Peers declared down and not back (tests, `/readyz` detail).
    pub fn declared_down(&self) -> BTreeSet<String> {
        lock(&self.inner).declared_down.clone()
    }

    /// Follows this region's Redis and keeps the timers until `shutdown`. `handle` is the
    /// started relay whose sink this replicator is.
    pub async fn run(self: Arc<Self>, handle: RelayHandle, shutdown: CancellationToken) {
        let _ = self.handle.set(handle);
        match self.store.local_interest().await {
            Ok(rooms) => lock(&self.inner).interest.extend(rooms),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read local interest at start; the rescan retries")
            }
        }
        let (tx, mut feed) = mpsc::channel(4096);
        let feed_task = self.store.start_feed(tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rescan = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                item = feed.recv() => match item {
                    Some(item) => self.on_feed(item).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let rescan = last_rescan.elapsed() >= self.options.rescan;
                    if rescan {
                        last_rescan = Instant::now();
                    }
                    self.on_tick(rescan).await;
                }
            }
        }
        feed_task.abort();
        // The pumps end once their channels close; a pump in the middle of a send is given
        // a moment (the links are closing too, so sends fail fast).
        lock(&self.inner).pumps.clear();
        self.pumps.close();
        if tokio::time::timeout(Duration::from_secs(2), self.pumps.wait())
            .await
            .is_err()
        {
            tracing::warn!("room pumps still busy at shutdown");
        }
    }

    // ---- this region's Redis -----------------------------------------------------------

    async fn on_feed(self: &Arc<Self>, item: Feed) {
        match item {
            Feed::Room {
                room,
                seq,
                epoch,
                frame,
                idempotency,
            } => {
                if let Some(pump) = lock(&self.inner).pumps.get_mut(&room) {
                    pump.offer(PumpCmd::Appended(Appended {
                        seq,
                        epoch,
                        frame,
                        idempotency,
                    }));
                }
            }
            Feed::Interest {
                room,
                local_members: true,
            } => self.gain_interest(room).await,
            Feed::Interest {
                room,
                local_members: false,
            } => {
                let at = Instant::now() + self.options.interest_linger;
                lock(&self.inner).withdraw.insert(room, at);
            }
            Feed::Presence { user, online } => {
                let p = if online {
                    Presence {
                        reset: false,
                        online: vec![user],
                        offline: Vec::new(),
                    }
                } else {
                    Presence {
                        reset: false,
                        online: Vec::new(),
                        offline: vec![user],
                    }
                };
                self.broadcast(&Frame::Presence(p)).await;
            }
            Feed::Direct { region, to, frame } => self.forward_direct(region, to, frame).await,
            Feed::Resynced => {
                // Announcements may have been missed while the feed was down.
                self.rescan_interest().await;
                for pump in lock(&self.inner).pumps.values_mut() {
                    pump.offer(PumpCmd::Poke);
                }
                // Redis may have lost data (a restart without it, or with the last second of
                // an append-only file missing, or a failover to a replica that lagged): ask
                // every peer again for every room, from what Redis says was applied. The peers
                // restart those follows, send a reconciliation snapshot (or a full one where
                // the watermark is gone) and replay their history after it, so remote members,
                // state and messages lost here come back. Follows still flowing are simply
                // restarted from the watermark; duplicates are dropped by the apply script.
                lock(&self.inner).refollow = self.peers.iter().cloned().collect();
                self.refollow_pending().await;
            }
            _ => {}
        }
    }

    /// Asks every peer still pending (see `Feed::Resynced`) that is up to follow every room of
    /// ours again. A peer stays pending while Redis cannot give the resume points or the
    /// frames cannot be sent; a peer whose link is down re-follows everything at link-up.
    async fn refollow_pending(&self) {
        let (peers, rooms): (Vec<String>, Vec<RoomId>) = {
            let inner = lock(&self.inner);
            if inner.refollow.is_empty() {
                return;
            }
            (
                inner.refollow.iter().cloned().collect(),
                inner.interest.iter().cloned().collect(),
            )
        };
        let Some(h) = self.handle() else { return };
        for peer in peers {
            if !h.is_up(&peer) {
                lock(&self.inner).refollow.remove(&peer);
                continue;
            }
            let Some(points) = self.resume_points(&peer, &rooms).await else {
                continue;
            };
            let mut sent = true;
            for (room, since) in rooms.iter().zip(points) {
                let frame = Frame::Interest {
                    room: room.clone(),
                    interested: true,
                    since,
                };
                if let Err(e) = h.send_control(&peer, &frame).await {
                    tracing::debug!(%peer, %room, error = %e, "interest not sent");
                    sent = false;
                    break;
                }
            }
            if sent {
                lock(&self.inner).refollow.remove(&peer);
                tracing::info!(%peer, rooms = rooms.len(), "asked the peer to resend every followed room after a Redis resync");
            }
        }
    }

    async fn gain_interest(&self, room: RoomId) {
        let new = {
            let mut inner = lock(&self.inner);
            inner.withdraw.remove(&room);
            inner.interest.insert(room.clone())
        };
        if new {
            for peer in self.up_peers() {
                self.announce(&peer, &room).await;
            }
        }
    }

    /// Where `peer` should resume each of `rooms`: the position applied from it, or, where
    /// nothing was applied yet, the time from which the room has had local members (so the
    /// peer replays from there, and a message published right after a join here was
    /// acknowledged is not lost to the joiner). `None` when Redis cannot say: asking without
    /// a position would get a snapshot as of now and skip whatever lies between.
    async fn resume_points(&self, peer: &str, rooms: &[RoomId]) -> Option<Vec<Option<Position>>> {
        let marks = match self.store.watermarks(peer, rooms).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot read watermarks; asking later");
                return None;
            }
        };
        let mut out = Vec::with_capacity(rooms.len());
        for (room, mark) in rooms.iter().zip(marks) {
            out.push(match mark {
                Some((e, s)) => Some(Position {
                    epoch: epoch_code(&e),
                    seq: s,
                }),
                // Nothing applied from the peer yet: from the oldest position of its events
                // that a client resuming here has seen (it was re-homed from elsewhere and
                // must get everything after it), else from the first local join.
                None => match self.store.wanted_position(room, peer).await {
                    Ok(Some((e, s))) => Some(Position {
                        epoch: epoch_code(&e),
                        seq: s,
                    }),
                    Ok(None) => match self.store.local_join_time(room).await {
                        Ok(t) => t.map(Position::joined_at),
                        Err(e) => {
                            tracing::warn!(%peer, %room, error = %e, "cannot read the room's join time; asking later");
                            return None;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(%peer, %room, error = %e, "cannot read the resumers' positions; asking later");
                        return None;
                    }
                },
            });
        }
        Some(out)
    }

    /// Sends `Interest` for `room` to `peer` with where to resume (see
    /// [`Replicator::resume_points`]); nothing when Redis cannot tell (the gap retry, the
    /// feed's resync or the periodic interest snapshot asks again).
    async fn announce(&self, peer: &str, room: &RoomId) {
        let Some(since) = self
            .resume_points(peer, std::slice::from_ref(room))
            .await
            .and_then(|p| p.into_iter().next())
        else {
            return;
        };
        if let Some(h) = self.handle() {
            let frame = Frame::Interest {
                room: room.clone(),
                interested: true,
                since,
            };
            if let Err(e) = h.send_control(peer, &frame).await {
                tracing::debug!(%peer, %room, error = %e, "interest not sent");
            }
        }
    }

    async fn forward_direct(&self, region: String, to: UserId, frame: Bytes) {
        #[derive(Deserialize)]
        struct From {
            from: UserId,
        }
        let Ok(From { from }) = serde_json::from_slice::<From>(&frame) else {
            tracing::debug!(%to, "dropping a direct frame without a valid sender");
            return;
        };
        let direct = Direct {
            to_user: to,
            from_user: from,
            payload: frame.to_vec(),
        };
        // Behind messages already waiting for this region, to keep the order.
        let queued = {
            let mut inner = lock(&self.inner);
            match inner.directs.get(&region) {
                Some(b) if b.draining || !b.queue.is_empty() => {
                    self.buffer_direct(&mut inner, &region, direct.clone());
                    true
                }
                _ => false,
            }
        };
        if queued {
            return;
        }
        let sent = match self.handle() {
            Some(h) if self.heard_recently(&region) => {
                h.send_direct(&region, &direct).await.is_ok()
            }
            _ => false,
        };
        if !sent {
            let mut inner = lock(&self.inner);
            if inner.declared_down.contains(&region) {
                drop(inner);
                self.count_direct_dropped(&region, 1, "region down");
            } else {
                tracing::debug!(%region, to = %direct.to_user, "link down: direct message held until it is back");
                self.buffer_direct(&mut inner, &region, direct);
            }
        }
    }

    /// Whether `peer`'s relay was heard within `presence_ttl − 1 s`: a link that went quiet
    /// for that long is probably dead though not yet declared so (the loss of a link is
    /// detected within `idle_timeout + keep_alive`); direct messages are held rather than
    /// sent into it.
    fn heard_recently(&self, peer: &str) -> bool {
        let quiet = self
            .options
            .presence_ttl
            .saturating_sub(Duration::from_secs(1));
        self.handle()
            .and_then(|h| h.last_heard(peer))
            .is_some_and(|t| t.elapsed() < quiet)
    }

    fn count_direct_dropped(&self, region: &str, n: u64, why: &str) {
        if n == 0 {
            return;
        }
        if let Some(m) = self.metrics() {
            m.direct_dropped
                .get_or_create(&crate::metrics::PeerLabels {
                    peer: region.into(),
                })
                .inc_by(n);
        }
        tracing::warn!(%region, dropped = n, why, "direct messages dropped");
    }

    /// Holds a direct message for `region` (link down); the oldest go when the buffer is
    /// over its byte bound.
    fn buffer_direct(&self, inner: &mut Inner, region: &str, direct: Direct) {
        let size = direct.payload.len() + 64;
        let buf = inner.directs.entry(region.to_owned()).or_default();
        buf.bytes += size;
        buf.queue.push_back((Instant::now(), direct));
        let mut dropped = 0;
        while buf.bytes > self.options.direct_buffer_bytes {
            let Some((_, old)) = buf.queue.pop_front() else {
                break;
            };
            buf.bytes = buf.bytes.saturating_sub(old.payload.len() + 64);
            dropped += 1;
        }
        self.count_direct_dropped(region, dropped, "buffer full while the link is down");
    }

    /// Delivers the direct messages held for `peer`, in order, after its link came back;
    /// those older than `direct_buffer_age` are dropped (signalling that old is stale).
    async fn drain_directs(&self, peer: &str) {
        let Some(h) = self.handle() else { return };
        {
            let mut inner = lock(&self.inner);
            let Some(buf) = inner.directs.get_mut(peer) else {
                return;
            };
            if buf.draining {
                return;
            }
            buf.draining = true;
        }
        let mut sent = 0usize;
        loop {
            let (next, expired) = {
                let mut inner = lock(&self.inner);
                let Some(buf) = inner.directs.get_mut(peer) else {
                    break;
                };
                let mut expired = 0;
                let next = loop {
                    match buf.queue.pop_front() {
                        Some((at, d)) => {
                            buf.bytes = buf.bytes.saturating_sub(d.payload.len() + 64);
                            if at.elapsed() > self.options.direct_buffer_age {
                                expired += 1;
                                continue;
                            }
                            break Some(d);
                        }
                        None => {
                            buf.draining = false;
                            break None;
                        }
                    }
                };
                (next, expired)
            };
            self.count_direct_dropped(peer, expired, "held longer than direct_buffer_ms");
            let Some(d) = next else { break };
            if h.send_direct(peer, &d).await.is_err() {
                // Down again: back in front, and wait for the next link-up.
                let mut inner = lock(&self.inner);
                let buf = inner.directs.entry(peer.to_owned()).or_default();
                buf.bytes += d.payload.len() + 64;
                buf.queue.push_front((Instant::now(), d));
                buf.draining = false;
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            tracing::info!(%peer, sent, "delivered the direct messages held while the link was down");
        }
    }

    async fn broadcast(&self, frame: &Frame) {
        let Some(h) = self.handle() else { return };
        for peer in self.up_peers() {
            if let Err(e) = h.send_control(&peer, frame).await {
                tracing::debug!(%peer, frame = frame.name(), error = %e, "control frame not sent");
            }
        }
    }

    fn up_peers(&self) -> Vec<String> {
        match self.handle() {
            Some(h) => self.peers.iter().filter(|p| h.is_up(p)).cloned().collect(),
            None => Vec::new(),
        }
    }

    async fn rescan_interest(&self) {
        let rooms = match self.store.local_interest().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "interest rescan failed");
                return;
            }
        };
        let now: BTreeSet<RoomId> = rooms.into_iter().collect();
        let (gained, lost): (Vec<RoomId>, Vec<RoomId>) = {
            let inner = lock(&self.inner);
            (
                now.difference(&inner.interest).cloned().collect(),
                inner
                    .interest
                    .difference(&now)
                    .filter(|r| !inner.withdraw.contains_key(*r))
                    .cloned()
                    .collect(),
            )
        };
        for room in gained {
            self.gain_interest(room).await;
        }
        let at = Instant::now() + self.options.interest_linger;
        let mut inner = lock(&self.inner);
        for room in lost {
            inner.withdraw.insert(room, at);
        }
    }

    async fn on_tick(&self, rescan: bool) {
        let now = Instant::now();
        // Withdrawals that are due.
        let due: Vec<RoomId> = lock(&self.inner)
            .withdraw
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for room in due {
            match self.store.purge_remote(&room).await {
                Ok(Some(_)) => {
                    {
                        let mut inner = lock(&self.inner);
                        inner.withdraw.remove(&room);
                        inner.interest.remove(&room);
                    }
                    self.broadcast(&Frame::Interest {
                        room,
                        interested: false,
                        since: None,
                    })
                    .await;
                }
                Ok(None) => {
                    lock(&self.inner).withdraw.remove(&room);
                }
                Err(e) => tracing::warn!(%room, error = %e, "cannot withdraw interest; retrying"),
            }
        }
        // Presence leases of the peers that are up, and direct messages still held for them
        // (a drain that failed half way).
        for peer in self.up_peers() {
            self.renew_presence(&peer).await;
            let waiting = lock(&self.inner)
                .directs
                .get(&peer)
                .is_some_and(|b| !b.queue.is_empty() && !b.draining);
            if waiting && self.heard_recently(&peer) {
                self.drain_directs(&peer).await;
            }
        }
        // Peers down past the grace period.
        let expired: Vec<String> = {
            let inner = lock(&self.inner);
            inner
                .down_since
                .iter()
                .filter(|(p, since)| {
                    now.duration_since(**since) >= self.options.grace
                        && !inner.declared_down.contains(*p)
                })
                .map(|(p, _)| p.clone())
                .collect()
        };
        for peer in expired {
            self.declare_down(&peer).await;
        }
        self.refollow_pending().await;
        if rescan {
            self.rescan_interest().await;
            for peer in self.up_peers() {
                self.send_interest_snapshot(&peer).await;
            }
        }
    }

    async fn declare_down(&self, peer: &str) {
        let rooms = match self.store.local_interest().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot declare the region down yet: Redis unreachable");
                return;
            }
        };
        let mut removed = 0;
        for room in &rooms {
            match self.store.region_down(room, peer).await {
                Ok(n) => removed += n,
                Err(e) => {
                    tracing::warn!(%peer, %room, error = %e, "region_down failed; retrying next tick");
                    return;
                }
            }
        }
        if let Err(e) = self.store.drop_remote_region(peer).await {
            tracing::warn!(%peer, error = %e, "cannot drop the region's presence; retrying");
            return;
        }
        let held = {
            let mut inner = lock(&self.inner);
            inner.declared_down.insert(peer.to_owned());
            inner.directs.remove(peer).map_or(0, |b| b.queue.len())
        };
        self.count_direct_dropped(peer, held as u64, "region declared down");
        if let Some(m) = self.metrics() {
            Metrics::peer_inc(&m.region_down, peer);
        }
        tracing::warn!(
            %peer,
            grace_s = self.options.grace.as_secs_f64(),
            members_removed = removed,
            rooms = rooms.len(),
            "region declared down: its members left with region_down"
        );
    }

    // ---- sending ---------------------------------------------------------------------

    fn pump_for<'a>(self: &Arc<Self>, inner: &'a mut Inner, room: &RoomId) -> &'a mut PumpEntry {
        use std::collections::hash_map::Entry;
        match inner.pumps.entry(room.clone()) {
            Entry::Occupied(e) if !e.get().tx.is_closed() => e.into_mut(),
            entry => {
                let (tx, rx) = mpsc::channel(PUMP_QUEUE);
                self.pumps.spawn(self.clone().pump(room.clone(), rx));
                let fresh = PumpEntry {
                    tx,
                    overflow: Overflow::default(),
                };
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert(fresh);
                        e.into_mut()
                    }
                    Entry::Vacant(v) => v.insert(fresh),
                }
            }
        }
    }

    fn follow(self: &Arc<Self>, peer: &str, room: &RoomId, since: Option<Position>) {
        let mut inner = lock(&self.inner);
        let followed = inner.followed.entry(peer.to_owned()).or_default();
        followed.insert(room.clone());
        let n = followed.len();
        self.pump_for(&mut inner, room)
            .offer(PumpCmd::Follow(peer.to_owned(), since));
        drop(inner);
        self.set_followed_gauge(peer, n);
    }

    fn unfollow(&self, peer: &str, room: &RoomId) {
        let mut inner = lock(&self.inner);
        let n = match inner.followed.get_mut(peer) {
            Some(set) => {
                set.remove(room);
                set.len()
            }
            None => 0,
        };
        if let Some(p) = inner.pumps.get_mut(room) {
            p.offer(PumpCmd::Unfollow(peer.to_owned()));
        }
        drop(inner);
        self.set_followed_gauge(peer, n);
    }

    fn set_followed_gauge(&self, peer: &str, n: usize) {
        if let Some(m) = self.metrics() {
            m.followed_rooms
                .get_or_create(&crate::metrics::PeerLabels { peer: peer.into() })
                .set(n as i64);
        }
    }

    /// The task that sends one room's events to the peers following it.
    async fn pump(self: Arc<Self>, room: RoomId, mut rx: mpsc::Receiver<PumpCmd>) {
        let mut followers: HashMap<String, Cursor> = HashMap::new();
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut poke = false;
            let mut cmds = vec![first];
            {
                // Under the lock no command can be queued: the channel's commands are all
                // older than the overflow's (see `PumpEntry::offer`).
                let mut inner = lock(&self.inner);
                while let Ok(c) = rx.try_recv() {
                    cmds.push(c);
                }
                if let Some(p) = inner.pumps.get_mut(&room) {
                    cmds.extend(std::mem::take(&mut p.overflow).into_cmds());
                }
            }
            let mut fresh: HashSet<String> = HashSet::new();
            let mut appended: Vec<Appended> = Vec::new();
            for cmd in cmds {
                match cmd {
                    PumpCmd::Poke => poke = true,
                    PumpCmd::Appended(a) => appended.push(a),
                    PumpCmd::Follow(peer, since) => {
                        if let Some(c) = self.start_cursor(&room, &peer, since).await {
                            followers.insert(peer.clone(), c);
                            fresh.insert(peer);
                        } else {
                            followers.remove(&peer);
                            self.forget_follow(&peer, &room);
                        }
                    }
                    PumpCmd::Unfollow(peer) => {
                        followers.remove(&peer);
                    }
                }
            }
            let peers: Vec<String> = followers
                .keys()
                .filter(|p| poke || fresh.contains(*p) || !appended.is_empty())
                .cloned()
                .collect();
            for peer in peers {
                let Some(cursor) = followers.get_mut(&peer) else {
                    continue;
                };
                if !poke && !fresh.contains(&peer) {
                    match self.send_appended(&room, &peer, cursor, &appended).await {
                        Some(true) => continue,
                        Some(false) => {}
                        None => {
                            followers.remove(&peer);
                            self.forget_follow(&peer, &room);
                            continue;
                        }
                    }
                }
                if !self.flush(&room, &peer, cursor).await {
                    // Link gone (or Redis failing): the peer re-follows from its watermark
                    // when the link is back, or at its next periodic interest snapshot.
                    followers.remove(&peer);
                    self.forget_follow(&peer, &room);
                }
            }
            if followers.is_empty() {
                let mut inner = lock(&self.inner);
                if rx.is_empty() {
                    inner.pumps.remove(&room);
                    return;
                }
            }
        }
    }

    /// Where to start sending `room` to `peer`: its resume point when this region's history
    /// still holds everything after it, else after a snapshot (sent here). `None` when the
    /// snapshot could not be sent.
    async fn start_cursor(
        &self,
        room: &RoomId,
        peer: &str,
        since: Option<Position>,
    ) -> Option<Cursor> {
        if let Some(joined) = since.and_then(|p| p.join_time()) {
            // The peer has nothing of ours yet and has had members since `joined`: replay
            // from just before then (less the clock-skew allowance), so every message
            // published here after its members joined reaches them.
            let from = joined.saturating_sub(self.options.join_skew.as_millis() as u64);
            match self.store.position_before(room, from).await {
                Ok((epoch, seq)) => {
                    return self.send_snapshot(room, peer, Some((&epoch, seq))).await;
                }
                Err(e) => {
                    tracing::warn!(%peer, %room, error = %e, "cannot find the join position; sending a snapshot as of now");
                }
            }
            return self.send_snapshot(room, peer, None).await;
        }
        if let Some(pos) = since {
            match self.store.read_local(room, pos.seq, 1).await {
                Ok(batch) => {
                    let same_epoch = epoch_code(&batch.epoch) == pos.epoch && pos.epoch != 0;
                    let reachable =
                        batch.seq == pos.seq || batch.oldest.is_some_and(|o| o <= pos.seq + 1);
                    if same_epoch && pos.seq <= batch.seq && reachable {
                        // Reconcile membership and state first (a snapshot labelled with the
                        // resume point: everything replayed after it is older and merges by
                        // last-writer-wins), then replay the history after the point.
                        return self
                            .send_snapshot(room, peer, Some((&batch.epoch, pos.seq)))
                            .await;
                    }
                    if same_epoch {
                        if let Some(m) = self.metrics() {
                            Metrics::peer_inc(&m.history_truncated, peer);
                        }
                        tracing::warn!(%peer, %room, since = pos.seq, oldest = ?batch.oldest, "history no longer reaches the peer's resume point: sending a snapshot");
                    }
                }
                Err(e) => {
                    tracing::warn!(%peer, %room, error = %e, "cannot read history; sending a snapshot");
                }
            }
        }
        self.send_snapshot(room, peer, None).await
    }

    /// Sends the room's snapshot, as of its position now, or labelled with `at` (an earlier
    /// position of the same epoch: the follower's resume point) when given. Returns the
    /// cursor the pump continues from.
    async fn send_snapshot(
        &self,
        room: &RoomId,
        peer: &str,
        at: Option<(&str, u64)>,
    ) -> Option<Cursor> {
        let snap = match self.store.snapshot(room).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, %room, error = %e, "cannot take a room snapshot");
                return None;
            }
        };
        let label = match at {
            Some((epoch, seq)) if epoch == snap.epoch && seq <= snap.seq => seq,
            _ => snap.seq,
        };
        let event = RoomEvent {
            room: room.clone(),
            origin_region: self.region().to_owned(),
            origin_epoch: epoch_code(&snap.epoch),
            origin_seq: label,
            prev_seq: 0,
            hlc: snap.stamp,
            kind: EventKind::Snapshot(Snapshot {
                members: snap.members,
                state: snap.state,
            }),
        };
        let h = self.handle()?;
        if let Err(e) = h.send_room_event(peer, &event).await {
            tracing::debug!(%peer, %room, error = %e, "snapshot not sent");
            return None;
        }
        if let Some(m) = self.metrics() {
            Metrics::peer_inc(&m.snapshots_sent, peer);
        }
        Some(Cursor {
            epoch: snap.epoch,
            seq: label,
            prev: label,
        })
    }

    /// The fast path: sends `appended` (in order, as the room channel delivered them) to a
    /// follower whose cursor they continue, without reading the history. Room messages and
    /// entries replicated from elsewhere (skipped) qualify; member and state events need the
    /// stored HLC stamp, so they end the fast path. `Some(true)`: the follower is up to date;
    /// `Some(false)`: read the history instead; `None`: drop the follower (link gone).
    async fn send_appended(
        &self,
        room: &RoomId,
        peer: &str,
        cursor: &mut Cursor,
        appended: &[Appended],
    ) -> Option<bool> {
        let h = self.handle()?;
        for a in appended {
            if a.epoch != cursor.epoch {
                return Some(false);
            }
            if a.seq <= cursor.seq {
                continue;
            }
            if a.seq != cursor.seq + 1 {
                return Some(false);
            }
            let Ok(decoded) = RoomEventFrame::decode(&a.frame) else {
                return Some(false);
            };
            if decoded.origin.is_some() {
                // Replicated from another region: never sent on.
                cursor.seq = a.seq;
                continue;
            }
            let RoomEventKind::Message { from, data, .. } = decoded.kind else {
                return Some(false);
            };
            let event = RoomEvent {
                room: room.clone(),
                origin_region: self.region().to_owned(),
                origin_epoch: epoch_code(&a.epoch),
                origin_seq: a.seq,
                prev_seq: cursor.prev,
                // A message's stamp only advances the receiver's clock; the channel does not
                // carry the stored one, and now is never behind it.
                hlc: Hlc {
                    wall_ms: now_ms(),
                    logical: 0,
                },
                kind: EventKind::Event(RoomEventKind::Message {
                    from,
                    data,
                    idempotency: a.idempotency.clone(),
                }),
            };
            cursor.seq = a.seq;
            match h.send_room_event(peer, &event).await {
                Ok(()) => cursor.prev = a.seq,
                Err(crate::link::SendError::Frame(e)) => {
                    tracing::warn!(%room, %peer, seq = a.seq, error = %e, "event cannot be replicated");
                }
                Err(e) => {
                    tracing::debug!(%room, %peer, error = %e, "follower dropped");
                    return None;
                }
            }
        }
        Some(true)
    }

    /// Sends `peer` everything of `room` after its cursor. False when the peer must be
    /// dropped (link gone or Redis failing).
    async fn flush(&self, room: &RoomId, peer: &str, cursor: &mut Cursor) -> bool {
        let Some(h) = self.handle() else { return false };
        loop {
            let batch = match self
                .store
                .read_local(room, cursor.seq, self.options.batch)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%room, %peer, error = %e, "cannot read history");
                    return false;
                }
            };
            let trimmed =
                batch.oldest.is_some_and(|o| o > cursor.seq + 1) && batch.seq > cursor.seq;
            if batch.epoch != cursor.epoch || trimmed || batch.seq < cursor.seq {
                // The room restarted or the follower fell behind the history: start over.
                if trimmed {
                    if let Some(m) = self.metrics() {
                        Metrics::peer_inc(&m.history_truncated, peer);
                    }
                }
                match self.send_snapshot(room, peer, None).await {
                    Some(c) => {
                        *cursor = c;
                        continue;
                    }
                    None => return false,
                }
            }
            let full = batch.entries.len() >= self.options.batch;
            for entry in &batch.entries {
                cursor.seq = entry.seq;
                if entry.origin.is_some() {
                    continue;
                }
                let Some(kind) = core::outgoing_kind(entry, self.region()) else {
                    continue;
                };
                let event = RoomEvent {
                    room: room.clone(),
                    origin_region: self.region().to_owned(),
                    origin_epoch: epoch_code(&batch.epoch),
                    origin_seq: entry.seq,
                    prev_seq: cursor.prev,
                    hlc: entry.stamp,
                    kind: EventKind::Event(kind),
                };
                match h.send_room_event(peer, &event).await {
                    Ok(()) => cursor.prev = entry.seq,
                    Err(crate::link::SendError::Frame(e)) => {
                        // Too large for a relay frame: cannot be sent at all; the follower
                        // sees a gap, asks again, and gets a snapshot past it.
                        tracing::warn!(%room, %peer, seq = entry.seq, error = %e, "event cannot be replicated");
                    }
                    Err(e) => {
                        tracing::debug!(%room, %peer, error = %e, "follower dropped");
                        return false;
                    }
                }
            }
            if !full {
                return true;
            }
        }
    }

    // ---- receiving -------------------------------------------------------------------

    async fn ask_again(&self, peer: &str, room: &RoomId) {
        let key = (peer.to_owned(), room.clone());
        {
            let mut inner = lock(&self.inner);
            if !inner.interest.contains(room) {
                return;
            }
            let now = Instant::now();
            match inner.gap_asked.get(&key) {
                Some(at) if now.duration_since(*at) < self.options.gap_retry => return,
                _ => {
                    inner.gap_asked.insert(key, now);
                }
            }
        }
        self.announce(peer, room).await;
    }

    /// The peer's complete interest: rooms not listed are unfollowed, listed rooms not being
    /// sent to it are followed from their `since`; rooms already flowing are left alone. Sent
    /// on every link-up (when nothing flows yet) and every `rescan` (anti-entropy: a follow
    /// lost anywhere is re-established within one period).
    async fn on_interest_snapshot(self: &Arc<Self>, peer: &str, rooms: Vec<Follow>) {
        let listed: BTreeSet<RoomId> = rooms.iter().map(|f| f.room.clone()).collect();
        let (stale, flowing): (Vec<RoomId>, BTreeSet<RoomId>) = {
            let inner = lock(&self.inner);
            match inner.followed.get(peer) {
                Some(s) => (s.difference(&listed).cloned().collect(), s.clone()),
                None => (Vec::new(), BTreeSet::new()),
            }
        };
        for room in stale {
            self.unfollow(peer, &room);
        }
        for f in rooms {
            if !flowing.contains(&f.room) {
                self.follow(peer, &f.room, f.since);
            }
        }
    }

    /// A pump dropped `peer` as a follower of `room` (send or read failed): forget the follow,
    /// so the peer's next interest snapshot starts it again.
    fn forget_follow(&self, peer: &str, room: &RoomId) {
        let n = {
            let mut inner = lock(&self.inner);
            match inner.followed.get_mut(peer) {
                Some(set) => {
                    set.remove(room);
                    set.len()
                }
                None => 0,
            }
        };
        self.set_followed_gauge(peer, n);
    }

    /// Sends `peer` this region's whole interest with the resume point of each room.
    async fn send_interest_snapshot(&self, peer: &str) {
        let Some(h) = self.handle() else { return };
        let rooms: Vec<RoomId> = lock(&self.inner).interest.iter().cloned().collect();
        // Without the resume points, sending nothing is safer than asking for snapshots as
        // of now (which would skip what lies between): the next period tries again.
        let Some(points) = self.resume_points(peer, &rooms).await else {
            return;
        };
        let follows = rooms
            .into_iter()
            .zip(points)
            .map(|(room, since)| Follow { room, since })
            .collect();
        if let Err(e) = h
            .send_control(peer, &Frame::InterestSnapshot { rooms: follows })
            .await
        {
            tracing::debug!(%peer, error = %e, "interest snapshot not sent");
        }
    }

    async fn link_up(&self, peer: &str) {
        let back = {
            let mut inner = lock(&self.inner);
            inner.down_since.remove(peer);
            inner.declared_down.remove(peer)
        };
        if back {
            tracing::info!(%peer, "region is back");
        }
        let Some(h) = self.handle() else { return };
        // Everything this region follows, with where to resume.
        self.send_interest_snapshot(peer).await;
        match self.store.local_online().await {
            Ok(online) => {
                let p = Presence {
                    reset: true,
                    online,
                    offline: Vec::new(),
                };
                if let Err(e) = h.send_control(peer, &Frame::Presence(p)).await {
                    tracing::debug!(%peer, error = %e, "presence snapshot not sent");
                }
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot read local presence"),
        }
        self.renew_presence(peer).await;
        self.drain_directs(peer).await;
    }

    /// Extends the lease of `peer`'s users here to `presence_ttl` after the last packet heard
    /// from its relay: a region that dies (or is cut off) has its users hidden from
    /// `presence` within `presence_ttl`, without waiting for the link to be declared down.
    async fn renew_presence(&self, peer: &str) {
        let Some(h) = self.handle() else { return };
        let Some(heard) = h.last_heard(peer) else {
            return;
        };
        let Some(left) = self.options.presence_ttl.checked_sub(heard.elapsed()) else {
            return;
        };
        if left < Duration::from_millis(1) {
            return;
        }
        if let Err(e) = self.store.renew_remote_region(peer, left).await {
            tracing::debug!(%peer, error = %e, "cannot renew the peer's presence lease");
        }
    }

    fn link_down(&self, peer: &str) {
        let mut inner = lock(&self.inner);
        inner
            .down_since
            .entry(peer.to_owned())
            .or_insert_with(Instant::now);
        // The peer re-follows from its watermarks when it is back.
        if let Some(rooms) = inner.followed.remove(peer) {
            for room in rooms {
                if let Some(p) = inner.pumps.get_mut(&room) {
                    p.offer(PumpCmd::Unfollow(peer.to_owned()));
                }
            }
        }
        drop(inner);
        self.set_followed_gauge(peer, 0);
    }
}

/// The links call the replicator through this wrapper (the sink is needed before the links
/// start, the replicator's `Arc` methods after).
#[derive(Debug)]
pub struct ReplicatorSink(pub Arc<Replicator>);

#[async_trait]
impl EventSink for ReplicatorSink {
    async fn room_event(&self, peer: &str, event: RoomEvent) {
        let r = &self.0;
        if event.origin_region != peer {
            // A relay only sends what originated in its own region.
            if let Some(m) = r.metrics() {
                m.malformed(peer);
            }
            tracing::warn!(%peer, origin = %event.origin_region, "dropping a forwarded event: peers may only send their own region's events");
            return;
        }
        let room = event.room.clone();
        // Client JSON inside was checked when the frame was decoded (a frame with bad JSON is
        // malformed and never gets here).
        let outcome = match r.store.apply(&event).await {
            Ok(Applied::Applied) => "applied",
            Ok(Applied::Duplicate) => "duplicate",
            Ok(Applied::Superseded) => "superseded",
            Ok(Applied::Gap) => "gap",
            Err(e) => {
                tracing::warn!(%peer, %room, error = %e, "cannot apply a replicated event");
                "error"
            }
        };
        if let Some(m) = r.metrics() {
            m.applied(peer, outcome);
        }
        if outcome == "gap" || outcome == "error" {
            r.ask_again(peer, &room).await;
        }
    }

    async fn direct(&self, peer: &str, direct: Direct) {
        match self
            .0
            .store
            .deliver_direct(&direct.to_user, &direct.payload)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%peer, to = %direct.to_user, "direct message for a user no longer here");
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot deliver a direct message"),
        }
    }

    async fn control(&self, peer: &str, frame: Frame) {
        let r = &self.0;
        match frame {
            Frame::Interest {
                room,
                interested: true,
                since,
            } => r.follow(peer, &room, since),
            Frame::Interest {
                room,
                interested: false,
                ..
            } => r.unfollow(peer, &room),
            Frame::InterestSnapshot { rooms } => r.on_interest_snapshot(peer, rooms).await,
            Frame::Presence(p) => {
                if let Err(e) = r
                    .store
                    .set_remote_presence(peer, &p.online, &p.offline, p.reset)
                    .await
                {
                    tracing::warn!(%peer, error = %e, "cannot record the peer's presence");
                }
            }
            _ => {}
        }
    }

    async fn link(&self, peer: &str, event: LinkEvent) {
        match event {
            LinkEvent::Up { .. } => self.0.link_up(peer).await,
            LinkEvent::Down { .. } => self.0.link_down(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use region_state::replica::LocalEntry;

    #[test]
    fn a_full_pump_channel_merges_commands_instead_of_losing_them() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut pump = PumpEntry {
            tx,
            overflow: Overflow::default(),
        };
        let appended = |seq| {
            PumpCmd::Appended(Appended {
                seq,
                epoch: "e".into(),
                frame: Bytes::new(),
                idempotency: None,
            })
        };
        pump.offer(appended(1));
        pump.offer(appended(2)); // full: becomes a history read
        pump.offer(PumpCmd::Follow("us".into(), None));
        pump.offer(PumpCmd::Unfollow("us".into())); // the last change per peer wins
        pump.offer(PumpCmd::Follow("ap".into(), None));
        assert!(matches!(rx.try_recv(), Ok(PumpCmd::Appended(a)) if a.seq == 1));
        // Room in the channel again, but older commands wait in the overflow: keep the order.
        pump.offer(appended(3));
        assert!(rx.try_recv().is_err());
        let cmds = std::mem::take(&mut pump.overflow).into_cmds();
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(matches!(&cmds[0], PumpCmd::Follow(p, None) if p == "ap"));
        assert!(matches!(&cmds[1], PumpCmd::Unfollow(p) if p == "us"));
        assert!(matches!(cmds[2], PumpCmd::Poke));
        // Drained: the channel takes commands again.
        pump.offer(appended(4));
        assert!(matches!(rx.try_recv(), Ok(PumpCmd::Appended(a)) if a.seq == 4));
    }

    fn outgoing(entry: &LocalEntry, region: &str) -> Option<EventKind> {
        core::outgoing_kind(entry, region).map(EventKind::Event)
    }

    fn entry(frame: &str) -> LocalEntry {
        LocalEntry {
            seq: 1,
            stamp: Hlc::default(),
            origin: None,
            frame: Bytes::copy_from_slice(frame.as_bytes()),
            idempotency: None,
        }
    }

    #[test]
    fn history_entries_become_relay_events() {
        let e = entry(
            r#"{"type":"message","room":"r","from":"bob","data":{"t":1},"seq":1,"epoch":"e"}"#,
        );
        assert_eq!(
            outgoing(&e, "eu"),
            Some(EventKind::Event(RoomEventKind::Message {
                from: UserId::new("bob").unwrap(),
                data: meridian_protocol::JsonText::new(r#"{"t":1}"#).unwrap(),
                idempotency: None,
            }))
        );
        let j =
            entry(r#"{"type":"joined","room":"r","user":"a","region":"eu","seq":2,"epoch":"e"}"#);
        assert_eq!(
            outgoing(&j, "eu"),
            Some(EventKind::Event(RoomEventKind::Joined {
                user: UserId::new("a").unwrap()
            }))
        );
        // A member event of a user homed elsewhere is not this region's to send.
        assert_eq!(outgoing(&j, "us"), None);
        let l = entry(
            r#"{"type":"left","room":"r","user":"a","region":"eu","reason":"node_lost","seq":3,"epoch":"e"}"#,
        );
        assert!(
            matches!(outgoing(&l, "eu"), Some(EventKind::Event(RoomEventKind::Left { reason, .. })) if reason == meridian_protocol::LeftReason::NodeLost)
        );
        let d = entry(
            r#"{"type":"state_changed","room":"r","key":"k","value":null,"by":"a","version":2,"seq":4,"epoch":"e"}"#,
        );
        assert!(matches!(
            outgoing(&d, "eu"),
            Some(EventKind::Event(RoomEventKind::StateDelete { .. }))
        ));
        let s = entry(
            r#"{"type":"state_changed","room":"r","key":"k","value":[1],"by":"a","version":1,"seq":5,"epoch":"e"}"#,
        );
        assert!(
            matches!(outgoing(&s, "eu"), Some(EventKind::Event(RoomEventKind::StateSet { value, .. })) if value.get() == "[1]")
        );
        assert_eq!(outgoing(&entry("not json"), "eu"), None);
        assert_eq!(
            outgoing(&entry(r#"{"type":"message","room":"r"}"#), "eu"),
            None
        );
    }

    #[test]
    fn replicated_frames_are_told_apart_by_their_origin() {
        let local = RoomEventFrame::decode(
            br#"{"type":"message","room":"r","from":"b","data":1,"seq":1,"epoch":"e"}"#,
        )
        .unwrap();
        assert!(local.origin.is_none());
        let remote = RoomEventFrame::decode(
            br#"{"type":"message","room":"r","from":"b","data":1,"origin":{"region":"eu","epoch":"x","seq":3},"seq":2,"epoch":"e"}"#,
        )
        .unwrap();
        assert!(remote.origin.is_some());
        // An `origin` inside the client's data is not the event's.
        let planted = RoomEventFrame::decode(
            br#"{"type":"message","room":"r","from":"b","data":{"origin":{"region":"eu","epoch":"x","seq":3}},"seq":2,"epoch":"e"}"#,
        )
        .unwrap();
        assert!(planted.origin.is_none());
    }

    #[test]
    fn received_events_with_bad_json_are_refused() {
        let ev = RoomEvent {
            room: RoomId::new("r").unwrap(),
            origin_region: "eu".into(),
            origin_epoch: epoch_code("k3v9x0qa"),
            origin_seq: 4,
            prev_seq: 2,
            hlc: Hlc::default(),
            kind: EventKind::Event(RoomEventKind::Message {
                from: UserId::new("bob").unwrap(),
                data: meridian_protocol::JsonText::new("{\"a\":1}").unwrap(),
                idempotency: None,
            }),
        };
        // Bad JSON cannot reach the store: the frame carrying it does not decode.
        let good =
            meridian_protocol::relay::encode(&Frame::RoomEvent(ev.clone()), 1 << 20).unwrap();
        let mut bad = good[4..].to_vec();
        let at = bad.windows(7).position(|w| w == b"{\"a\":1}").unwrap();
        bad[at..at + 7].copy_from_slice(b"{not js");
        assert!(meridian_protocol::relay::decode(&bad).is_err());
        assert_eq!(
            meridian_protocol::relay::decode(&good[4..]).unwrap(),
            Frame::RoomEvent(ev.clone())
        );
        assert_eq!(
            meridian_protocol::relay::epoch_text(ev.origin_epoch),
            "k3v9x0qa"
        );
    }
}
