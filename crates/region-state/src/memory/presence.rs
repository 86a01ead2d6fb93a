//! Presence and direct messages: a user's connections, counted while their node's lease lives,
//! and direct messages handed to each node holding one.

use std::collections::BTreeSet;

use bytes::Bytes;
use meridian_protocol::{PresenceEntry, UserId};

use super::MemoryStore;
use crate::{ConnRef, Inbound, NodeId, StoreResult};

pub(super) async fn connect(store: &MemoryStore, conn: &ConnRef) -> StoreResult<()> {
    let mut s = store.lock();
    s.index
        .entry(conn.node.clone())
        .or_default()
        .insert((None, conn.conn, conn.user.clone()));
    s.presence
        .entry(conn.user.clone())
        .or_default()
        .insert((conn.node.clone(), conn.conn), store.region.clone());
    Ok(())
}

pub(super) async fn disconnect(store: &MemoryStore, conn: &ConnRef) -> StoreResult<()> {
    let mut s = store.lock();
    if let Some(p) = s.presence.get_mut(&conn.user) {
        p.remove(&(conn.node.clone(), conn.conn));
        if p.is_empty() {
            s.presence.remove(&conn.user);
        }
    }
    if let Some(idx) = s.index.get_mut(&conn.node) {
        idx.remove(&(None, conn.conn, conn.user.clone()));
    }
    Ok(())
}

pub(super) async fn presence(
    store: &MemoryStore,
    users: &[UserId],
) -> StoreResult<Vec<PresenceEntry>> {
    let s = store.lock();
    Ok(users
        .iter()
        .map(|user| {
            crate::rules::presence_from_live(
                user,
                s.presence
                    .get(user)
                    .into_iter()
                    .flatten()
                    .filter(|((node, _), _)| s.lease_alive(node))
                    .map(|(_, region)| region.as_str()),
            )
        })
        .collect())
}

pub(super) async fn send_direct(
    store: &MemoryStore,
    to: &UserId,
    frame: &str,
) -> StoreResult<bool> {
    let s = store.lock();
    let nodes: BTreeSet<&NodeId> = s
        .presence
        .get(to)
        .into_iter()
        .flatten()
        .map(|((n, _), _)| n)
        .collect();
    let frame = Bytes::copy_from_slice(frame.as_bytes());
    let mut delivered = false;
    for node in nodes {
        if let Some(tx) = s.nodes.get(node).and_then(|l| l.inbound.as_ref()) {
            delivered |= tx
                .try_send(Inbound::Direct {
                    user: to.clone(),
                    frame: frame.clone(),
                })
                .is_ok();
        }
    }
    Ok(delivered)
}
