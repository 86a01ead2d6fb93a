//! The production [`StateStore`]: one Redis (or a Sentinel-managed primary) per region.
//!
//! Every room's keys share the hash tag `{room}`, and every multi-key update of a room is one
//! Lua script, so the key schema is ready for Redis Cluster (the client connects to a single
//! endpoint today) and a crash between two commands cannot
//! leave a room half-updated. The per-node index (`mn:{node}:idx`) lives in another slot and is
//! written *before* a join and removed *after* a leave: a crash leaves at most an index entry
//! whose reaping is a no-op, never a member nobody can reap. See `docs/redis-schema.md`.
//!
//! This file holds the store itself ([`RedisStore`], its config, `connect`) and the
//! [`StateStore`] impl, which hands each call to the file for its job:
//!
//! - `keys`: names of the node, user and region-wide keys and channels (a room's own keys
//!   are `scripts::RoomKeys`).
//! - `leases`: node leases, the region's load, a node's own index, and the reaper.
//! - `presence`: connect, disconnect, presence, and direct messages.
//! - `rooms`: join, leave, member pages, shared rooms.
//! - `publish`: sequencing room events (budgets, idempotency, durable `WAIT`) and `spend`.
//! - `history`: history reads for resume, within the region and by version vector.
//! - `state`: room state keys with compare-and-set.
//! - `pubsub`: counted subscriptions and the task owning the pub/sub connection.
//!
//! The Lua scripts are in `scripts`, the primary link and Sentinel following in `link`.

mod history;
mod keys;
mod leases;
mod presence;
mod publish;
mod pubsub;
mod rooms;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meridian_protocol::{LeftReason, OriginPosition, PresenceEntry, RoomId, StateEntry, UserId};
use redis::Script;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::link::{LinkConn, PrimaryLink, RedisEndpoint, Resolver};
use crate::scripts::{RoomArgs, RoomKeys, Scripts};
use crate::{
    Budget, ConnRef, Inbound, JoinOutcome, MemberPage, NodeId, PublishItem, Published, ReapedNode,
    Recovery, StateStore, StoreError, StoreLimits, StoreResult,
};
use pubsub::{PubSubCmd, PubSubShared};

/// How long a command may wait for its reply before the connection is given up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to reach the region's Redis.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// The primary: a URL, or Sentinel addresses and a master name.
    pub endpoint: RedisEndpoint,
    /// This region's name.
    pub region: String,
    /// This node's id.
    pub node: NodeId,
    /// Lease, history and replay limits.
    pub limits: StoreLimits,
    /// Durable mode: acknowledge a publish only once replicas confirm it. `None`: a publish is
    /// acknowledged when the primary has applied it (a failover can lose the last writes).
    pub durable: Option<Durability>,
}

impl RedisStoreConfig {
    /// A standalone Redis at `url`, not durable.
    pub fn standalone(url: &str, region: &str, node: NodeId, limits: StoreLimits) -> Self {
        Self {
            endpoint: RedisEndpoint::url(url),
            region: region.to_owned(),
            node,
            limits,
            durable: None,
        }
    }
}

/// Durable publish: after the publish script, `WAIT <replicas> <timeout>` on the connection
/// that ran it. A publish that is not confirmed in time fails with [`StoreError::NotDurable`]
/// (it may still have been applied; a retry with the same idempotency key is answered from
/// the first attempt and waits for the replicas again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Replicas that must confirm (at least 1).
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// The Redis-backed [`StateStore`].
pub struct RedisStore {
    link: Arc<PrimaryLink>,
    /// Durable publishes get their own connection: `WAIT` blocks the connection it runs on,
    /// and other commands must not queue behind it.
    durable_link: Option<Arc<PrimaryLink>>,
    config: RedisStoreConfig,
    scripts: Arc<Scripts>,
    args: RoomArgs,
    pubsub: Arc<PubSubShared>,
    commands: mpsc::UnboundedSender<PubSubCmd>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.config.node)
            .field("region", &self.config.region)
            .finish()
    }
}

impl RedisStore {
    /// Connects (commands and pub/sub) and starts the pub/sub task, which pushes this node's
    /// room events and direct messages into `inbound` and follows reconnects.
    pub async fn connect(
        config: RedisStoreConfig,
        inbound: mpsc::Sender<Inbound>,
    ) -> StoreResult<Self> {
        let resolver = Arc::new(Resolver::new(config.endpoint.clone())?);
        let link =
            Arc::new(PrimaryLink::connect(resolver.clone(), "commands", RESPONSE_TIMEOUT).await?);
        let durable_link = match config.durable {
            Some(d) => Some(Arc::new(
                PrimaryLink::connect(resolver.clone(), "durable", RESPONSE_TIMEOUT + d.timeout)
                    .await?,
            )),
            None => None,
        };
        if resolver.is_sentinel() {
            let mut links = vec![Arc::downgrade(&link)];
            if let Some(d) = &durable_link {
                links.push(Arc::downgrade(d));
            }
            tokio::spawn(crate::link::follow_primary(
                resolver.clone(),
                links,
                Duration::from_secs(1),
            ));
        }
        let pubsub = Arc::new(PubSubShared {
            counts: Mutex::new(HashMap::new()),
            up: AtomicBool::new(false),
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(pubsub::pubsub_task(
            resolver,
            link.watch(),
            keys::inbox_channel(&config.node),
            pubsub.clone(),
            command_rx,
            inbound,
            ready_tx,
        ));
        // The first connection must work; later losses are retried by the task.
        ready_rx.await.map_err(|_| StoreError::PubSubDown)??;
        let args = RoomArgs {
            history_len: config.limits.history_len,
            history_ttl_ms: config.limits.history_ttl.as_millis() as u64,
            region: config.region.clone(),
        };
        Ok(Self {
            link,
            durable_link,
            config,
            args,
            scripts: Arc::new(Scripts::new()),
            pubsub,
            commands,
        })
    }

    fn conn(&self) -> LinkConn {
        LinkConn::new(self.link.clone())
    }

    fn room_script<'a>(&self, script: &'a Script, keys: &RoomKeys) -> redis::ScriptInvocation<'a> {
        self.args.invoke(script, keys)
    }
}

#[async_trait]
impl StateStore for RedisStore {
    fn node(&self) -> &NodeId {
        &self.config.node
    }

    fn region(&self) -> &str {
        &self.config.region
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        if !self.pubsub.up.load(Ordering::Relaxed) {
            return Err(StoreError::PubSubDown);
        }
        Ok(())
    }

    async fn renew_lease(&self) -> StoreResult<()> {
        self.renew_lease_checked().await.map(|_| ())
    }

    async fn renew_lease_checked(&self) -> StoreResult<bool> {
        leases::renew_lease_checked(self).await
    }

    async fn reaping_in_progress(&self) -> StoreResult<bool> {
        leases::reaping_in_progress(self).await
    }

    async fn own_index(&self) -> StoreResult<Vec<(u64, UserId, Option<RoomId>)>> {
        leases::own_index(self).await
    }

    async fn region_load(&self, connections: u64) -> StoreResult<crate::RegionLoad> {
        leases::region_load(self, connections).await
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
        self.publish_budgeted(room, items, None, Duration::from_secs(1))
            .await
    }

    async fn publish_budgeted(
        &self,
        room: &RoomId,
        items: &[PublishItem<'_>],
        budget: Option<(&str, u64)>,
        budget_window: Duration,
    ) -> StoreResult<Vec<Published>> {
        publish::publish_budgeted(self, room, items, budget, budget_window).await
    }

    async fn history(&self, room: &RoomId, epoch: &str, seq: u64) -> StoreResult<Recovery> {
        history::history(self, room, epoch, seq).await
    }

    async fn want_replay(&self, room: &RoomId, vector: &[OriginPosition]) -> StoreResult<()> {
        history::want_replay(self, room, vector).await
    }

    async fn history_since(
        &self,
        room: &RoomId,
        vector: &[OriginPosition],
    ) -> StoreResult<Recovery> {
        history::history_since(self, room, vector).await
    }

    async fn send_direct(&self, to: &UserId, frame: &str) -> StoreResult<bool> {
        presence::send_direct(self, to, frame).await
    }

    async fn shares_room(&self, rooms: &[RoomId], users: &[UserId]) -> StoreResult<Vec<bool>> {
        rooms::shares_room(self, rooms, users).await
    }

    async fn spend(&self, budgets: &[Budget<'_>], window: Duration) -> StoreResult<Option<usize>> {
        publish::spend(self, budgets, window).await
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
