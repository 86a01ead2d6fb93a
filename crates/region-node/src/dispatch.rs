//! Fan-out of what the store pushes: room events and direct messages to local connections,
//! and the catch-up from room history after a pub/sub outage.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use region_state::{Inbound, Recovery};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::context::Node;

/// Hands what the store pushes to local connections.
pub(crate) async fn dispatch(
    node: Arc<Node>,
    mut inbound: mpsc::Receiver<Inbound>,
    stop: CancellationToken,
) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            _ = &mut stopped => return,
            item = inbound.recv() => match item { Some(i) => i, None => return },
        };
        let started = Instant::now();
        match item {
            Inbound::Room {
                room,
                seq,
                epoch,
                frame,
            } => {
                let Ok(text) = Utf8Bytes::try_from(frame) else {
                    tracing::warn!(%room, "dropping a room event that is not UTF-8");
                    continue;
                };
                let n = node.local.deliver_room(&room, seq, &epoch, &text);
                node.metrics.deliveries.inc_by(n as u64);
                node.metrics
                    .fanout_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Inbound::Direct { user, frame } => {
                // The server API's `disconnect` travels the direct-message path to whichever
                // nodes hold the user's connections; a client's direct message is always an
                // encoded `direct` event, so it cannot pose as one.
                if let Some(reason) = crate::api::disconnect_reason(&frame) {
                    let n = node.local.disconnect_user(&user, &reason);
                    tracing::info!(%user, connections = n, "disconnecting a user for the server API");
                    continue;
                }
                if let Ok(text) = Utf8Bytes::try_from(frame) {
                    node.local.deliver_direct(&user, &text);
                }
            }
            Inbound::Resubscribed => {
                // The store reconnected (perhaps to a new primary after a failover): renew
                // the lease there now, then replay what the pub/sub outage may have missed.
                node.renew_now.notify_one();
                // Inline, not spawned: live events of the new subscription queue behind this
                // message and must reach the cursors only after the replay, or a cursor that
                // saw a live event first would drop the older replayed ones as duplicates.
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = catch_up(node.clone()) => {}
                }
            }
        }
    }
}

/// After a pub/sub outage: replays, from room history, what local subscribers missed. The
/// history reads run 16 at a time; each room's replay is delivered as soon as it is read (live
/// events wait in the inbound queue until the whole catch-up is done).
async fn catch_up(node: Arc<Node>) {
    use futures_util::StreamExt;
    let positions = node.local.room_positions();
    let rooms = positions.len();
    let started = Instant::now();
    let mut reads = futures_util::stream::iter(positions.into_iter().map(|(room, epoch, last)| {
        let node = node.clone();
        async move {
            let result = node.store.history(&room, &epoch, last).await;
            (room, epoch, result)
        }
    }))
    .buffer_unordered(16);
    let mut replayed = 0usize;
    while let Some((room, epoch, result)) = reads.next().await {
        match result {
            Ok(Recovery::Replay { events, .. }) => {
                for (seq, frame) in events {
                    if let Ok(text) = Utf8Bytes::try_from(frame) {
                        replayed += 1;
                        node.local.deliver_room(&room, seq, &epoch, &text);
                    }
                }
            }
            Ok(Recovery::Lost { .. }) => {
                // The clients cannot be caught up from here: make them reconnect and resume,
                // which reports `history_lost` per room.
                tracing::warn!(%room, "room history no longer covers the pub/sub outage; asking its clients to resume");
                node.local.force_resync(&room);
            }
            Err(e) => {
                // Without the replay these subscribers would silently miss events: resume.
                tracing::warn!(%room, error = %e, "catch-up after pub/sub outage failed; asking the room's clients to resume");
                node.local.force_resync(&room);
            }
        }
    }
    tracing::info!(
        rooms,
        replayed,
        took_ms = started.elapsed().as_millis() as u64,
        "caught up after the pub/sub outage"
    );
}
