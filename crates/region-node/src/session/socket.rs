//! Writing to a connection's WebSocket: frames with one flush and a timeout, close frames, and
//! the encoded replies.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::FutureExt;
use meridian_protocol::{ErrorCode, Reply, RequestId};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::context::Node;

/// WebSocket close codes used by the node.
pub(super) mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const TRY_LATER: u16 = 1013;
}

pub(super) async fn send_text(node: &Node, ws: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    send_texts(node, ws, [text.into()]).await
}

/// Writes frames with one flush (the replies to one read's requests, or a single frame).
pub(super) async fn send_texts(
    node: &Node,
    ws: &mut WebSocket,
    frames: impl IntoIterator<Item = Utf8Bytes>,
) -> bool {
    use futures_util::SinkExt;
    let timeout = Duration::from_millis(node.config.timing.ping_timeout_ms);
    let write = async {
        for frame in frames {
            node.metrics.frames_out.inc();
            ws.feed(Message::Text(frame)).await?;
        }
        ws.flush().await
    };
    finishes_within(timeout, write).await
}

/// Whether `write` succeeds within `timeout`. Nearly every write finishes at once (the socket
/// has room), so the timer is armed only for those that do not, instead of being registered and
/// cancelled once per frame.
async fn finishes_within<E>(
    timeout: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    tokio::pin!(write);
    if let Some(done) = (&mut write).now_or_never() {
        return done.is_ok();
    }
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}

/// Writes `first` and whatever else is already queued (up to 64 frames) with one flush: under
/// load one write(2) carries many frames instead of one each.
pub(super) async fn send_queued(
    node: &Node,
    ws: &mut WebSocket,
    first: Utf8Bytes,
    queue: &mut mpsc::Receiver<Utf8Bytes>,
) -> bool {
    use futures_util::SinkExt;
    let timeout = Duration::from_millis(node.config.timing.ping_timeout_ms);
    let write = async {
        ws.feed(Message::Text(first)).await?;
        let mut n = 1;
        while n < 64 {
            match queue.try_recv() {
                Ok(frame) => {
                    ws.feed(Message::Text(frame)).await?;
                    n += 1;
                }
                Err(_) => break,
            }
        }
        node.metrics.frames_out.inc_by(n);
        ws.flush().await
    };
    finishes_within(timeout, write).await
}

pub(super) async fn close_with(ws: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Close(Some(frame)))).await;
}

pub(super) fn error_reply(id: Option<&RequestId>, code: ErrorCode, message: &str) -> String {
    let reply: Reply<'_, ()> = Reply::Error { id, code, message };
    reply.encode()
}

pub(super) fn ok_reply<T: Serialize>(id: &RequestId, result: T) -> String {
    Reply::Ok { id, result }.encode()
}

/// A random delay in `min..=max` milliseconds, so told clients do not all come back at once.
pub(super) fn jitter(min: u64, max: u64) -> u64 {
    min + rand::random::<u64>() % (max.saturating_sub(min) + 1)
}
