//! Names of the keys and channels outside a room's hash tag (a room's own keys are
//! `scripts::RoomKeys`): a user's connections, a node's lease, index, reaping claim, fence and
//! inbox, and the region-wide node and load sets. See `docs/redis-schema.md`.

use meridian_protocol::{RoomId, UserId};

use crate::{ConnRef, NodeId};

pub(super) fn user_conns_key(user: &UserId) -> String {
    format!("mu:{{{user}}}:conns")
}
pub(super) fn lease_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:lease")
}
pub(super) fn index_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:idx")
}
pub(super) fn reaping_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:reaping")
}
/// Written by a durable publish that was answered from its idempotency key, so that its WAIT
/// has a write to wait for.
pub(super) fn fence_key(node: &NodeId) -> String {
    format!("mn:{{{node}}}:fence")
}
pub(super) fn inbox_channel(node: &NodeId) -> String {
    format!("mn:{{{node}}}:inbox")
}
/// Sorted set: node id → when its lease was last renewed (ms); the reaper's candidates.
pub(super) const NODES_KEY: &str = "meridian:nodes";
/// Hash: node id → its open connections, written on every readiness probe.
pub(super) const CONNS_KEY: &str = "meridian:conns";

pub(super) fn index_room_entry(room: &RoomId, conn: &ConnRef) -> String {
    format!("r|{}|{}|{}", conn.conn, conn.user, room)
}
pub(super) fn index_user_entry(conn: &ConnRef) -> String {
    format!("u|{}|{}", conn.conn, conn.user)
}
