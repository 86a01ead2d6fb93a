//! History reads for resume by `(epoch, seq)`; the decision is `rules::decide_recovery`, as
//! for the Redis store.

use bytes::Bytes;
use meridian_protocol::RoomId;

use super::MemoryStore;
use crate::rules::decide_recovery;
use crate::{Recovery, StoreResult};

pub(super) async fn history(
    store: &MemoryStore,
    room: &RoomId,
    epoch: &str,
    seq: u64,
) -> StoreResult<Recovery> {
    let s = store.lock();
    let Some(r) = s.rooms.get(room) else {
        return Ok(decide_recovery(
            "",
            0,
            None,
            epoch,
            seq,
            store.limits.max_replay,
            Vec::new(),
        ));
    };
    let events: Vec<(u64, Bytes)> = r
        .history
        .iter()
        .filter(|(s, _)| *s > seq)
        .take(store.limits.max_replay as usize + 1)
        .cloned()
        .collect();
    Ok(decide_recovery(
        &r.epoch,
        r.seq,
        r.history.front().map(|(s, _)| *s),
        epoch,
        seq,
        store.limits.max_replay,
        events,
    ))
}
