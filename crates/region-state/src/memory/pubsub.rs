//! Counted room subscriptions per node (the fan-out itself is `append` in `publish`).

use meridian_protocol::RoomId;

use super::MemoryStore;
use crate::StoreResult;

pub(super) async fn subscribe(store: &MemoryStore, room: &RoomId) -> StoreResult<()> {
    *store
        .lock()
        .nodes
        .entry(store.node.clone())
        .or_default()
        .subscriptions
        .entry(room.clone())
        .or_insert(0) += 1;
    Ok(())
}

pub(super) async fn unsubscribe(store: &MemoryStore, room: &RoomId) -> StoreResult<()> {
    let mut s = store.lock();
    if let Some(link) = s.nodes.get_mut(&store.node) {
        if let Some(c) = link.subscriptions.get_mut(room) {
            *c -= 1;
            if *c == 0 {
                link.subscriptions.remove(room);
            }
        }
    }
    Ok(())
}
