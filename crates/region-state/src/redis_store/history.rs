//! History reads for resume: by `(epoch, seq)` within this region, by version vector across
//! regions, and the replay positions a resuming client asks of other regions.

use meridian_protocol::{OriginPosition, RoomId};
use redis::streams::StreamRangeReply;

use super::RedisStore;
use crate::scripts::{
    entry_seq, history_after, k, stored_entries, want_key, RoomKeys, WANT_REPLAY_TTL_MS,
};
use crate::{Recovery, StoreResult};

pub(super) async fn history(
    store: &RedisStore,
    room: &RoomId,
    epoch: &str,
    seq: u64,
) -> StoreResult<Recovery> {
    let keys = RoomKeys::new(room);
    let max = store.config.limits.max_replay;
    let ((cur_epoch, cur_seq), oldest, newer): (
        (Option<String>, Option<u64>),
        StreamRangeReply,
        StreamRangeReply,
    ) = history_after(&keys, seq, (max as usize).saturating_add(1))
        .query_async(&mut store.conn())
        .await?;
    let oldest = oldest.ids.first().and_then(|e| entry_seq(&e.id));
    let events = stored_entries(&newer)?
        .into_iter()
        .map(|e| (e.seq, e.frame))
        .collect();
    Ok(crate::rules::decide_recovery(
        cur_epoch.as_deref().unwrap_or(""),
        cur_seq.unwrap_or(0),
        oldest,
        epoch,
        seq,
        max,
        events,
    ))
}

pub(super) async fn want_replay(
    store: &RedisStore,
    room: &RoomId,
    vector: &[OriginPosition],
) -> StoreResult<()> {
    let wanted: Vec<&OriginPosition> = vector
        .iter()
        .filter(|o| o.region != store.config.region)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut inv = store.scripts.want_replay.key(want_key(room));
    inv.arg(WANT_REPLAY_TTL_MS);
    for o in wanted {
        inv.arg(&o.region).arg(&o.epoch).arg(o.seq);
    }
    let _: i64 = inv.invoke_async(&mut store.conn()).await?;
    Ok(())
}

pub(super) async fn history_since(
    store: &RedisStore,
    room: &RoomId,
    vector: &[OriginPosition],
) -> StoreResult<Recovery> {
    let keys = RoomKeys::new(room);
    let max = store.config.limits.max_replay;
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
            .query_async(&mut store.conn())
            .await?;
    let cur_epoch = cur_epoch.unwrap_or_default();
    let cur_seq = cur_seq.unwrap_or(0);
    let entries = stored_entries(&all)?
        .into_iter()
        .map(|e| (e.seq, e.origin, e.frame))
        .collect();
    Ok(crate::rules::decide_vector_recovery(
        &store.config.region,
        &cur_epoch,
        cur_seq,
        vector,
        max,
        entries,
    ))
}
