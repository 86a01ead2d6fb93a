//! Node leases and the reaper: a node renews `mn:{node}:lease` and its place in
//! `meridian:nodes`; any other node reaps one whose lease expired, replaying its index as leaves
//! (`left {reason: node_lost}`) and disconnects. Also the region's load and a node's own index.

use redis::AsyncCommands;

use super::keys::{index_key, lease_key, reaping_key, CONNS_KEY, NODES_KEY};
use super::{presence, rooms, RedisStore};
use crate::{now_ms, ConnRef, NodeId, ReapedNode, StoreResult};
use meridian_protocol::{LeftReason, RoomId, UserId};

pub(super) async fn renew_lease_checked(store: &RedisStore) -> StoreResult<bool> {
    let node = &store.config.node;
    let ttl = store.config.limits.lease_ttl.as_millis() as u64;
    // `SET ... GET` returns the value it replaced: nil means the lease had expired.
    let (previous,): (Option<String>,) = redis::pipe()
        .cmd("SET")
        .arg(lease_key(node))
        .arg(&store.config.region)
        .arg("PX")
        .arg(ttl)
        .arg("GET")
        .zadd(NODES_KEY, node.as_str(), now_ms())
        .ignore()
        .query_async(&mut store.conn())
        .await?;
    Ok(previous.is_some())
}

pub(super) async fn reaping_in_progress(store: &RedisStore) -> StoreResult<bool> {
    let claimed: bool = store.conn().exists(reaping_key(&store.config.node)).await?;
    Ok(claimed)
}

pub(super) async fn own_index(
    store: &RedisStore,
) -> StoreResult<Vec<(u64, UserId, Option<RoomId>)>> {
    let entries: Vec<String> = store.conn().smembers(index_key(&store.config.node)).await?;
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

pub(super) async fn region_load(
    store: &RedisStore,
    connections: u64,
) -> StoreResult<crate::RegionLoad> {
    let node = &store.config.node;
    let ttl = store.config.limits.lease_ttl.as_millis() as u64;
    let cutoff = now_ms().saturating_sub(ttl);
    let (alive, counts): (Vec<String>, std::collections::HashMap<String, u64>) = redis::pipe()
        .hset(CONNS_KEY, node.as_str(), connections)
        .ignore()
        .cmd("ZRANGEBYSCORE")
        .arg(NODES_KEY)
        .arg(cutoff)
        .arg("+inf")
        .hgetall(CONNS_KEY)
        .query_async(&mut store.conn())
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
            .query_async(&mut store.conn())
            .await;
    }
    Ok(load)
}

pub(super) async fn release_lease(store: &RedisStore) -> StoreResult<()> {
    let node = &store.config.node;
    let _: () = redis::pipe()
        .hdel(CONNS_KEY, node.as_str())
        .ignore()
        .del(lease_key(node))
        .ignore()
        .del(index_key(node))
        .ignore()
        .zrem(NODES_KEY, node.as_str())
        .ignore()
        .query_async(&mut store.conn())
        .await?;
    Ok(())
}

pub(super) async fn reap_dead_nodes(store: &RedisStore) -> StoreResult<Vec<ReapedNode>> {
    let ttl = store.config.limits.lease_ttl.as_millis() as u64;
    let stale_before = now_ms().saturating_sub(ttl);
    let mut conn = store.conn();
    let candidates: Vec<String> = conn.zrangebyscore(NODES_KEY, "-inf", stale_before).await?;
    let mut reaped = Vec::new();
    for candidate in candidates {
        let Some(node) = NodeId::from_stored(&candidate) else {
            let _: () = conn.zrem(NODES_KEY, &candidate).await?;
            continue;
        };
        if node == store.config.node {
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
            .arg(store.config.node.as_str())
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
                    if rooms::leave_token(store, &room, &dead, LeftReason::NodeLost).await? {
                        report.left_events += 1;
                    }
                }
                (Some("u"), None) => {
                    presence::drop_presence(store, &dead.user, &node, dead.conn).await?;
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
