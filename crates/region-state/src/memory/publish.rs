//! Publishing room events: sequencing, bounded history and fan-out to subscribed nodes
//! (`append`, the in-memory twin of the Lua scripts' `append`), idempotency keys, and the shared
//! budgets (`spend`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_protocol::{RoomEventFrame, RoomId};

use super::{MemoryStore, RegionState};
use crate::{random_token, Budget, Inbound, PublishItem, Published, StoreLimits, StoreResult};

impl RegionState {
    /// Sequences, stores and fans out one room event (the `append` of the Lua scripts).
    pub(super) fn append(
        &mut self,
        room: &RoomId,
        head: &str,
        limits: &StoreLimits,
    ) -> (String, u64) {
        let r = self.rooms.entry(room.clone()).or_default();
        if r.epoch.is_empty() {
            r.epoch = random_token(8);
        }
        r.seq += 1;
        let frame = Bytes::from(RoomEventFrame::close(head, r.seq, &r.epoch));
        r.history.push_back((r.seq, frame.clone()));
        while r.history.len() > limits.history_len.max(1) as usize {
            r.history.pop_front();
        }
        let out = (r.epoch.clone(), r.seq);
        let epoch: Arc<str> = r.epoch.as_str().into();
        for link in self.nodes.values() {
            if link.subscriptions.contains_key(room) {
                if let Some(tx) = &link.inbound {
                    if tx
                        .try_send(Inbound::Room {
                            room: room.clone(),
                            seq: out.1,
                            epoch: epoch.clone(),
                            frame: frame.clone(),
                        })
                        .is_err()
                    {
                        tracing::warn!(%room, "memory store: node inbound queue full, event dropped");
                    }
                }
            }
        }
        out
    }
}

pub(super) async fn publish_many(
    store: &MemoryStore,
    room: &RoomId,
    items: &[PublishItem<'_>],
) -> StoreResult<Vec<Published>> {
    let mut s = store.lock();
    let now = Instant::now();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some((user, key)) = item.idempotency {
            let k = (room.clone(), user.clone(), key.to_owned());
            if let Some(&(seq, expiry)) = s.idempotency.get(&k) {
                if expiry > now {
                    let epoch = s
                        .rooms
                        .get(room)
                        .map(|r| r.epoch.clone())
                        .unwrap_or_default();
                    out.push(Published {
                        seq,
                        epoch,
                        duplicate: true,
                    });
                    continue;
                }
            }
        }
        let (epoch, seq) = s.append(room, item.frame.head(), &store.limits);
        if let Some((user, key)) = item.idempotency {
            s.idempotency.retain(|_, (_, expiry)| *expiry > now);
            s.idempotency.insert(
                (room.clone(), user.clone(), key.to_owned()),
                (seq, now + store.limits.idempotency_window),
            );
        }
        out.push(Published {
            seq,
            epoch,
            duplicate: false,
        });
    }
    Ok(out)
}

pub(super) async fn spend(
    store: &MemoryStore,
    budgets: &[Budget<'_>],
    window: Duration,
) -> StoreResult<Option<usize>> {
    let mut s = store.lock();
    let slot = crate::now_ms() / (window.as_millis() as u64).max(1);
    let spent = |s: &RegionState, name: &str| match s.budgets.get(name) {
        Some((w, n)) if *w == slot => *n,
        _ => 0,
    };
    if let Some(i) = budgets
        .iter()
        .position(|b| spent(&s, b.name).saturating_add(b.cost) > b.limit)
    {
        return Ok(Some(i));
    }
    for b in budgets {
        let n = spent(&s, b.name) + b.cost;
        s.budgets.insert(b.name.to_owned(), (slot, n));
    }
    // Forget finished windows now and then, so the map stays as large as the active users.
    if s.budgets.len() > 10_000 {
        s.budgets.retain(|_, (w, _)| *w == slot);
    }
    Ok(None)
}
