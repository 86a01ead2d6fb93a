//! The regional state model of a Meridian region.
//!
//! A region node keeps only sockets; every fact another node might need lives here: node leases,
//! presence, room membership (with a per-node index so a dead node's members can be reaped),
//! room history with per-room sequence numbers, room state, and the pub/sub fan-out of room
//! events and direct messages. [`StateStore`] is the contract; [`RedisStore`] is the production
//! implementation (key schema in `docs/redis-schema.md`), [`MemoryStore`] an in-process one for
//! a single-node dev region and fast tests. Both pass the same conformance suite
//! (`conformance`, with the `redis-server` harness in `testing`: both behind the `test-support`
//! feature, so they are not in release builds).
//!
//! Neighbours: `meridian-protocol` supplies ids and pre-encoded room event frames; the region
//! node (`crates/region-node`) calls the store and fans out what arrives on the [`Inbound`]
//! channel.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "test-support")]
pub mod conformance;
pub mod lease;
mod link;
mod memory;
mod redis_store;
pub mod replica;
mod rules;
mod scripts;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use meridian_protocol::{
    LeftReason, MemberEntry, OriginPosition, PresenceEntry, RoomEventFrame, RoomId, StateEntry,
    UserId,
};
use serde_json::value::RawValue;

pub use link::{RedisEndpoint, SentinelEndpoint};
pub use memory::{MemoryRegion, MemoryStore};
pub use redis_store::{Durability, RedisStore, RedisStoreConfig};
pub use scripts::{INTEREST_CHANNEL, PRESENCE_CHANNEL, RELAY_NODE_PREFIX, WEBHOOK_LUA};

/// A node's id: random per process start, so a restarted node is a new node and can never
/// inherit a dead one's lease.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A fresh random id (12 chars of `[0-9a-z]`).
    pub fn random() -> Self {
        Self(random_token(12).into())
    }
    /// Wraps an id read back from the store. Ids never contain `|`, `{` or `}`.
    pub fn from_stored(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        ok.then(|| Self(s.into()))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// Random `[0-9a-z]` text: node ids and room history epochs.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One client connection as the store knows it: which node holds it, its node-local number,
/// and its user. Presence and membership count these, not users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The node holding the socket.
    pub node: NodeId,
    /// Unique per node.
    pub conn: u64,
    /// The authenticated user.
    pub user: UserId,
}

impl ConnRef {
    /// `node|conn|user`: the member token stored in a room's connection set.
    pub(crate) fn room_token(&self) -> String {
        format!("{}|{}|{}", self.node, self.conn, self.user)
    }
}

/// Tunables shared by both stores.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Node lease length: a node that has not renewed within this is dead.
    pub lease_ttl: Duration,
    /// Room history: most events kept per room.
    pub history_len: u32,
    /// Room history and sequence counters expire this long after the room's last event.
    pub history_ttl: Duration,
    /// Most events a resume may replay; a client further behind gets `history_lost`.
    pub max_replay: u32,
    /// Idempotency keys of `publish` are remembered this long.
    pub idempotency_window: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            history_len: 1000,
            history_ttl: Duration::from_secs(24 * 3600),
            max_replay: 1000,
            idempotency_window: Duration::from_secs(300),
        }
    }
}

/// What the store pushes to its node: room events for rooms it subscribed and direct messages
/// addressed to users on this node. Frames are final JSON text, encoded once.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A sequenced room event.
    Room {
        /// The room.
        room: RoomId,
        /// The event's room sequence number.
        seq: u64,
        /// The room history epoch the sequence number belongs to.
        epoch: Arc<str>,
        /// The JSON frame as clients receive it.
        frame: Bytes,
    },
    /// A direct message for every local connection of `user`.
    Direct {
        /// The target user.
        user: UserId,
        /// The JSON frame as clients receive it.
        frame: Bytes,
    },
    /// The store lost and re-established its subscriptions; room events may have been missed
    /// meanwhile, and the node should catch up from history.
    Resubscribed,
}

/// The result of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// Whether this was the user's first connection in the room (a `joined` event was sent).
    pub first: bool,
    /// The room's history epoch.
    pub epoch: String,
    /// The room's sequence number after the join: events after it are new to the joiner.
    pub seq: u64,
    /// Other regions' positions in the room as of `seq` (the relay's watermarks), read
    /// atomically with the join; empty without replication.
    pub origins: Vec<OriginPosition>,
}

/// One publish of [`StateStore::publish_many`].
#[derive(Debug, Clone, Copy)]
pub struct PublishItem<'a> {
    /// The `message` event.
    pub frame: &'a RoomEventFrame,
    /// `(user, key)`: repeats within the idempotency window are not published again.
    pub idempotency: Option<(&'a UserId, &'a str)>,
}

/// A published room event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its room sequence number.
    pub seq: u64,
    /// The room's history epoch.
    pub epoch: String,
    /// True when an idempotency key matched an earlier publish: nothing new was sent.
    pub duplicate: bool,
}

/// One page of a room's members, ordered by user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPage {
    /// The members.
    pub members: Vec<MemberEntry>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<UserId>,
}

/// What a resume gets from room history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Every event after the client's position, in order.
    Replay {
        /// The room's epoch (unchanged).
        epoch: String,
        /// The events `(seq, frame)`.
        events: Vec<(u64, Bytes)>,
    },
    /// The history no longer reaches back to the client's position (trimmed, expired or a new
    /// epoch).
    Lost {
        /// The room's current epoch.
        epoch: String,
        /// The room's current sequence number.
        seq: u64,
    },
}

/// A node found dead and cleaned up by [`StateStore::reap_dead_nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapedNode {
    /// The dead node.
    pub node: NodeId,
    /// Room memberships removed (connections).
    pub memberships: usize,
    /// `left {reason: node_lost}` events emitted (users whose last connection it was).
    pub left_events: usize,
}

/// Errors of the regional state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The room already has the configured maximum number of members.
    #[error("room is full ({max} members)")]
    RoomFull {
        /// The limit.
        max: u32,
    },
    /// Compare-and-set failed.
    #[error("version conflict: the key is at version {current}")]
    VersionConflict {
        /// The key's version now (0: absent).
        current: u64,
    },
    /// Redis could not be reached or answered with an error. Retrying can help.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The store's pub/sub link is down; subscriptions will be restored when it is back.
    #[error("pub/sub link to the store is down")]
    PubSubDown,
    /// Durable mode: the publish was applied on the primary but fewer replicas than required
    /// confirmed it in time. It may or may not survive a failover; retry with the same
    /// idempotency key.
    #[error("publish not confirmed by replicas in time ({acked} of {wanted})")]
    NotDurable {
        /// Replicas that confirmed.
        acked: u64,
        /// Replicas required.
        wanted: u32,
    },
    /// A budget given to [`StateStore::publish_budgeted`] is spent for its window; nothing was
    /// published. Retrying in the next window can succeed.
    #[error("budget of {limit} per window spent")]
    BudgetSpent {
        /// The budget's limit.
        limit: u64,
    },
    /// A value read back from the store does not have the shape this code writes.
    #[error("unexpected data in the store: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::PubSubDown | Self::NotDurable { .. } | Self::BudgetSpent { .. }
        )
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Open connections over a region's live nodes (what a node's `/readyz` reports).
pub use meridian_protocol::health::RegionLoad;

/// The regional state, as seen by one node. Each node creates its own instance (it knows the
/// node's id and region); all instances of a region share the same backing state.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The node this instance acts for.
    fn node(&self) -> &NodeId;
    /// The region this store belongs to.
    fn region(&self) -> &str;
    /// Checks the backing store answers (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Creates or extends this node's lease.
    async fn renew_lease(&self) -> StoreResult<()>;
    /// Like [`StateStore::renew_lease`], and says whether the lease was still alive before
    /// this renewal. `false` means it had expired (or the store lost it): another node may
    /// have reaped this node's members meanwhile, so the node must re-assert its sessions
    /// (see `docs/redis-schema.md`, "Lease loss").
    async fn renew_lease_checked(&self) -> StoreResult<bool> {
        self.renew_lease().await?;
        Ok(true)
    }
    /// Whether a reaper is cleaning up this node right now (it claimed it while the lease was
    /// expired). A node re-asserting its sessions waits until it is done.
    async fn reaping_in_progress(&self) -> StoreResult<bool> {
        Ok(false)
    }
    /// This node's index as the store has it: `(connection, user, room)` for each membership
    /// and `(connection, user, None)` for each presence entry. Lets a node that lost its store
    /// for a while remove entries of connections that closed meanwhile.
    async fn own_index(&self) -> StoreResult<Vec<(u64, UserId, Option<RoomId>)>> {
        Ok(Vec::new())
    }
    /// Ends this node's lease on graceful shutdown (after its connections are gone).
    async fn release_lease(&self) -> StoreResult<()>;
    /// Records this node's open connections and returns the region's totals over its live
    /// nodes (the load a region reports to the geo-router's health checks). A store with one
    /// node per region returns this node's figure.
    async fn region_load(&self, connections: u64) -> StoreResult<RegionLoad> {
        Ok(RegionLoad {
            connections,
            nodes: 1,
        })
    }
    /// Finds nodes whose lease expired, removes their connections and memberships (emitting
    /// `left {reason: node_lost}`), and forgets them. Safe to run on every node concurrently.
    async fn reap_dead_nodes(&self) -> StoreResult<Vec<ReapedNode>>;

    /// Records a live connection (presence).
    async fn connect(&self, conn: &ConnRef) -> StoreResult<()>;
    /// Removes a connection from presence. Leave its rooms first.
    async fn disconnect(&self, conn: &ConnRef) -> StoreResult<()>;
    /// Online status of users: connections on nodes whose lease is alive.
    async fn presence(&self, users: &[UserId]) -> StoreResult<Vec<PresenceEntry>>;

    /// Adds a connection to a room; the user's first connection emits `joined`. Idempotent per
    /// connection. `max_members` 0 means unlimited.
    async fn join(
        &self,
        room: &RoomId,
        conn: &ConnRef,
        max_members: u32,
    ) -> StoreResult<JoinOutcome>;
    /// Removes a connection from a room; the user's last connection emits `left {reason}`.
    /// Returns whether a `left` was emitted. Idempotent.
    async fn leave(&self, room: &RoomId, conn: &ConnRef, reason: LeftReason) -> StoreResult<bool>;
    /// A page of members ordered by user id, starting after `after`.
    async fn members(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<MemberPage>;

    /// Sequences a room event, appends it to the room history and fans it out, atomically.
    /// With an idempotency key `(user, key)`, a repeat within the window returns the first
    /// publish's sequence number and sends nothing.
    async fn publish(
        &self,
        room: &RoomId,
        frame: &RoomEventFrame,
        idempotency: Option<(&UserId, &str)>,
    ) -> StoreResult<Published> {
        let item = PublishItem { frame, idempotency };
        self.publish_many(room, std::slice::from_ref(&item))
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("a publish without a result".into()))
    }
    /// Several publishes to one room (what a client pipelined), sequenced in the order given,
    /// as one atomic step: all of them are applied or none. Each behaves as
    /// [`StateStore::publish`], idempotency keys included (a key repeated within the batch is a
    /// duplicate of its first use). One result per item, in order.
    async fn publish_many(
        &self,
        room: &RoomId,
        items: &[PublishItem<'_>],
    ) -> StoreResult<Vec<Published>>;
    /// [`StateStore::publish_many`] charged first to `budget` (one per item, all or none; see
    /// [`StateStore::spend`]): over it, nothing is published and the call fails with
    /// [`StoreError::BudgetSpent`]. Stores that can do both in one step override this (Redis:
    /// one script, one round trip).
    async fn publish_budgeted(
        &self,
        room: &RoomId,
        items: &[PublishItem<'_>],
        budget: Option<(&str, u64)>,
        window: Duration,
    ) -> StoreResult<Vec<Published>> {
        if let Some((name, limit)) = budget {
            let cost = items.len() as u64;
            if self
                .spend(&[Budget { name, cost, limit }], window)
                .await?
                .is_some()
            {
                return Err(StoreError::BudgetSpent { limit });
            }
        }
        self.publish_many(room, items).await
    }
    /// The room events after `(epoch, seq)`, or [`Recovery::Lost`]. An empty epoch with seq 0
    /// means "from the start of the current epoch".
    async fn history(&self, room: &RoomId, epoch: &str, seq: u64) -> StoreResult<Recovery>;

    /// Cross-region resume: the events of this region's history the client has not seen,
    /// given its version vector (per origin region, the last of that region's own events it
    /// saw, wherever it saw them). Stores without replication report the history lost.
    async fn history_since(
        &self,
        _room: &RoomId,
        _vector: &[OriginPosition],
    ) -> StoreResult<Recovery> {
        Ok(Recovery::Lost {
            epoch: String::new(),
            seq: 0,
        })
    }

    /// Records, before a resuming client joins `room`, the positions of other regions' events
    /// it has seen (its version vector), so that a relay which starts following the room here
    /// asks each origin to replay from there: a client re-homed into a region where the room
    /// had no members yet still gets every event it missed. Kept for a short while. Stores
    /// without replication do nothing.
    async fn want_replay(&self, _room: &RoomId, _vector: &[OriginPosition]) -> StoreResult<()> {
        Ok(())
    }

    /// Hands a direct-message frame to every node holding a connection of `to`. Returns whether
    /// at least one node took it.
    async fn send_direct(&self, to: &UserId, frame: &str) -> StoreResult<bool>;

    /// For each of `users`: whether it is a member of at least one of `rooms` (members of
    /// every region count). The scope of `send` and `presence`.
    async fn shares_room(&self, rooms: &[RoomId], users: &[UserId]) -> StoreResult<Vec<bool>>;

    /// Spends from fixed-window budgets shared by every node of the region: for each
    /// [`Budget`], `cost` is added to its counter of the current `window`, all or none. Returns
    /// the index of the first budget that `cost` would overdraw (nothing is spent then), or
    /// `None` when all were spent.
    async fn spend(&self, budgets: &[Budget<'_>], window: Duration) -> StoreResult<Option<usize>>;

    /// Writes a room state key (compare-and-set when `if_version` is given; 0 means "absent")
    /// and emits `state_changed`. Returns the key's new version.
    async fn state_set(
        &self,
        room: &RoomId,
        key: &str,
        value: &RawValue,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<u64>;
    /// Reads one key, or every key of the room (`key: None`), sorted by key.
    async fn state_get(&self, room: &RoomId, key: Option<&str>) -> StoreResult<Vec<StateEntry>>;
    /// Deletes a key (compare-and-set when `if_version` is given) and emits `state_changed`
    /// with a null value. Returns whether the key existed.
    async fn state_delete(
        &self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<bool>;

    /// Starts receiving the room's events on the [`Inbound`] channel. Counted: every call needs
    /// one [`StateStore::unsubscribe`]. Returns once events published after it will arrive.
    async fn subscribe(&self, room: &RoomId) -> StoreResult<()>;
    /// Drops one subscription count; the last one stops the room's events.
    async fn unsubscribe(&self, room: &RoomId) -> StoreResult<()>;
}

/// One fixed-window budget for [`StateStore::spend`]: a name (the store prefixes and scopes
/// it), what this request costs and the most the window allows.
#[derive(Debug, Clone, Copy)]
pub struct Budget<'a> {
    /// The budget's name, e.g. `"pub:alice"`.
    pub name: &'a str,
    /// What this request spends.
    pub cost: u64,
    /// The most one window may spend.
    pub limit: u64,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a room channel payload `"<seq> <epoch> <frame>"`.
pub(crate) fn split_seq(payload: &[u8]) -> Option<(u64, Arc<str>, Bytes)> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let seq = std::str::from_utf8(&payload[..space]).ok()?.parse().ok()?;
    let rest = &payload[space + 1..];
    let space = rest.iter().position(|b| *b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?;
    let frame = &rest[space + 1..];
    // A publish's idempotency id may follow the frame after a NUL (for the relay).
    let frame = match frame.iter().position(|b| *b == 0) {
        Some(nul) => &frame[..nul],
        None => frame,
    };
    Some((seq, epoch.into(), Bytes::copy_from_slice(frame)))
}
