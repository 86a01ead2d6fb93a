//! Node leases and the reaper: a lease is an expiry instant; a node whose lease expired is
//! reaped by any other, its index replayed as leaves (`left {reason: node_lost}`) and
//! disconnects.

use std::time::Instant;

use meridian_protocol::LeftReason;

use super::MemoryStore;
use crate::{ConnRef, NodeId, ReapedNode, StoreResult};

pub(super) async fn renew_lease(store: &MemoryStore) -> StoreResult<()> {
    let expiry = Instant::now() + store.limits.lease_ttl;
    store.lock().leases.insert(store.node.clone(), expiry);
    Ok(())
}

pub(super) async fn release_lease(store: &MemoryStore) -> StoreResult<()> {
    let mut s = store.lock();
    s.leases.remove(&store.node);
    s.index.remove(&store.node);
    Ok(())
}

pub(super) async fn reap_dead_nodes(store: &MemoryStore) -> StoreResult<Vec<ReapedNode>> {
    let mut s = store.lock();
    let dead: Vec<NodeId> = s
        .index
        .keys()
        // Like the Redis schema's node set: only nodes that held a lease can expire.
        .filter(|n| **n != store.node && s.leases.contains_key(*n) && !s.lease_alive(n))
        .cloned()
        .collect();
    let mut reaped = Vec::new();
    for node in dead {
        let entries = s.index.remove(&node).unwrap_or_default();
        s.leases.remove(&node);
        let mut report = ReapedNode {
            node: node.clone(),
            memberships: 0,
            left_events: 0,
        };
        for (room, conn_no, user) in entries {
            let conn = ConnRef {
                node: node.clone(),
                conn: conn_no,
                user,
            };
            match room {
                Some(room) => {
                    report.memberships += 1;
                    if s.leave(
                        &room,
                        &conn,
                        &store.region,
                        LeftReason::NodeLost,
                        &store.limits,
                    ) {
                        report.left_events += 1;
                    }
                }
                None => {
                    if let Some(p) = s.presence.get_mut(&conn.user) {
                        p.remove(&(node.clone(), conn_no));
                        if p.is_empty() {
                            s.presence.remove(&conn.user);
                        }
                    }
                }
            }
        }
        reaped.push(report);
    }
    Ok(reaped)
}
