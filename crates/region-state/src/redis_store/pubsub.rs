//! The pub/sub connection: counted room subscriptions and this node's inbox, owned by one task
//! that forwards messages to the node and restores every subscription after a reconnect or a
//! failover.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use meridian_protocol::{RoomId, UserId};
use tokio::sync::{mpsc, oneshot};

use super::RedisStore;
use crate::link::Resolver;
use crate::scripts::room_of_channel;
use crate::{split_seq, Inbound, StoreError, StoreResult};

/// Commands for the task that owns the pub/sub connection. Processed in order, so a
/// subscribe and an unsubscribe of the same room can never overtake each other.
pub(super) enum PubSubCmd {
    Subscribe(RoomId, oneshot::Sender<StoreResult<()>>),
    Unsubscribe(RoomId, oneshot::Sender<StoreResult<()>>),
}

/// State shared between the store handle and its pub/sub task.
pub(super) struct PubSubShared {
    /// Subscription counts per room; the pub/sub task subscribes the rooms with a count > 0.
    pub(super) counts: Mutex<HashMap<RoomId, usize>>,
    pub(super) up: AtomicBool,
}

pub(super) async fn subscribe(store: &RedisStore, room: &RoomId) -> StoreResult<()> {
    {
        let mut counts = store
            .pubsub
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *counts.entry(room.clone()).or_insert(0) += 1;
    }
    let (ack, acked) = oneshot::channel();
    let result = match store.commands.send(PubSubCmd::Subscribe(room.clone(), ack)) {
        Ok(()) => match tokio::time::timeout(Duration::from_secs(3), acked).await {
            Ok(Ok(r)) => r,
            _ => Err(StoreError::PubSubDown),
        },
        Err(_) => Err(StoreError::PubSubDown),
    };
    if result.is_err() {
        // Undo the count so a failed join leaves no subscription behind.
        unsubscribe(store, room).await?;
    }
    result
}

pub(super) async fn unsubscribe(store: &RedisStore, room: &RoomId) -> StoreResult<()> {
    {
        let mut counts = store
            .pubsub
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counts.get_mut(room) {
            *c -= 1;
            if *c == 0 {
                counts.remove(room);
            }
        }
    }
    // The task re-checks the count when it gets here, so a join racing in between keeps
    // the subscription.
    let (ack, acked) = oneshot::channel();
    if store
        .commands
        .send(PubSubCmd::Unsubscribe(room.clone(), ack))
        .is_err()
    {
        return Err(StoreError::PubSubDown);
    }
    match tokio::time::timeout(Duration::from_secs(3), acked).await {
        Ok(Ok(r)) => r,
        _ => Err(StoreError::PubSubDown),
    }
}

fn room_channel(room: &RoomId) -> String {
    format!("mr:{{{room}}}:ev")
}

/// Owns the pub/sub connection: applies subscription commands in order, forwards messages to
/// the node, and on connection loss reconnects with backoff and restores every subscription.
///
/// The connection is also given up (and re-made on the current primary) when a ping goes
/// unanswered — a half-open socket or a paused server sends no FIN — and when the command link
/// reconnects to a different server than the one this connection is on (a failover).
#[allow(clippy::too_many_arguments)]
pub(super) async fn pubsub_task(
    resolver: Arc<Resolver>,
    mut primary: tokio::sync::watch::Receiver<(u64, String)>,
    inbox: String,
    shared: Arc<PubSubShared>,
    mut commands: mpsc::UnboundedReceiver<PubSubCmd>,
    inbound: mpsc::Sender<Inbound>,
    ready: oneshot::Sender<StoreResult<()>>,
) {
    const OP_TIMEOUT: Duration = Duration::from_secs(2);
    const PING_EVERY: Duration = Duration::from_secs(1);
    let timed = |what: &'static str| {
        move |r: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>| match r {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                what,
            ))),
        }
    };
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = async {
            let client = resolver.primary().await?;
            let address = client.get_connection_info().addr().to_string();
            let pubsub = match tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await {
                Ok(p) => p?,
                Err(_) => {
                    return Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "pub/sub connect timed out",
                    )))
                }
            };
            let (mut sink, stream) = pubsub.split();
            timed("subscribe timed out")(
                tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&inbox)).await,
            )?;
            let rooms: Vec<RoomId> = {
                let counts = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
                counts.keys().cloned().collect()
            };
            // One channel per command: redis-rs pairs each SUBSCRIBE with one confirmation.
            for room in &rooms {
                timed("subscribe timed out")(
                    tokio::time::timeout(OP_TIMEOUT, sink.subscribe(room_channel(room))).await,
                )?;
            }
            Ok::<_, redis::RedisError>((sink, stream, rooms, address))
        }
        .await;
        let (mut sink, mut stream, rooms, address) = match connected {
            Ok(c) => c,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e.into()));
                    return;
                }
                tracing::warn!(error = %e, "redis pub/sub reconnect failed; retrying");
                if commands.is_closed() {
                    return;
                }
                // Retry after the backoff, or at once when the command link has found a
                // primary (after a failover it usually finds it first).
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    changed = primary.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        shared.up.store(true, Ordering::Relaxed);
        primary.mark_unchanged();
        let mut active: HashSet<RoomId> = rooms.into_iter().collect();
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            None => {
                tracing::info!(
                    rooms = active.len(),
                    %address,
                    "redis pub/sub reconnected; subscriptions restored"
                );
                let _ = inbound.send(Inbound::Resubscribed).await;
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let result = match cmd {
                        PubSubCmd::Subscribe(room, ack) => {
                            let r = if active.contains(&room) {
                                Ok(())
                            } else {
                                timed("subscribe timed out")(
                                    tokio::time::timeout(OP_TIMEOUT, sink.subscribe(room_channel(&room))).await,
                                )
                                .map(|()| {
                                    active.insert(room);
                                })
                            };
                            let failed = r.is_err();
                            let _ = ack.send(r.map_err(StoreError::from));
                            if failed { Err(()) } else { Ok(()) }
                        }
                        PubSubCmd::Unsubscribe(room, ack) => {
                            let wanted = {
                                let counts = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
                                counts.contains_key(&room)
                            };
                            let r = if !wanted && active.remove(&room) {
                                timed("unsubscribe timed out")(
                                    tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(room_channel(&room))).await,
                                )
                            } else {
                                Ok(())
                            };
                            let failed = r.is_err();
                            let _ = ack.send(r.map_err(StoreError::from));
                            if failed { Err(()) } else { Ok(()) }
                        }
                    };
                    if result.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!(%address, "redis pub/sub ping unanswered");
                        break;
                    }
                }
                changed = primary.changed() => {
                    if changed.is_err() {
                        // The store is gone.
                        return;
                    }
                    let now = primary.borrow_and_update().1.clone();
                    if now != address {
                        tracing::info!(from = %address, to = %now, "redis primary moved; moving pub/sub");
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let channel = msg.get_channel_name();
                    let payload = msg.get_payload_bytes();
                    let item = if channel == inbox {
                        split_user(payload)
                    } else {
                        room_of_channel(channel).and_then(|room| {
                            split_seq(payload).map(|(seq, epoch, frame)| Inbound::Room {
                                room,
                                seq,
                                epoch,
                                frame,
                            })
                        })
                    };
                    match item {
                        Some(item) => {
                            if inbound.send(item).await.is_err() {
                                return;
                            }
                        }
                        None => tracing::warn!(channel, "dropping malformed pub/sub message"),
                    }
                }
            }
        }
        shared.up.store(false, Ordering::Relaxed);
        tracing::warn!(%address, "redis pub/sub connection lost; reconnecting");
    }
}

/// Parses a node inbox payload `"<user> <frame>"`.
fn split_user(payload: &[u8]) -> Option<Inbound> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let user = UserId::new(std::str::from_utf8(&payload[..space]).ok()?).ok()?;
    Some(Inbound::Direct {
        user,
        frame: Bytes::copy_from_slice(&payload[space + 1..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_round_trip() {
        let room = RoomId::new("a/b:c").unwrap();
        assert_eq!(room_of_channel(&room_channel(&room)), Some(room));
        assert_eq!(room_of_channel("mn:{x}:inbox"), None);
    }

    #[test]
    fn malformed_inbox_payloads_are_rejected() {
        assert!(split_user(b"nospace").is_none());
        assert!(split_user(b"bad{user {}").is_none());
        assert!(matches!(
            split_user(b"bob {\"x\":1}"),
            Some(Inbound::Direct { .. })
        ));
        assert!(split_seq(b"x e {}").is_none());
        assert!(split_seq(b"7 {}").is_none());
        assert_eq!(
            split_seq(b"7 ep {}").map(|(s, e, _)| (s, e.to_string())),
            Some((7, "ep".into()))
        );
    }
}
