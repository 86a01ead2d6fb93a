//! The inter-region relay's side of a region's Redis: reading what this region published (to
//! send it to other regions) and writing what other regions published (so local nodes serve
//! it like local events). Same key schema and the same `append` as the nodes' store
//! ([`crate::RedisStore`]); see `docs/redis-schema.md` ("Replication").
//!
//! - **Origin marking.** A replicated event is appended with history field
//!   `o = "<region> <epoch> <seq>"` and an `"origin"` object in its frame; the relay reads
//!   only entries without `o` when sending, so an event is never sent back or forwarded.
//! - **Dedupe.** `mr:{room}:rw` holds, per origin region, the last `(epoch, seq)` applied; the
//!   apply script drops anything at or below it, atomically with the append, so a relay
//!   takeover or a replay cannot apply an event twice.
//! - **Last writer wins.** Membership changes and state keys carry a hybrid-logical-clock
//!   stamp with the writer's region (`mr:{room}:mh`, `mr:{room}:sh`); a replicated write
//!   older than the stored one is dropped, so every region converges on the same value.
//!
//! The same rules in Rust: [`model::ReplicaModel`]; both pass `conformance::run_all`
//! (feature `test-support`) through [`ReplicaApply`]. (Over the ~700-line aim: one Redis
//! method per relay need, plus the pub/sub feed; the feed could move to its own file.)

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
pub mod model;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::link::{LinkConn, PrimaryLink, RedisEndpoint, Resolver};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use meridian_protocol::{JsonText, OriginPosition, RoomEventFrame, RoomEventKind, RoomId, UserId};
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use tokio::sync::mpsc;

use crate::scripts::{
    entry_seq, history_after, k, room_of_channel, stored_entries, RoomArgs, RoomKeys, Scripts,
    INTEREST_CHANNEL, PRESENCE_CHANNEL, RELAY_NODE_PREFIX,
};
use crate::{now_ms, StoreResult};

/// Room epochs as relay frames carry them (text here, a number on the wire).
pub use meridian_protocol::relay::{epoch_code, epoch_text};
/// One key of a room's state with its last-writer-wins stamp (the protocol's one record), and
/// the hybrid logical clock of every stamp here: its text form (`"%013d.%05d"`) is what the
/// scripts store, so stamps compare as strings.
pub use meridian_protocol::{Hlc, StateRecord};

/// A room event published in another region, to apply here: the relay frame itself (the
/// protocol's one vocabulary, [`RoomEventKind`] or a [`Snapshot`], with the one [`Hlc`] and
/// [`StateRecord`]). The origin's epoch travels as a number; the store keeps it as text
/// ([`epoch_text`]).
pub use meridian_protocol::relay::RoomEvent as RemoteEvent;
/// What a replicated event says, and the origin's share of a room.
pub use meridian_protocol::relay::{EventKind, Snapshot};

/// What applying a replicated event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written and fanned out here.
    Applied,
    /// At or below the origin's watermark: already applied (a replay or a takeover).
    Duplicate,
    /// A newer write (membership or state key) won; the watermark moved on.
    Superseded,
    /// The origin's watermark here is not the event's predecessor (`prev_seq`), or there is
    /// none and the event is not a snapshot: nothing was written; ask the origin again.
    Gap,
}

/// One entry of this region's room history, as the relay reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalEntry {
    /// Room sequence number here.
    pub seq: u64,
    /// HLC stamp given when it was appended.
    pub stamp: Hlc,
    /// `Some("<region> <epoch> <seq>")` when it was replicated from another region.
    pub origin: Option<String>,
    /// The client frame.
    pub frame: Bytes,
    /// A publish's `<user>|<key>` idempotency id, when it had one.
    pub idempotency: Option<String>,
}

/// History entries after a position, with the room's current position.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalBatch {
    /// The room's current epoch (`""` when it has none).
    pub epoch: String,
    /// The room's current sequence number.
    pub seq: u64,
    /// The oldest sequence number the history still holds.
    pub oldest: Option<u64>,
    /// The entries, in order.
    pub entries: Vec<LocalEntry>,
}

/// This region's share of a room, for a region that starts following it.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    /// The room's epoch.
    pub epoch: String,
    /// The position the snapshot reflects: events after it follow.
    pub seq: u64,
    /// The room clock when it was taken.
    pub stamp: Hlc,
    /// Users homed here.
    pub members: Vec<(UserId, Hlc)>,
    /// Every state key (tombstones included).
    pub state: Vec<StateRecord>,
}

/// Something the relay's pub/sub feed saw.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Feed {
    /// A room event was appended here (local or replicated); the relay reads the history.
    Room {
        /// The room.
        room: RoomId,
        /// Its sequence number.
        seq: u64,
        /// The room's epoch.
        epoch: String,
        /// The client frame as appended.
        frame: Bytes,
        /// A publish's `<user>|<key>` idempotency id, when it had one.
        idempotency: Option<String>,
    },
    /// A room gained its first (`true`) or lost its last (`false`) local member.
    Interest {
        /// The room.
        room: RoomId,
        /// Whether it has local members now.
        local_members: bool,
    },
    /// A user's first (`true`) or last (`false`) connection in this region.
    Presence {
        /// The user.
        user: UserId,
        /// Whether the user is connected here now.
        online: bool,
    },
    /// A node handed a direct message for a user connected in `region`.
    Direct {
        /// The region holding the user.
        region: String,
        /// The user.
        to: UserId,
        /// The client frame (`{"type":"direct",...}`).
        frame: Bytes,
    },
    /// The feed reconnected: messages may have been missed; rescan.
    Resynced,
}

pub use model::{MemoryReplica, ReplicaModel};

/// The apply rules of a region's replica, as the relay uses them: [`ReplicaStore`] runs them
/// in Redis (the Lua scripts), [`MemoryReplica`] in the Rust reference model
/// ([`model::ReplicaModel`]). Both pass [`conformance::run_all`].
#[async_trait]
pub trait ReplicaApply: Send + Sync {
    /// This region.
    fn region(&self) -> &str;
    /// Applies one replicated event: dedupe on the origin's watermark, `prev_seq` gaps,
    /// last-writer-wins for membership and state, then the history append.
    async fn apply(&self, event: &RemoteEvent) -> StoreResult<Applied>;
    /// Applies events in order with the outcomes one [`ReplicaApply::apply`] after the other
    /// would give (the Redis store sends them in one round trip).
    async fn apply_batch(&self, events: &[RemoteEvent]) -> StoreResult<Vec<Applied>> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            out.push(self.apply(event).await?);
        }
        Ok(out)
    }
    /// The last `(epoch, seq)` applied from `origin` in each room (`None`: nothing yet).
    async fn watermarks(
        &self,
        origin: &str,
        rooms: &[RoomId],
    ) -> StoreResult<Vec<Option<(String, u64)>>>;
    /// `region` was declared down: its members leave `room` with `region_down`.
    async fn region_down(&self, room: &RoomId, region: &str) -> StoreResult<usize>;
    /// Up to `count` history entries after `after`, with the room's position.
    async fn read_local(&self, room: &RoomId, after: u64, count: usize) -> StoreResult<LocalBatch>;
    /// This region's members of the room and the room state, with the position.
    async fn snapshot(&self, room: &RoomId) -> StoreResult<RoomSnapshot>;
    /// Every member of the room (all regions) with its home region, sorted by user.
    async fn members(&self, room: &RoomId) -> StoreResult<Vec<(UserId, String)>>;
}

#[async_trait]
impl ReplicaApply for ReplicaStore {
    fn region(&self) -> &str {
        ReplicaStore::region(self)
    }
    async fn apply(&self, event: &RemoteEvent) -> StoreResult<Applied> {
        ReplicaStore::apply(self, event).await
    }
    async fn apply_batch(&self, events: &[RemoteEvent]) -> StoreResult<Vec<Applied>> {
        ReplicaStore::apply_batch(self, events).await
    }
    async fn watermarks(
        &self,
        origin: &str,
        rooms: &[RoomId],
    ) -> StoreResult<Vec<Option<(String, u64)>>> {
        ReplicaStore::watermarks(self, origin, rooms).await
    }
    async fn region_down(&self, room: &RoomId, region: &str) -> StoreResult<usize> {
        ReplicaStore::region_down(self, room, region).await
    }
    async fn read_local(&self, room: &RoomId, after: u64, count: usize) -> StoreResult<LocalBatch> {
        ReplicaStore::read_local(self, room, after, count).await
    }
    async fn snapshot(&self, room: &RoomId) -> StoreResult<RoomSnapshot> {
        ReplicaStore::snapshot(self, room).await
    }
    async fn members(&self, room: &RoomId) -> StoreResult<Vec<(UserId, String)>> {
        let keys = RoomKeys::new(room);
        let reg: std::collections::HashMap<String, String> =
            self.conn().hgetall(&keys.keys[k::REG]).await?;
        let mut out: Vec<(UserId, String)> = reg
            .into_iter()
            .filter_map(|(u, h)| Some((UserId::new(u).ok()?, h)))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Where the relay's Redis is and the room settings the region's nodes use.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The region's primary: a URL, or Sentinel addresses and a master name (followed across
    /// failovers, as the nodes' store does).
    pub endpoint: RedisEndpoint,
    /// This region.
    pub region: String,
    /// The nodes' `history.len`.
    pub history_len: u32,
    /// The nodes' `history.ttl_secs`.
    pub history_ttl: Duration,
    /// The nodes' `history.idempotency_window_secs`.
    pub idempotency_window: Duration,
}

/// Index of `mr:{room}:mh` (membership stamps) in the room's keys.
const MH: usize = 9;

/// The lease key naming the region's active relay.
pub const ACTIVE_RELAY_KEY: &str = "meridian:relay:active";

/// The relay's handle on its region's Redis.
#[derive(Clone)]
pub struct ReplicaStore {
    resolver: Arc<Resolver>,
    link: Arc<PrimaryLink>,
    args: RoomArgs,
    scripts: Arc<Scripts>,
    lease: crate::lease::LeaseScripts,
    idempotency_window_ms: u64,
}

impl fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("region", &self.args.region)
            .finish()
    }
}

fn relay_node(region: &str) -> String {
    format!("{RELAY_NODE_PREFIX}{region}")
}
fn user_conns_key(user: &UserId) -> String {
    format!("mu:{{{user}}}:conns")
}

fn parse_state(raw: &[String]) -> Vec<StateRecord> {
    raw.chunks_exact(3)
        .filter_map(|c| {
            let value = if c[1].is_empty() {
                None
            } else {
                Some(JsonText::new(c[1].clone()).ok()?)
            };
            let mut parts = c[2].splitn(3, '|');
            let stamp = Hlc::parse(parts.next()?)?;
            let region = parts.next()?.to_owned();
            let by = UserId::new(parts.next()?).ok()?;
            Some(StateRecord {
                key: c[0].clone(),
                value,
                hlc: stamp,
                region,
                by,
            })
        })
        .collect()
}

impl ReplicaStore {
    /// Connects to the primary (start-up fails if it cannot be reached). Like the nodes'
    /// store it resolves the primary again on every reconnect and, with Sentinel, leaves a
    /// server that Sentinel no longer names primary within a second; the feed follows.
    pub async fn connect(config: ReplicaConfig) -> StoreResult<Self> {
        let resolver = Arc::new(Resolver::new(config.endpoint.clone())?);
        let link = Arc::new(
            PrimaryLink::connect(resolver.clone(), "relay", Duration::from_secs(2)).await?,
        );
        if resolver.is_sentinel() {
            tokio::spawn(crate::link::follow_primary(
                resolver.clone(),
                vec![Arc::downgrade(&link)],
                Duration::from_secs(1),
            ));
        }
        Ok(Self {
            resolver,
            link,
            args: RoomArgs {
                history_len: config.history_len,
                history_ttl_ms: config.history_ttl.as_millis() as u64,
                region: config.region,
            },
            scripts: Arc::new(Scripts::new()),
            lease: crate::lease::LeaseScripts::default(),
            idempotency_window_ms: config.idempotency_window.as_millis().max(1) as u64,
        })
    }

    fn conn(&self) -> LinkConn {
        LinkConn::new(self.link.clone())
    }

    /// This region.
    pub fn region(&self) -> &str {
        &self.args.region
    }

    /// Checks Redis answers.
    pub async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    // ---- the region's active relay -------------------------------------------------------

    /// Takes or extends the active-relay lease for `relay_id`; false while another relay
    /// holds it.
    pub async fn hold_active(&self, relay_id: &str, ttl: Duration) -> StoreResult<bool> {
        let mut conn = self.conn();
        Ok(self
            .lease
            .hold(&mut conn, ACTIVE_RELAY_KEY, relay_id, ttl)
            .await?)
    }

    /// Gives the lease up (graceful stop), so the standby takes over at once.
    pub async fn release_active(&self, relay_id: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        Ok(self
            .lease
            .release(&mut conn, ACTIVE_RELAY_KEY, relay_id)
            .await?)
    }

    // ---- receiving: events from other regions --------------------------------------------

    /// Applies one replicated event: dedupe on the origin's watermark, last-writer-wins for
    /// membership and state, then the same append (history + fan-out) as a local event.
    pub async fn apply(&self, event: &RemoteEvent) -> StoreResult<Applied> {
        let (status,): (i64,) = self
            .apply_invocation(event)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(applied(status))
    }

    /// Applies events one after the other, as [`ReplicaStore::apply`] would, in one round trip
    /// (a pipeline of the apply script: each call is atomic on its own, as one at a time).
    /// After a Redis restart the script cache is empty: the whole pipeline then fails with
    /// NOSCRIPT before any call ran, and is sent again behind a `SCRIPT LOAD`.
    pub async fn apply_batch(&self, events: &[RemoteEvent]) -> StoreResult<Vec<Applied>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let invocations: Vec<_> = events.iter().map(|e| self.apply_invocation(e)).collect();
        let mut pipe = redis::pipe();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let rows: Vec<(i64,)> = match pipe.query_async(&mut self.conn()).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut pipe = redis::pipe();
                pipe.load_script(&self.scripts.apply).ignore();
                for inv in &invocations {
                    pipe.invoke_script(inv);
                }
                pipe.query_async(&mut self.conn()).await?
            }
            other => other?,
        };
        if rows.len() != events.len() {
            return Err(crate::StoreError::Corrupt(format!(
                "apply pipeline returned {} results for {} events",
                rows.len(),
                events.len()
            )));
        }
        Ok(rows.into_iter().map(|(status,)| applied(status)).collect())
    }

    /// The apply script's call for `event`.
    fn apply_invocation<'a>(&'a self, event: &RemoteEvent) -> redis::ScriptInvocation<'a> {
        let keys = RoomKeys::new(&event.room);
        let origin = OriginPosition {
            region: event.origin_region.clone(),
            epoch: epoch_text(event.origin_epoch),
            seq: event.origin_seq,
        };
        let origin = &origin;
        let mut inv = self.args.invoke(&self.scripts.apply, &keys);
        inv.arg(&origin.region)
            .arg(&origin.epoch)
            .arg(origin.seq)
            .arg(event.hlc.to_string());
        let room = &event.room;
        let kind = match &event.kind {
            EventKind::Event(RoomEventKind::Joined { .. }) => "join",
            EventKind::Event(RoomEventKind::Left { .. }) => "leave",
            EventKind::Event(RoomEventKind::Message { .. }) => "message",
            EventKind::Event(RoomEventKind::StateSet { .. }) => "set",
            EventKind::Event(RoomEventKind::StateDelete { .. }) => "delete",
            EventKind::Snapshot(_) => "snapshot",
        };
        inv.arg(kind).arg(room.as_str()).arg(event.prev_seq);
        match &event.kind {
            EventKind::Event(RoomEventKind::Joined { user }) => {
                inv.arg(user.as_str());
            }
            EventKind::Event(RoomEventKind::Left { user, reason }) => {
                inv.arg(user.as_str()).arg(reason.as_str());
            }
            EventKind::Event(RoomEventKind::Message {
                from,
                data,
                idempotency,
            }) => {
                let head = RoomEventFrame::message(room, from, data.as_raw()).with_origin(origin);
                inv.arg(head.head())
                    .arg(idempotency.as_deref().unwrap_or(""))
                    .arg(self.idempotency_window_ms);
            }
            EventKind::Event(RoomEventKind::StateSet { key, value, by }) => {
                let head = RoomEventFrame::state_changed(room, key, Some(value.as_raw()), by)
                    .with_origin(origin);
                inv.arg(key)
                    .arg(value.get())
                    .arg(by.as_str())
                    .arg(head.head());
            }
            EventKind::Event(RoomEventKind::StateDelete { key, by }) => {
                let head = RoomEventFrame::state_changed(room, key, None, by).with_origin(origin);
                inv.arg(key).arg(by.as_str()).arg(head.head());
            }
            EventKind::Snapshot(Snapshot { members, state }) => {
                inv.arg(members.len());
                for (user, stamp) in members {
                    inv.arg(user.as_str()).arg(stamp.to_string());
                }
                inv.arg(state.len());
                for r in state {
                    let head = RoomEventFrame::state_changed(
                        room,
                        &r.key,
                        r.value.as_ref().map(JsonText::as_raw),
                        &r.by,
                    )
                    .with_origin(origin);
                    inv.arg(&r.key)
                        .arg(r.value.as_ref().map_or("", |v| v.get()))
                        .arg(format!("{}|{}|{}", r.hlc, r.region, r.by))
                        .arg(head.head());
                }
            }
        }
        inv
    }

    /// The last `(epoch, seq)` applied from `origin` in each room (`None`: nothing yet).
    pub async fn watermarks(
        &self,
        origin: &str,
        rooms: &[RoomId],
    ) -> StoreResult<Vec<Option<(String, u64)>>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.hget(&RoomKeys::new(room).keys[k::RW], origin);
        }
        let marks: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(marks
            .into_iter()
            .map(|m| {
                let m = m?;
                let (epoch, seq) = m.split_once(' ')?;
                Some((epoch.to_owned(), seq.parse().ok()?))
            })
            .collect())
    }

    /// Drops the room's replica (remote members, watermarks) once no local member is left.
    /// `None` when a local member is back (keep the interest).
    pub async fn purge_remote(&self, room: &RoomId) -> StoreResult<Option<usize>> {
        let keys = RoomKeys::new(room);
        let inv = self.args.invoke(&self.scripts.purge, &keys);
        let n: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(usize::try_from(n).ok())
    }

    /// `region` was declared down: removes its members from `room` with
    /// `left {reason: region_down}` (a member connected here stays, homed here). Returns the
    /// users removed.
    pub async fn region_down(&self, room: &RoomId, region: &str) -> StoreResult<usize> {
        let keys = RoomKeys::new(room);
        let mut inv = self.args.invoke(&self.scripts.region_down, &keys);
        inv.arg(region).arg(room.as_str());
        let n: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The oldest position of `origin`'s own events in `room` that a client resuming here
    /// has seen (recorded by the node before the join, see `StateStore::want_replay`), as
    /// `(epoch, seq)`; `None` when no resumer asked in the last two minutes.
    pub async fn wanted_position(
        &self,
        room: &RoomId,
        origin: &str,
    ) -> StoreResult<Option<(String, u64)>> {
        let v: Option<String> = redis::cmd("HGET")
            .arg(crate::scripts::want_key(room))
            .arg(origin)
            .query_async(&mut self.conn())
            .await?;
        Ok(v.and_then(|v| {
            let (epoch, seq) = v.rsplit_once('|')?;
            Some((epoch.to_owned(), seq.parse().ok()?))
        }))
    }

    /// When the room's current members homed here joined, the earliest: the wall-clock
    /// milliseconds of their oldest membership stamp (`mr:{room}:mh`). `None` without such
    /// members. A region that starts following another's room asks for the history from
    /// there, so a message published right after a join was acknowledged is not lost.
    pub async fn local_join_time(&self, room: &RoomId) -> StoreResult<Option<u64>> {
        let keys = RoomKeys::new(room);
        let (reg, stamps): (
            std::collections::HashMap<String, String>,
            std::collections::HashMap<String, String>,
        ) = redis::pipe()
            .hgetall(&keys.keys[k::REG])
            .hgetall(&keys.keys[MH])
            .query_async(&mut self.conn())
            .await?;
        Ok(reg
            .iter()
            .filter(|(_, region)| region.as_str() == self.region())
            .filter_map(|(user, _)| stamps.get(user))
            .filter_map(|s| Hlc::parse(s.split('|').next().unwrap_or_default()))
            .map(|s| s.wall_ms)
            .filter(|ms| *ms > 0)
            .min())
    }

    /// The room's epoch and the position just before the first history entry stamped at or
    /// after `wall_ms` (the newest entry's position when none is, the oldest kept entry's
    /// predecessor when all are): replaying after it sends everything appended since
    /// `wall_ms` that the history still holds. Reads newest first, 256 entries a call.
    pub async fn position_before(&self, room: &RoomId, wall_ms: u64) -> StoreResult<(String, u64)> {
        const PAGE: usize = 256;
        let keys = RoomKeys::new(room);
        let (epoch, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&keys.keys[k::META])
            .arg("epoch")
            .arg("seq")
            .query_async(&mut self.conn())
            .await?;
        let epoch = epoch.unwrap_or_default();
        let mut position = seq.unwrap_or(0);
        let mut end = "+".to_owned();
        loop {
            let page: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(&keys.keys[k::HIST])
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut self.conn())
                .await?;
            let entries = stored_entries(&page)?;
            for e in &entries {
                let at = e
                    .stamp
                    .as_deref()
                    .and_then(Hlc::parse)
                    .map_or(0, |s| s.wall_ms);
                if at < wall_ms {
                    return Ok((epoch, e.seq.min(position)));
                }
                position = e.seq.saturating_sub(1);
            }
            match entries.last() {
                Some(last) if entries.len() >= PAGE && last.seq > 1 => {
                    end = format!("{}-0", last.seq - 1);
                }
                _ => return Ok((epoch, position)),
            }
        }
    }

    /// Rooms with local members (a connection count hash exists), by `SCAN`: the periodic
    /// safety net behind the interest channel.
    pub async fn local_interest(&self) -> StoreResult<Vec<RoomId>> {
        let mut c = self.conn();
        let mut iter: redis::AsyncIter<'_, String> = c.scan_match("mr:{*}:cc").await?;
        let mut rooms = BTreeSet::new();
        while let Some(key) = iter.next_item().await {
            let key = key?;
            if let Some(room) = key
                .strip_prefix("mr:{")
                .and_then(|r| r.strip_suffix("}:cc"))
                .and_then(|r| RoomId::new(r).ok())
            {
                rooms.insert(room);
            }
        }
        Ok(rooms.into_iter().collect())
    }

    // ---- sending: this region's events -------------------------------------------------

    /// Up to `count` history entries after `after`, with the room's current position and the
    /// oldest entry kept (to tell a trimmed history).
    pub async fn read_local(
        &self,
        room: &RoomId,
        after: u64,
        count: usize,
    ) -> StoreResult<LocalBatch> {
        let keys = RoomKeys::new(room);
        let ((epoch, seq), oldest, newer): (
            (Option<String>, Option<u64>),
            StreamRangeReply,
            StreamRangeReply,
        ) = history_after(&keys, after, count)
            .query_async(&mut self.conn())
            .await?;
        let entries = stored_entries(&newer)?
            .into_iter()
            .map(|e| LocalEntry {
                seq: e.seq,
                stamp: e.stamp.as_deref().and_then(Hlc::parse).unwrap_or_default(),
                origin: e.origin,
                frame: e.frame,
                idempotency: e.idempotency,
            })
            .collect();
        Ok(LocalBatch {
            epoch: epoch.unwrap_or_default(),
            seq: seq.unwrap_or(0),
            oldest: oldest.ids.first().and_then(|e| entry_seq(&e.id)),
            entries,
        })
    }

    /// This region's members of the room and the room state, atomically with the position.
    pub async fn snapshot(&self, room: &RoomId) -> StoreResult<RoomSnapshot> {
        let keys = RoomKeys::new(room);
        let inv = self.args.invoke(&self.scripts.snapshot, &keys);
        let (epoch, seq, stamp, members, state): (String, u64, String, Vec<String>, Vec<String>) =
            inv.invoke_async(&mut self.conn()).await?;
        let members = members
            .chunks_exact(2)
            .filter_map(|c| Some((UserId::new(c[0].as_str()).ok()?, Hlc::parse(&c[1])?)))
            .collect();
        Ok(RoomSnapshot {
            epoch,
            seq,
            stamp: Hlc::parse(&stamp).unwrap_or_default(),
            members,
            state: parse_state(&state),
        })
    }

    // ---- presence and direct messages ---------------------------------------------------

    /// Users with at least one connection on a node of this region (`SCAN` of presence
    /// hashes; used for the presence snapshot sent when a link comes up).
    pub async fn local_online(&self) -> StoreResult<Vec<UserId>> {
        let mut c = self.conn();
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<'_, String> = c.scan_match("mu:{*}:conns").await?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        let mut online = Vec::new();
        for chunk in keys.chunks(256) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.hkeys(key);
            }
            let fields: Vec<Vec<String>> = pipe.query_async(&mut c).await?;
            for (key, fields) in chunk.iter().zip(fields) {
                if fields.iter().any(|f| !f.starts_with(RELAY_NODE_PREFIX)) {
                    if let Some(user) = key
                        .strip_prefix("mu:{")
                        .and_then(|u| u.strip_suffix("}:conns"))
                        .and_then(|u| UserId::new(u).ok())
                    {
                        online.push(user);
                    }
                }
            }
        }
        Ok(online)
    }

    /// Records users connected in `region` (`reset`: exactly these, forgetting the others),
    /// as one pseudo-connection `rl-<region>|0` each, so `presence` lists them and `send`
    /// hands their messages to this relay.
    pub async fn set_remote_presence(
        &self,
        region: &str,
        online: &[UserId],
        offline: &[UserId],
        reset: bool,
    ) -> StoreResult<()> {
        let node = relay_node(region);
        let index = format!("mn:{{{node}}}:users");
        let field = format!("{node}|0");
        let mut c = self.conn();
        let mut gone: Vec<String> = offline.iter().map(|u| u.as_str().to_owned()).collect();
        if reset {
            let known: Vec<String> = c.smembers(&index).await?;
            let keep: HashSet<&str> = online.iter().map(UserId::as_str).collect();
            gone.extend(known.into_iter().filter(|u| !keep.contains(u.as_str())));
        }
        let value = format!("{region}|{}", now_ms());
        for chunk in gone.chunks(512) {
            let mut pipe = redis::pipe();
            for user in chunk {
                pipe.hdel(format!("mu:{{{user}}}:conns"), &field)
                    .ignore()
                    .srem(&index, user)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut c).await?;
        }
        for chunk in online.chunks(512) {
            let mut pipe = redis::pipe();
            for user in chunk {
                pipe.hset(user_conns_key(user), &field, &value)
                    .ignore()
                    .sadd(&index, user.as_str())
                    .ignore();
            }
            let _: () = pipe.query_async(&mut c).await?;
        }
        Ok(())
    }

    /// Keeps `region`'s pseudo-node alive for `ttl`: its users count as online meanwhile.
    pub async fn renew_remote_region(&self, region: &str, ttl: Duration) -> StoreResult<()> {
        let node = relay_node(region);
        let _: () = redis::cmd("SET")
            .arg(format!("mn:{{{node}}}:lease"))
            .arg(region)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Forgets every user of `region` (declared down) and its pseudo-node.
    pub async fn drop_remote_region(&self, region: &str) -> StoreResult<()> {
        self.set_remote_presence(region, &[], &[], true).await?;
        let node = relay_node(region);
        let _: () = redis::pipe()
            .del(format!("mn:{{{node}}}:lease"))
            .ignore()
            .del(format!("mn:{{{node}}}:users"))
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Hands a direct-message frame from another region to this region's nodes holding `to`.
    /// Returns whether a node took it.
    pub async fn deliver_direct(&self, to: &UserId, frame: &[u8]) -> StoreResult<bool> {
        let mut c = self.conn();
        let fields: Vec<String> = c.hkeys(user_conns_key(to)).await?;
        let nodes: BTreeSet<&str> = fields
            .iter()
            .filter(|f| !f.starts_with(RELAY_NODE_PREFIX))
            .filter_map(|f| f.split('|').next())
            .collect();
        if nodes.is_empty() {
            return Ok(false);
        }
        let mut payload = Vec::with_capacity(to.as_str().len() + 1 + frame.len());
        payload.extend_from_slice(to.as_str().as_bytes());
        payload.push(b' ');
        payload.extend_from_slice(frame);
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.publish(format!("mn:{{{node}}}:inbox"), &payload);
        }
        let receivers: Vec<u64> = pipe.query_async(&mut c).await?;
        Ok(receivers.iter().sum::<u64>() > 0)
    }

    // ---- the feed ----------------------------------------------------------------------

    /// Starts the task that follows this region's room channels, interest and presence
    /// announcements and the relay pseudo-nodes' inboxes, reconnecting with backoff (and
    /// sending [`Feed::Resynced`] after each reconnect). Ends when `feed` closes.
    pub fn start_feed(&self, feed: mpsc::Sender<Feed>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(feed_task(self.resolver.clone(), self.link.watch(), feed))
    }
}

/// Follows the primary's pub/sub. Resubscribes on the primary named now after a lost
/// connection, when the command link has moved to another server (a failover), and when a
/// ping goes unanswered (a paused server or a half-open socket sends no FIN).
async fn feed_task(
    resolver: Arc<Resolver>,
    mut primary: tokio::sync::watch::Receiver<(u64, String)>,
    feed: mpsc::Sender<Feed>,
) {
    const OP_TIMEOUT: Duration = Duration::from_secs(2);
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let connected = async {
            let client = resolver.primary().await?;
            let address = client.get_connection_info().addr().to_string();
            let pubsub = match tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await {
                Ok(p) => p?,
                Err(_) => {
                    return Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "pub/sub connect timed out",
                    )))
                }
            };
            let (mut sink, stream) = pubsub.split();
            sink.psubscribe("mr:{*}:ev").await?;
            sink.psubscribe(format!("mn:{{{RELAY_NODE_PREFIX}*}}:inbox"))
                .await?;
            sink.subscribe(INTEREST_CHANNEL).await?;
            sink.subscribe(PRESENCE_CHANNEL).await?;
            Ok::<_, redis::RedisError>((sink, stream, address))
        }
        .await;
        let (mut sink, mut stream, address) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "relay feed: cannot subscribe; retrying");
                if feed.is_closed() {
                    return;
                }
                // Retry after the backoff, or at once when the command link has found a
                // primary (after a failover it usually finds it first).
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    changed = primary.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        primary.mark_unchanged();
        if !first && feed.send(Feed::Resynced).await.is_err() {
            return;
        }
        first = false;
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("relay feed: redis pub/sub connection lost; reconnecting");
                        break;
                    };
                    match parse_feed(msg.get_channel_name(), msg.get_payload_bytes()) {
                        Some(item) => {
                            if feed.send(item).await.is_err() {
                                return;
                            }
                        }
                        None => tracing::debug!(
                            channel = msg.get_channel_name(),
                            "relay feed: ignoring a malformed message"
                        ),
                    }
                }
                changed = primary.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = primary.borrow_and_update().1.clone();
                    if now != address {
                        tracing::warn!(from = %address, to = %now, "relay feed: the primary moved; resubscribing there");
                        break;
                    }
                }
                _ = ping.tick() => {
                    let pinged = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pinged, Ok(Ok(_))) {
                        tracing::warn!("relay feed: redis pub/sub ping unanswered; reconnecting");
                        break;
                    }
                }
            }
        }
        if feed.is_closed() {
            return;
        }
    }
}

fn parse_feed(channel: &str, payload: &[u8]) -> Option<Feed> {
    if channel == INTEREST_CHANNEL || channel == PRESENCE_CHANNEL {
        let text = std::str::from_utf8(payload).ok()?;
        let (flag, rest) = text.split_once(' ')?;
        let on = match flag {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        return if channel == INTEREST_CHANNEL {
            Some(Feed::Interest {
                room: room_of_channel(rest)?,
                local_members: on,
            })
        } else {
            Some(Feed::Presence {
                user: UserId::new(rest).ok()?,
                online: on,
            })
        };
    }
    if let Some(region) = channel
        .strip_prefix("mn:{")
        .and_then(|c| c.strip_suffix("}:inbox"))
        .and_then(|n| n.strip_prefix(RELAY_NODE_PREFIX))
    {
        let space = payload.iter().position(|b| *b == b' ')?;
        let to = UserId::new(std::str::from_utf8(&payload[..space]).ok()?).ok()?;
        return Some(Feed::Direct {
            region: region.to_owned(),
            to,
            frame: Bytes::copy_from_slice(&payload[space + 1..]),
        });
    }
    let room = room_of_channel(channel)?;
    let space = payload.iter().position(|b| *b == b' ')?;
    let seq = std::str::from_utf8(&payload[..space]).ok()?.parse().ok()?;
    let rest = &payload[space + 1..];
    let space = rest.iter().position(|b| *b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?.to_owned();
    let tail = &rest[space + 1..];
    let (frame, idempotency) = match tail.iter().position(|b| *b == 0) {
        Some(nul) => (
            &tail[..nul],
            Some(std::str::from_utf8(&tail[nul + 1..]).ok()?.to_owned()),
        ),
        None => (tail, None),
    };
    Some(Feed::Room {
        room,
        seq,
        epoch,
        frame: Bytes::copy_from_slice(frame),
        idempotency,
    })
}

/// The apply script's status code.
fn applied(status: i64) -> Applied {
    match status {
        0 => Applied::Duplicate,
        2 => Applied::Superseded,
        3 => Applied::Gap,
        _ => Applied::Applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_messages_parse() {
        assert_eq!(
            parse_feed("meridian:interest", b"1 mr:{lobby}:ev"),
            Some(Feed::Interest {
                room: RoomId::new("lobby").unwrap(),
                local_members: true
            })
        );
        assert_eq!(
            parse_feed("meridian:presence", b"0 bob"),
            Some(Feed::Presence {
                user: UserId::new("bob").unwrap(),
                online: false
            })
        );
        assert!(matches!(
            parse_feed("mn:{rl-eu-central}:inbox", b"bob {\"type\":\"direct\"}"),
            Some(Feed::Direct { region, .. }) if region == "eu-central"
        ));
        assert_eq!(
            parse_feed("mr:{r}:ev", b"7 e1 {}"),
            Some(Feed::Room {
                room: RoomId::new("r").unwrap(),
                seq: 7,
                epoch: "e1".into(),
                frame: Bytes::from_static(b"{}"),
                idempotency: None,
            })
        );
        assert_eq!(
            parse_feed("mr:{r}:ev", b"8 e1 {\"a\":1}\0bob|k7"),
            Some(Feed::Room {
                room: RoomId::new("r").unwrap(),
                seq: 8,
                epoch: "e1".into(),
                frame: Bytes::from_static(b"{\"a\":1}"),
                idempotency: Some("bob|k7".into()),
            })
        );
        assert!(parse_feed("mr:{r}:ev", b"7 e1").is_none());
        assert!(parse_feed("meridian:interest", b"2 mr:{r}:ev").is_none());
        assert!(parse_feed("mn:{rl-x}:inbox", b"nospace").is_none());
    }
}
