//! Presence and direct messages: a user's connections (`mu:{user}:conns`), counted while their
//! node's lease lives, and the script that hands a direct message to each node holding one.

use std::collections::{BTreeSet, HashMap, HashSet};

use meridian_protocol::{PresenceEntry, UserId};
use redis::AsyncCommands;

use super::keys::{index_key, index_user_entry, user_conns_key};
use super::RedisStore;
use crate::{now_ms, ConnRef, NodeId, StoreResult};

/// Removes one connection from a user's presence (the script announces the user's last
/// connection in this region).
pub(super) async fn drop_presence(
    store: &RedisStore,
    user: &UserId,
    node: &NodeId,
    conn: u64,
) -> StoreResult<()> {
    let mut inv = store.scripts.disconnect.prepare_invoke();
    inv.key(user_conns_key(user))
        .arg(format!("{node}|{conn}"))
        .arg(user.as_str())
        .arg(&store.config.region);
    let _: i64 = inv.invoke_async(&mut store.conn()).await?;
    Ok(())
}

pub(super) async fn connect(store: &RedisStore, conn: &ConnRef) -> StoreResult<()> {
    // Index first (crash safety), then the presence script, which also tells the relay
    // about the user's first connection in this region.
    let mut c = store.conn();
    let _: () = c
        .sadd(index_key(&conn.node), index_user_entry(conn))
        .await?;
    let mut inv = store.scripts.connect.prepare_invoke();
    inv.key(user_conns_key(&conn.user))
        .arg(format!("{}|{}", conn.node, conn.conn))
        .arg(format!("{}|{}", store.config.region, now_ms()))
        .arg(conn.user.as_str());
    let _: i64 = inv.invoke_async(&mut c).await?;
    Ok(())
}

pub(super) async fn disconnect(store: &RedisStore, conn: &ConnRef) -> StoreResult<()> {
    let mut c = store.conn();
    drop_presence(store, &conn.user, &conn.node, conn.conn).await?;
    let _: () = c
        .srem(index_key(&conn.node), index_user_entry(conn))
        .await?;
    Ok(())
}

pub(super) async fn presence(
    store: &RedisStore,
    users: &[UserId],
) -> StoreResult<Vec<PresenceEntry>> {
    let mut pipe = redis::pipe();
    for user in users {
        pipe.hgetall(user_conns_key(user));
    }
    let per_user: Vec<HashMap<String, String>> = pipe.query_async(&mut store.conn()).await?;
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
        lease_pipe.query_async(&mut store.conn()).await?
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
            crate::rules::presence_from_live(
                user,
                conns
                    .iter()
                    .filter(|(field, _)| field.split('|').next().is_some_and(|n| live.contains(n)))
                    .map(|(_, value)| value.split('|').next().unwrap_or_default()),
            )
        })
        .collect())
}

pub(super) async fn send_direct(store: &RedisStore, to: &UserId, frame: &str) -> StoreResult<bool> {
    // One round trip: the script looks the user's connections up and publishes to each
    // node's inbox (it was HKEYS, then a pipeline of PUBLISH).
    let mut inv = store.scripts.send_direct.prepare_invoke();
    inv.key(user_conns_key(to)).arg(format!("{to} {frame}"));
    let receivers: u64 = inv.invoke_async(&mut store.conn()).await?;
    Ok(receivers > 0)
}
