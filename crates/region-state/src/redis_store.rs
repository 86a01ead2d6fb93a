//! The production [`StateStore`]: one Redis (or a Sentinel-managed primary) per region.
//!
//! Every room's keys share the hash tag `{room}`, and every multi-key update of a room is one
//! Lua script, so the key schema is ready for Redis Cluster (the client connects to a single
//! endpoint today) and a crash between two commands cannot
//! leave a room half-updated. The per-node index (`mn:{node}:idx`) lives in another slot and is
//! written *before* a join and removed *after* a leave: a crash leaves at most an index entry
//! whose reaping is a no-op, never a member nobody can reap. See `docs/redis-schema.md`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use meridian_protocol::{
    LeftReason, MemberEntry, OriginPosition, PresenceEntry, RoomEventFrame, RoomId, StateEntry,
    UserId,
};
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::link::{LinkConn, PrimaryLink, RedisEndpoint, Resolver};
use crate::scripts::{
    entry_seq, history_after, k, room_of_channel, stored_entries, want_key, RoomArgs, RoomKeys,
    Scripts, WANT_REPLAY_TTL_MS,
};
use crate::{
    now_ms, split_seq, Budget, ConnRef, Inbound, JoinOutcome, MemberPage, NodeId, PublishItem,
    Published, ReapedNode, Recovery, StateStore, StoreError, StoreLimits, StoreResult,
};

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

/// `mr:{room}:rw` entries (origin region → `"<epoch> <seq>"`) as positions, by region.
fn parse_watermarks<'a>(
    marks: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<OriginPosition> {
    let mut out: Vec<OriginPosition> = marks
        .filter_map(|(region, mark)| {
            let (epoch, seq) = mark.split_once(' ')?;
            Some(OriginPosition {
                region: region.clone(),
                epoch: epoch.to_owned(),
                seq: seq.parse().ok()?,
            })
        })
        .collect();
    out.sort_by(|a, b| a.region.cmp(&b.region));
    out
}

fn user_conns_key(user: &UserId) -> String {
    format!("mu:{{{user}}}:conns")
}
fn lease_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:lease")
}
fn index_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:idx")
}
fn reaping_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:reaping")
}
/// Written by a durable publish that was answered from its idempotency key, so that its WAIT
/// has a write to wait for.
fn fence_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:fence")
}
fn inbox_channel(node: &NodeId) -> String {
    format!("mn:{{{node}}}:inbox")
}
const NODES_KEY: &str = "meridian:nodes";
/// How long a command may wait for its reply before the connection is given up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Hash: node id → its open connections, written on every readiness probe.
const CONNS_KEY: &str = "meridian:conns";

/// Commands for the task that owns the pub/sub connection. Processed in order, so a
/// subscribe and an unsubscribe of the same room can never overtake each other.
enum PubSubCmd {
    Subscribe(RoomId, oneshot::Sender<StoreResult<()>>),
    Unsubscribe(RoomId, oneshot::Sender<StoreResult<()>>),
}

/// State shared between the store handle and its pub/sub task.
struct PubSubShared {
    /// Subscription counts per room; the pub/sub task subscribes the rooms with a count > 0.
    counts: Mutex<HashMap<RoomId, usize>>,
    up: AtomicBool,
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
        tokio::spawn(pubsub_task(
            resolver,
            link.watch(),
            inbox_channel(&config.node),
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

    /// Removes one connection from a user's presence (the script announces the user's last
    /// connection in this region).
    async fn drop_presence(&self, user: &UserId, node: &NodeId, conn: u64) -> StoreResult<()> {
        let mut inv = self.scripts.disconnect.prepare_invoke();
        inv.key(user_conns_key(user))
            .arg(format!("{node}|{conn}"))
            .arg(user.as_str());
        let _: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(())
    }

    fn room_script<'a>(&self, script: &'a Script, keys: &RoomKeys) -> redis::ScriptInvocation<'a> {
        self.args.invoke(script, keys)
    }

    async fn leave_token(
        &self,
        room: &RoomId,
        conn: &ConnRef,
        reason: LeftReason,
    ) -> StoreResult<bool> {
        let keys = RoomKeys::new(room);
        let head = RoomEventFrame::left(room, &conn.user, &self.config.region, reason);
        let mut inv = self.room_script(&self.scripts.leave, &keys);
        inv.arg(conn.room_token())
            .arg(conn.user.as_str())
            .arg(head.head());
        let left: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(left == 1)
    }
}

fn index_room_entry(room: &RoomId, conn: &ConnRef) -> String {
    format!("r|{}|{}|{}", conn.conn, conn.user, room)
}
fn index_user_entry(conn: &ConnRef) -> String {
    format!("u|{}|{}", conn.conn, conn.user)
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
        let node = &self.config.node;
        let ttl = self.config.limits.lease_ttl.as_millis() as u64;
        // `SET ... GET` returns the value it replaced: nil means the lease had expired.
        let (previous,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(lease_key(node))
            .arg(&self.config.region)
            .arg("PX")
            .arg(ttl)
            .arg("GET")
            .zadd(NODES_KEY, node.as_str(), now_ms())
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(previous.is_some())
    }

    async fn reaping_in_progress(&self) -> StoreResult<bool> {
        let claimed: bool = self.conn().exists(reaping_key(&self.config.node)).await?;
        Ok(claimed)
    }

    async fn own_index(&self) -> StoreResult<Vec<(u64, UserId, Option<RoomId>)>> {
        let entries: Vec<String> = self.conn().smembers(index_key(&self.config.node)).await?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let mut parts = entry.splitn(4, '|');
                let kind = parts.next()?;
                let conn = parts.next()?.parse::<u64>().ok()?;
                let user = UserId::new(parts.next()?).ok()?;
                match (kind, parts.next()) {
                    ("r", Some(room)) => Some((conn, user, Some(RoomId::new(room).ok()?))),
                    ("u", None) => Some((conn, user, None)),
                    _ => None,
                }
            })
            .collect())
    }

    async fn region_load(&self, connections: u64) -> StoreResult<crate::RegionLoad> {
        let node = &self.config.node;
        let ttl = self.config.limits.lease_ttl.as_millis() as u64;
        let cutoff = now_ms().saturating_sub(ttl);
        let (alive, counts): (Vec<String>, std::collections::HashMap<String, u64>) = redis::pipe()
            .hset(CONNS_KEY, node.as_str(), connections)
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg(cutoff)
            .arg("+inf")
            .hgetall(CONNS_KEY)
            .query_async(&mut self.conn())
            .await?;
        let mut load = crate::RegionLoad {
            connections,
            nodes: 1,
        };
        let mut stale = Vec::new();
        for (other, count) in &counts {
            if other == node.as_str() {
                continue;
            }
            if alive.iter().any(|a| a == other) {
                load.connections += count;
                load.nodes += 1;
            } else {
                stale.push(other.clone());
            }
        }
        if !stale.is_empty() {
            // Dead or departed nodes: forget their counts (best effort).
            let _: redis::RedisResult<()> = redis::cmd("HDEL")
                .arg(CONNS_KEY)
                .arg(&stale)
                .query_async(&mut self.conn())
                .await;
        }
        Ok(load)
    }

    async fn release_lease(&self) -> StoreResult<()> {
        let node = &self.config.node;
        let _: () = redis::pipe()
            .hdel(CONNS_KEY, node.as_str())
            .ignore()
            .del(lease_key(node))
            .ignore()
            .del(index_key(node))
            .ignore()
            .zrem(NODES_KEY, node.as_str())
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn reap_dead_nodes(&self) -> StoreResult<Vec<ReapedNode>> {
        let ttl = self.config.limits.lease_ttl.as_millis() as u64;
        let stale_before = now_ms().saturating_sub(ttl);
        let mut conn = self.conn();
        let candidates: Vec<String> = conn.zrangebyscore(NODES_KEY, "-inf", stale_before).await?;
        let mut reaped = Vec::new();
        for candidate in candidates {
            let Some(node) = NodeId::from_stored(&candidate) else {
                let _: () = conn.zrem(NODES_KEY, &candidate).await?;
                continue;
            };
            if node == self.config.node {
                continue;
            }
            if conn.exists(lease_key(&node)).await? {
                continue;
            }
            // One reaper per dead node at a time; the scripts are idempotent anyway. Claim
            // first, then look at the lease again: a node that renews its expired lease and
            // then finds no claim can be sure no reaper will start on it (one that claimed
            // earlier is visible to it, and it waits for that one to finish).
            let claimed: bool = redis::cmd("SET")
                .arg(reaping_key(&node))
                .arg(self.config.node.as_str())
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async::<Option<String>>(&mut conn)
                .await?
                .is_some();
            if !claimed {
                continue;
            }
            if conn.exists(lease_key(&node)).await? {
                let _: () = conn.del(reaping_key(&node)).await?;
                continue;
            }
            let entries: Vec<String> = conn.smembers(index_key(&node)).await?;
            let mut report = ReapedNode {
                node: node.clone(),
                memberships: 0,
                left_events: 0,
            };
            let mut cleanup = redis::pipe();
            for entry in &entries {
                let mut parts = entry.splitn(4, '|');
                let (kind, conn_no, user) = (parts.next(), parts.next(), parts.next());
                let (Some(conn_no), Some(user)) = (
                    conn_no.and_then(|c| c.parse::<u64>().ok()),
                    user.and_then(|u| UserId::new(u).ok()),
                ) else {
                    tracing::warn!(%node, entry, "skipping malformed node index entry");
                    continue;
                };
                let dead = ConnRef {
                    node: node.clone(),
                    conn: conn_no,
                    user,
                };
                match (kind, parts.next().map(RoomId::new)) {
                    (Some("r"), Some(Ok(room))) => {
                        report.memberships += 1;
                        if self.leave_token(&room, &dead, LeftReason::NodeLost).await? {
                            report.left_events += 1;
                        }
                    }
                    (Some("u"), None) => {
                        self.drop_presence(&dead.user, &node, dead.conn).await?;
                    }
                    _ => tracing::warn!(%node, entry, "skipping malformed node index entry"),
                }
            }
            cleanup
                .del(index_key(&node))
                .ignore()
                .zrem(NODES_KEY, node.as_str())
                .ignore()
                .del(reaping_key(&node))
                .ignore();
            let _: () = cleanup.query_async(&mut conn).await?;
            reaped.push(report);
        }
        Ok(reaped)
    }

    async fn connect(&self, conn: &ConnRef) -> StoreResult<()> {
        // Index first (crash safety), then the presence script, which also tells the relay
        // about the user's first connection in this region.
        let mut c = self.conn();
        let _: () = c
            .sadd(index_key(&conn.node), index_user_entry(conn))
            .await?;
        let mut inv = self.scripts.connect.prepare_invoke();
        inv.key(user_conns_key(&conn.user))
            .arg(format!("{}|{}", conn.node, conn.conn))
            .arg(format!("{}|{}", self.config.region, now_ms()))
            .arg(conn.user.as_str());
        let _: i64 = inv.invoke_async(&mut c).await?;
        Ok(())
    }

    async fn disconnect(&self, conn: &ConnRef) -> StoreResult<()> {
        let mut c = self.conn();
        self.drop_presence(&conn.user, &conn.node, conn.conn)
            .await?;
        let _: () = c
            .srem(index_key(&conn.node), index_user_entry(conn))
            .await?;
        Ok(())
    }

    async fn presence(&self, users: &[UserId]) -> StoreResult<Vec<PresenceEntry>> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.hgetall(user_conns_key(user));
        }
        let per_user: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await?;
        // Connections count only while their node's lease lives.
        let nodes: BTreeSet<&str> = per_user
            .iter()
            .flat_map(|m| m.keys())
            .filter_map(|field| field.split('|').next())
            .collect();
        let mut lease_pipe = redis::pipe();
        for node in &nodes {
            lease_pipe.exists(format!("mn:{{{node}}}:lease"));
        }
        let alive: Vec<bool> = if nodes.is_empty() {
            Vec::new()
        } else {
            lease_pipe.query_async(&mut self.conn()).await?
        };
        let live: HashSet<&str> = nodes
            .iter()
            .zip(alive)
            .filter_map(|(n, a)| a.then_some(*n))
            .collect();
        Ok(users
            .iter()
            .zip(&per_user)
            .map(|(user, conns)| {
                let mut connections = 0;
                let mut regions = BTreeSet::new();
                for (field, value) in conns {
                    if field.split('|').next().is_some_and(|n| live.contains(n)) {
                        connections += 1;
                        regions.insert(value.split('|').next().unwrap_or_default().to_owned());
                    }
                }
                PresenceEntry {
                    user: user.clone(),
                    online: connections > 0,
                    connections,
                    regions: regions.into_iter().collect(),
                }
            })
            .collect())
    }

    async fn join(
        &self,
        room: &RoomId,
        conn: &ConnRef,
        max_members: u32,
    ) -> StoreResult<JoinOutcome> {
        let keys = RoomKeys::new(room);
        let index_entry = index_room_entry(room, conn);
        let mut c = self.conn();
        // Index first: a crash after this leaves an entry whose reaping is a no-op.
        let _: () = c.sadd(index_key(&conn.node), &index_entry).await?;
        let head = RoomEventFrame::joined(room, &conn.user, &self.config.region);
        let mut inv = self.room_script(&self.scripts.join, &keys);
        inv.arg(conn.room_token())
            .arg(conn.user.as_str())
            .arg(max_members)
            .arg(head.head());
        let (status, epoch, seq, marks): (i64, String, u64, Vec<String>) =
            inv.invoke_async(&mut c).await?;
        if status < 0 {
            let _: () = c.srem(index_key(&conn.node), &index_entry).await?;
            return Err(StoreError::RoomFull { max: max_members });
        }
        Ok(JoinOutcome {
            first: status == 1,
            epoch,
            seq,
            origins: parse_watermarks(marks.chunks_exact(2).map(|c| (&c[0], &c[1]))),
        })
    }

    async fn leave(&self, room: &RoomId, conn: &ConnRef, reason: LeftReason) -> StoreResult<bool> {
        let left = self.leave_token(room, conn, reason).await?;
        let _: () = self
            .conn()
            .srem(index_key(&conn.node), index_room_entry(room, conn))
            .await?;
        Ok(left)
    }

    async fn members(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<MemberPage> {
        let keys = RoomKeys::new(room);
        let min = after.map_or_else(|| "-".to_owned(), |u| format!("({u}"));
        let limit = limit.max(1);
        let mut c = self.conn();
        let users: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(&keys.keys[k::MEM])
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut c)
            .await?;
        let has_more = users.len() > limit as usize;
        let users: Vec<String> = users.into_iter().take(limit as usize).collect();
        let regions: Vec<Option<String>> = if users.is_empty() {
            Vec::new()
        } else {
            redis::cmd("HMGET")
                .arg(&keys.keys[k::REG])
                .arg(&users)
                .query_async(&mut c)
                .await?
        };
        let members = users
            .into_iter()
            .zip(regions)
            .filter_map(|(u, r)| {
                Some(MemberEntry {
                    user: UserId::new(u).ok()?,
                    region: r.unwrap_or_default(),
                })
            })
            .collect::<Vec<_>>();
        let next = if has_more {
            members.last().map(|m| m.user.clone())
        } else {
            None
        };
        Ok(MemberPage { members, next })
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
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // One script for the batch: the budget is charged, the items are sequenced in order
        // and atomically, and a NOSCRIPT retry (after a restart or failover) repeats all of
        // them or none.
        let keys = RoomKeys::new(room);
        let mut inv = self.room_script(&self.scripts.publish, &keys);
        match budget {
            Some((name, limit)) => {
                let window_ms = (budget_window.as_millis() as u64).max(1);
                let slot = now_ms() / window_ms;
                inv.arg(limit)
                    .arg(window_ms * 2)
                    .key(format!("mb:{{{name}}}:{slot}"));
            }
            None => {
                inv.arg("").arg(0).key(&keys.keys[k::IDEM]);
            }
        }
        let window = self.config.limits.idempotency_window.as_millis() as u64;
        for item in items {
            inv.arg(item.frame.head());
            match item.idempotency {
                Some((user, key)) => {
                    inv.arg(window);
                    inv.key(format!("{}{}|{}", keys.keys[k::IDEM], user, key));
                }
                None => {
                    inv.arg("");
                    inv.key(&keys.keys[k::IDEM]);
                }
            }
        }
        let published = |rows: Vec<(i64, String, u64)>| {
            if let [(-1, _, limit)] = rows[..] {
                return Err(StoreError::BudgetSpent { limit });
            }
            if rows.len() != items.len() {
                return Err(StoreError::Corrupt(format!(
                    "publish script returned {} results for {} publishes",
                    rows.len(),
                    items.len()
                )));
            }
            Ok(rows
                .into_iter()
                .map(|(status, epoch, seq)| Published {
                    seq,
                    epoch,
                    duplicate: status == 0,
                })
                .collect::<Vec<_>>())
        };
        let Some((durability, link)) = self.config.durable.zip(self.durable_link.as_ref()) else {
            return published(inv.invoke_async(&mut self.conn()).await?);
        };
        // One pinned connection for the script and its WAIT: WAIT counts the replicas that
        // have this connection's writes.
        let mut conn = LinkConn::new(link.clone());
        let out = published(inv.invoke_async(&mut conn).await?)?;
        let timeout_ms = durability.timeout.as_millis() as u64;
        let acked: u64 = if out.iter().all(|p| p.duplicate) {
            // Retries answered from their idempotency keys wrote nothing on this connection,
            // so a bare WAIT would not cover the first attempts. Any write moves this
            // connection's replication offset past them (they are already in the data set).
            let (acked,): (u64,) = redis::pipe()
                .cmd("SET")
                .arg(fence_key(&self.config.node))
                .arg(out.last().map_or(0, |p| p.seq))
                .arg("PX")
                .arg(60_000)
                .ignore()
                .cmd("WAIT")
                .arg(durability.replicas)
                .arg(timeout_ms)
                .query_async(&mut conn)
                .await?;
            acked
        } else {
            redis::cmd("WAIT")
                .arg(durability.replicas)
                .arg(timeout_ms)
                .query_async(&mut conn)
                .await?
        };
        if acked < u64::from(durability.replicas) {
            return Err(StoreError::NotDurable {
                acked,
                wanted: durability.replicas,
            });
        }
        Ok(out)
    }

    async fn history(&self, room: &RoomId, epoch: &str, seq: u64) -> StoreResult<Recovery> {
        let keys = RoomKeys::new(room);
        let max = self.config.limits.max_replay;
        let ((cur_epoch, cur_seq), oldest, newer): (
            (Option<String>, Option<u64>),
            StreamRangeReply,
            StreamRangeReply,
        ) = history_after(&keys, seq, (max as usize).saturating_add(1))
            .query_async(&mut self.conn())
            .await?;
        let oldest = oldest.ids.first().and_then(|e| entry_seq(&e.id));
        let events = stored_entries(&newer)?
            .into_iter()
            .map(|e| (e.seq, e.frame))
            .collect();
        Ok(crate::memory::decide_recovery(
            cur_epoch.as_deref().unwrap_or(""),
            cur_seq.unwrap_or(0),
            oldest,
            epoch,
            seq,
            max,
            events,
        ))
    }

    async fn want_replay(&self, room: &RoomId, vector: &[OriginPosition]) -> StoreResult<()> {
        let wanted: Vec<&OriginPosition> = vector
            .iter()
            .filter(|o| o.region != self.config.region)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.want_replay.key(want_key(room));
        inv.arg(WANT_REPLAY_TTL_MS);
        for o in wanted {
            inv.arg(&o.region).arg(&o.epoch).arg(o.seq);
        }
        let _: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn history_since(
        &self,
        room: &RoomId,
        vector: &[OriginPosition],
    ) -> StoreResult<Recovery> {
        let keys = RoomKeys::new(room);
        let max = self.config.limits.max_replay;
        let ((cur_epoch, cur_seq), all): ((Option<String>, Option<u64>), StreamRangeReply) =
            redis::pipe()
                .atomic()
                .cmd("HMGET")
                .arg(&keys.keys[k::META])
                .arg("epoch")
                .arg("seq")
                .cmd("XRANGE")
                .arg(&keys.keys[k::HIST])
                .arg("-")
                .arg("+")
                .query_async(&mut self.conn())
                .await?;
        let cur_epoch = cur_epoch.unwrap_or_default();
        let cur_seq = cur_seq.unwrap_or(0);
        let entries = stored_entries(&all)?
            .into_iter()
            .map(|e| (e.seq, e.origin, e.frame))
            .collect();
        Ok(crate::memory::decide_vector_recovery(
            &self.config.region,
            &cur_epoch,
            cur_seq,
            vector,
            max,
            entries,
        ))
    }

    async fn send_direct(&self, to: &UserId, frame: &str) -> StoreResult<bool> {
        // One round trip: the script looks the user's connections up and publishes to each
        // node's inbox (it was HKEYS, then a pipeline of PUBLISH).
        let mut inv = self.scripts.send_direct.prepare_invoke();
        inv.key(user_conns_key(to)).arg(format!("{to} {frame}"));
        let receivers: u64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(receivers > 0)
    }

    async fn shares_room(&self, rooms: &[RoomId], users: &[UserId]) -> StoreResult<Vec<bool>> {
        let mut shared = vec![false; users.len()];
        if rooms.is_empty() || users.is_empty() {
            return Ok(shared);
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("ZMSCORE")
                .arg(&RoomKeys::new(room).keys[k::MEM])
                .arg(users.iter().map(UserId::as_str).collect::<Vec<_>>());
        }
        let scores: Vec<Vec<Option<f64>>> = pipe.query_async(&mut self.conn()).await?;
        for per_room in scores {
            for (s, score) in shared.iter_mut().zip(per_room) {
                *s |= score.is_some();
            }
        }
        Ok(shared)
    }

    async fn spend(&self, budgets: &[Budget<'_>], window: Duration) -> StoreResult<Option<usize>> {
        if budgets.is_empty() {
            return Ok(None);
        }
        let window_ms = (window.as_millis() as u64).max(1);
        let slot = now_ms() / window_ms;
        let mut inv = self.scripts.spend.prepare_invoke();
        inv.arg(window_ms * 2);
        for b in budgets {
            inv.key(format!("mb:{{{}}}:{slot}", b.name))
                .arg(b.cost)
                .arg(b.limit);
        }
        let over: usize = inv.invoke_async(&mut self.conn()).await?;
        Ok(over.checked_sub(1))
    }

    async fn state_set(
        &self,
        room: &RoomId,
        key: &str,
        value: &RawValue,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<u64> {
        let keys = RoomKeys::new(room);
        let head = RoomEventFrame::state_changed(room, key, Some(value), by);
        let mut inv = self.room_script(&self.scripts.state_set, &keys);
        inv.arg(key)
            .arg(value.get())
            .arg(if_version.map_or(-1, |v| v as i64))
            .arg(head.head())
            .arg(by.as_str());
        let (status, version): (i64, u64) = inv.invoke_async(&mut self.conn()).await?;
        if status < 0 {
            return Err(StoreError::VersionConflict { current: version });
        }
        Ok(version)
    }

    async fn state_get(&self, room: &RoomId, key: Option<&str>) -> StoreResult<Vec<StateEntry>> {
        let keys = RoomKeys::new(room);
        let mut c = self.conn();
        let pairs: Vec<(String, Option<String>, Option<u64>)> = match key {
            Some(key) => {
                let (value, version): (Option<String>, Option<u64>) = redis::pipe()
                    .atomic()
                    .hget(&keys.keys[k::ST], key)
                    .hget(&keys.keys[k::SV], key)
                    .query_async(&mut c)
                    .await?;
                vec![(key.to_owned(), value, version)]
            }
            None => {
                let (values, versions): (HashMap<String, String>, HashMap<String, u64>) =
                    redis::pipe()
                        .atomic()
                        .hgetall(&keys.keys[k::ST])
                        .hgetall(&keys.keys[k::SV])
                        .query_async(&mut c)
                        .await?;
                let mut all: Vec<_> = values
                    .into_iter()
                    .map(|(k, v)| {
                        let version = versions.get(&k).copied();
                        (k, Some(v), version)
                    })
                    .collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                all
            }
        };
        let mut out = Vec::new();
        for (key, value, version) in pairs {
            if let (Some(value), Some(version)) = (value, version) {
                let value = RawValue::from_string(value)
                    .map_err(|e| StoreError::Corrupt(format!("state key {key}: {e}")))?;
                out.push(StateEntry {
                    key,
                    value,
                    version,
                });
            }
        }
        Ok(out)
    }

    async fn state_delete(
        &self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
        by: &UserId,
    ) -> StoreResult<bool> {
        let keys = RoomKeys::new(room);
        let head = RoomEventFrame::state_changed(room, key, None, by);
        let mut inv = self.room_script(&self.scripts.state_delete, &keys);
        inv.arg(key)
            .arg(if_version.map_or(-1, |v| v as i64))
            .arg(head.head())
            .arg(by.as_str());
        let (status, version): (i64, u64) = inv.invoke_async(&mut self.conn()).await?;
        if status < 0 {
            return Err(StoreError::VersionConflict { current: version });
        }
        Ok(status == 1)
    }

    async fn subscribe(&self, room: &RoomId) -> StoreResult<()> {
        {
            let mut counts = self.pubsub.counts.lock().unwrap_or_else(|p| p.into_inner());
            *counts.entry(room.clone()).or_insert(0) += 1;
        }
        let (ack, acked) = oneshot::channel();
        let result = match self.commands.send(PubSubCmd::Subscribe(room.clone(), ack)) {
            Ok(()) => match tokio::time::timeout(Duration::from_secs(3), acked).await {
                Ok(Ok(r)) => r,
                _ => Err(StoreError::PubSubDown),
            },
            Err(_) => Err(StoreError::PubSubDown),
        };
        if result.is_err() {
            // Undo the count so a failed join leaves no subscription behind.
            self.unsubscribe(room).await?;
        }
        result
    }

    async fn unsubscribe(&self, room: &RoomId) -> StoreResult<()> {
        {
            let mut counts = self.pubsub.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = counts.get_mut(room) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(room);
                }
            }
        }
        // The task re-checks the count when it gets here, so a join racing in between keeps
        // the subscription.
        let (ack, acked) = oneshot::channel();
        if self
            .commands
            .send(PubSubCmd::Unsubscribe(room.clone(), ack))
            .is_err()
        {
            return Err(StoreError::PubSubDown);
        }
        match tokio::time::timeout(Duration::from_secs(3), acked).await {
            Ok(Ok(r)) => r,
            _ => Err(StoreError::PubSubDown),
        }
    }
}

fn room_channel(room: &RoomId) -> String {
    format!("mr:{{{room}}}:ev")
}

/// Owns the pub/sub connection: applies subscription commands in order, forwards messages to
/// the node, and on connection loss reconnects with backoff and restores every subscription.
///
/// The connection is also given up (and re-made on the current primary) when a ping goes
/// unanswered — a half-open socket or a paused server sends no FIN — and when the command link
/// reconnects to a different server than the one this connection is on (a failover).
#[allow(clippy::too_many_arguments)]
async fn pubsub_task(
    resolver: Arc<Resolver>,
    mut primary: tokio::sync::watch::Receiver<(u64, String)>,
    inbox: String,
    shared: Arc<PubSubShared>,
    mut commands: mpsc::UnboundedReceiver<PubSubCmd>,
    inbound: mpsc::Sender<Inbound>,
    ready: oneshot::Sender<StoreResult<()>>,
) {
    const OP_TIMEOUT: Duration = Duration::from_secs(2);
    const PING_EVERY: Duration = Duration::from_secs(1);
    let timed = |what: &'static str| {
        move |r: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>| match r {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                what,
            ))),
        }
    };
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
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
            timed("subscribe timed out")(
                tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&inbox)).await,
            )?;
            let rooms: Vec<RoomId> = {
                let counts = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
                counts.keys().cloned().collect()
            };
            // One channel per command: redis-rs pairs each SUBSCRIBE with one confirmation.
            for room in &rooms {
                timed("subscribe timed out")(
                    tokio::time::timeout(OP_TIMEOUT, sink.subscribe(room_channel(room))).await,
                )?;
            }
            Ok::<_, redis::RedisError>((sink, stream, rooms, address))
        }
        .await;
        let (mut sink, mut stream, rooms, address) = match connected {
            Ok(c) => c,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e.into()));
                    return;
                }
                tracing::warn!(error = %e, "redis pub/sub reconnect failed; retrying");
                if commands.is_closed() {
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
        shared.up.store(true, Ordering::Relaxed);
        primary.mark_unchanged();
        let mut active: HashSet<RoomId> = rooms.into_iter().collect();
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            None => {
                tracing::info!(
                    rooms = active.len(),
                    %address,
                    "redis pub/sub reconnected; subscriptions restored"
                );
                let _ = inbound.send(Inbound::Resubscribed).await;
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let result = match cmd {
                        PubSubCmd::Subscribe(room, ack) => {
                            let r = if active.contains(&room) {
                                Ok(())
                            } else {
                                timed("subscribe timed out")(
                                    tokio::time::timeout(OP_TIMEOUT, sink.subscribe(room_channel(&room))).await,
                                )
                                .map(|()| {
                                    active.insert(room);
                                })
                            };
                            let failed = r.is_err();
                            let _ = ack.send(r.map_err(StoreError::from));
                            if failed { Err(()) } else { Ok(()) }
                        }
                        PubSubCmd::Unsubscribe(room, ack) => {
                            let wanted = {
                                let counts = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
                                counts.contains_key(&room)
                            };
                            let r = if !wanted && active.remove(&room) {
                                timed("unsubscribe timed out")(
                                    tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(room_channel(&room))).await,
                                )
                            } else {
                                Ok(())
                            };
                            let failed = r.is_err();
                            let _ = ack.send(r.map_err(StoreError::from));
                            if failed { Err(()) } else { Ok(()) }
                        }
                    };
                    if result.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!(%address, "redis pub/sub ping unanswered");
                        break;
                    }
                }
                changed = primary.changed() => {
                    if changed.is_err() {
                        // The store is gone.
                        return;
                    }
                    let now = primary.borrow_and_update().1.clone();
                    if now != address {
                        tracing::info!(from = %address, to = %now, "redis primary moved; moving pub/sub");
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let channel = msg.get_channel_name();
                    let payload = msg.get_payload_bytes();
                    let item = if channel == inbox {
                        split_user(payload)
                    } else {
                        room_of_channel(channel).and_then(|room| {
                            split_seq(payload).map(|(seq, epoch, frame)| Inbound::Room {
                                room,
                                seq,
                                epoch,
                                frame,
                            })
                        })
                    };
                    match item {
                        Some(item) => {
                            if inbound.send(item).await.is_err() {
                                return;
                            }
                        }
                        None => tracing::warn!(channel, "dropping malformed pub/sub message"),
                    }
                }
            }
        }
        shared.up.store(false, Ordering::Relaxed);
        tracing::warn!(%address, "redis pub/sub connection lost; reconnecting");
    }
}

/// Parses a node inbox payload `"<user> <frame>"`.
fn split_user(payload: &[u8]) -> Option<Inbound> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let user = UserId::new(std::str::from_utf8(&payload[..space]).ok()?).ok()?;
    Some(Inbound::Direct {
        user,
        frame: Bytes::copy_from_slice(&payload[space + 1..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_round_trip() {
        let room = RoomId::new("a/b:c").unwrap();
        assert_eq!(room_of_channel(&room_channel(&room)), Some(room));
        assert_eq!(room_of_channel("mn:{x}:inbox"), None);
    }

    #[test]
    fn malformed_inbox_payloads_are_rejected() {
        assert!(split_user(b"nospace").is_none());
        assert!(split_user(b"bad{user {}").is_none());
        assert!(matches!(
            split_user(b"bob {\"x\":1}"),
            Some(Inbound::Direct { .. })
        ));
        assert!(split_seq(b"x e {}").is_none());
        assert!(split_seq(b"7 {}").is_none());
        assert_eq!(
            split_seq(b"7 ep {}").map(|(s, e, _)| (s, e.to_string())),
            Some((7, "ep".into()))
        );
    }
}
