//! The in-process [`StateStore`]: every node of a region holds a [`MemoryStore`] on one shared
//! [`MemoryRegion`]. It implements the same semantics as the Redis schema (and passes the same
//! conformance suite) for a single-process dev region and fast tests; nothing survives the
//! process.
//!
//! This file holds the region's state (one mutex over plain maps), [`MemoryRegion`],
//! [`MemoryStore`] and the [`StateStore`] impl, which hands each call to the file for its job
//! (the same files as the Redis store's, so the two read side by side):
//!
//! - `leases`: node leases and the reaper.
//! - `presence`: connect, disconnect, presence, and direct messages.
//! - `rooms`: join, leave (`RegionState::leave`), member pages, shared rooms.
//! - `publish`: sequencing and fan-out (`RegionState::append`), idempotency, and `spend`.
//! - `history`: history reads for resume.
//! - `state`: room state keys with compare-and-set.
//! - `pubsub`: counted subscriptions.
//!
//! What both stores decide alike (recovery, presence counting) is in `rules`.

mod history;
mod leases;
mod presence;
mod publish;
mod pubsub;
mod rooms;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use meridian_protocol::{LeftReason, PresenceEntry, RoomId, StateEntry, UserId};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::{
    Budget, ConnRef, Inbound, JoinOutcome, MemberPage, NodeId, PublishItem, Published, ReapedNode,
    Recovery, StateStore, StoreLimits, StoreResult,
};

#[derive(Default)]
struct Room {
    epoch: String,
    seq: u64,
    history: VecDeque<(u64, Bytes)>,
    conns: HashSet<(NodeId, u64, UserId)>,
    conn_counts: HashMap<UserId, usize>,
    members: BTreeMap<UserId, String>,
    state: BTreeMap<String, (u64, String)>,
}

#[derive(Default)]
struct NodeLink {
    inbound: Option<mpsc::Sender<Inbound>>,
    subscriptions: HashMap<RoomId, usize>,
}

#[derive(Default)]
struct RegionState {
    leases: HashMap<NodeId, Instant>,
    nodes: HashMap<NodeId, NodeLink>,
    /// Per node: (room or None for presence, conn, user).
    index: HashMap<NodeId, HashSet<(Option<RoomId>, u64, UserId)>>,
    presence: HashMap<UserId, HashMap<(NodeId, u64), String>>,
    rooms: HashMap<RoomId, Room>,
    idempotency: HashMap<(RoomId, UserId, String), (u64, Instant)>,
    /// Fixed-window budgets: name → (window index, spent).
    budgets: HashMap<String, (u64, u64)>,
}

impl RegionState {
    fn lease_alive(&self, node: &NodeId) -> bool {
        self.leases.get(node).is_some_and(|t| *t > Instant::now())
    }
}

/// The shared state of one in-process region.
#[derive(Clone, Default)]
pub struct MemoryRegion {
    state: Arc<Mutex<RegionState>>,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryRegion")
    }
}

impl MemoryRegion {
    /// An empty region.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store for one node of this region, delivering its events to `inbound`.
    pub fn store(
        &self,
        region: &str,
        node: NodeId,
        limits: StoreLimits,
        inbound: mpsc::Sender<Inbound>,
    ) -> MemoryStore {
        self.lock().nodes.entry(node.clone()).or_default().inbound = Some(inbound);
        MemoryStore {
            region_state: self.clone(),
            region: region.to_owned(),
            node,
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegionState> {
        // A poisoned lock means a panic elsewhere already; the state itself is still whole
        // because every mutation completes before it returns.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's view of a [`MemoryRegion`].
pub struct MemoryStore {
    region_state: MemoryRegion,
    region: String,
    node: NodeId,
    limits: StoreLimits,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("node", &self.node)
            .finish()
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, RegionState> {
        self.region_state.lock()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn region(&self) -> &str {
        &self.region
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn renew_lease(&self) -> StoreResult<()> {
        leases::renew_lease(self).await
    }

    async fn release_lease(&self) -> StoreResult<()> {
        leases::release_lease(self).await
    }

    async fn reap_dead_nodes(&self) -> StoreResult<Vec<ReapedNode>> {
        leases::reap_dead_nodes(self).await
    }

    async fn connect(&self, conn: &ConnRef) -> StoreResult<()> {
        presence::connect(self, conn).await
    }

    async fn disconnect(&self, conn: &ConnRef) -> StoreResult<()> {
        presence::disconnect(self, conn).await
    }

    async fn presence(&self, users: &[UserId]) -> StoreResult<Vec<PresenceEntry>> {
        presence::presence(self, users).await
    }

    async fn join(
        &self,
        room: &RoomId,
        conn: &ConnRef,
        max_members: u32,
    ) -> StoreResult<JoinOutcome> {
        rooms::join(self, room, conn, max_members).await
    }

    async fn leave(&self, room: &RoomId, conn: &ConnRef, reason: LeftReason) -> StoreResult<bool> {
        rooms::leave(self, room, conn, reason).await
    }

    async fn members(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<MemberPage> {
        rooms::members(self, room, after, limit).await
    }

    async fn publish_many(
        &self,
        room: &RoomId,
        items: &[PublishItem<'_>],
    ) -> StoreResult<Vec<Published>> {
        publish::publish_many(self, room, items).await
    }

    async fn history(&self, room: &RoomId, epoch: &str, seq: u64) -> StoreResult<Recovery> {
        history::history(self, room, epoch, seq).await
    }

    async fn shares_room(&self, rooms: &[RoomId], users: &[UserId]) -> StoreResult<Vec<bool>> {
        rooms::shares_room(self, rooms, users).await
    }

    async fn spend(&self, budgets: &[Budget<'_>], window: Duration) -> StoreResult<Option<usize>> {
        publish::spend(self, budgets, window).await
    }

    async fn send_direct(&self, to: &UserId, frame: &str) -> StoreResult<bool> {
        presence::send_direct(self, to, frame).await
    }

    async fn state_set(
        &self,
        room: &RoomId,
        key: &str,
        value: &RawValue,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<u64> {
        state::state_set(self, room, key, value, if_version, by).await
    }

    async fn state_get(&self, room: &RoomId, key: Option<&str>) -> StoreResult<Vec<StateEntry>> {
        state::state_get(self, room, key).await
    }

    async fn state_delete(
        &self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<bool> {
        state::state_delete(self, room, key, if_version, by).await
    }

    async fn subscribe(&self, room: &RoomId) -> StoreResult<()> {
        pubsub::subscribe(self, room).await
    }

    async fn unsubscribe(&self, room: &RoomId) -> StoreResult<()> {
        pubsub::unsubscribe(self, room).await
    }
}
