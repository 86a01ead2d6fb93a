//! A connection's life after `hello`: one loop that forwards queued events, answers the
//! requests each read brings, pings, and reacts to kicks, drain, shutdown and token expiry.

use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::FutureExt;
use meridian_protocol::{ErrorCode, Event};
use tokio_util::sync::WaitForCancellationFuture;

use super::requests::{MAX_PIPELINED, MAX_PIPELINED_BYTES};
use super::socket::{close, close_with, error_reply, jitter, send_queued, send_text, send_texts};
use super::{Replays, Session};
use crate::context::Node;
use crate::fanout::KickReason;

/// What one WebSocket read returned.
type Received = Option<Result<Message, axum::Error>>;

impl Session {
    /// Serves the connection until it ends, then cleans up.
    pub(super) async fn run(&mut self, ws: &mut WebSocket, replays: Replays) {
        let node = self.node.clone();
        let timing = &node.config.timing;
        for frame in replays {
            if let Ok(text) = Utf8Bytes::try_from(frame) {
                if !send_text(&node, ws, text).await {
                    Box::pin(self.cleanup()).await;
                    return;
                }
            }
        }
        let ping_timeout = Duration::from_millis(timing.ping_timeout_ms);
        let mut ping = tokio::time::interval(Duration::from_millis(timing.ping_interval_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Tokio's clock, like the ping timer it is compared at (tests run it virtually).
        let mut last_heard = tokio::time::Instant::now();
        let mut drain_sent = false;
        let kicked_token = self.outbox.kicked.clone();
        // Made once and polled in place (a `cancelled()` made anew on every turn would join and
        // leave its token's waiter list once per frame), and polled only when no frame is
        // waiting: the queue's branch comes first and is open only while no signal is up, which
        // it reads with atomic loads. So a signal still wins over any backlog of frames.
        let kicked = kicked_token.cancelled();
        let closing = node.closing.fired();
        let draining = node.draining.fired();
        let expired = tokio::time::sleep_until(self.expires);
        tokio::pin!(kicked, closing, draining, expired);
        loop {
            let quiet = !self.outbox.is_kicked()
                && !node.closing.is_fired()
                && (drain_sent || !node.draining.is_fired());
            tokio::select! {
                biased;
                frame = self.queue.recv(), if quiet => {
                    let Some(frame) = frame else { break };
                    if !self.forward(&node, ws, frame, kicked.as_mut()).await {
                        break;
                    }
                }
                _ = &mut kicked => {
                    self.kicked(&node, ws).await;
                    break;
                }
                _ = &mut closing => {
                    close_with(ws, close::RESTART, "node shutting down").await;
                    break;
                }
                _ = &mut expired => {
                    // A connection lives no longer than its token: reconnect (and resume)
                    // with a fresh one.
                    node.metrics.error(ErrorCode::TokenExpired);
                    let text = Event::Error { code: ErrorCode::TokenExpired, message: "the token expired; reconnect with a fresh token (resume to recover what was missed)" }.encode();
                    send_text(&node, ws, text).await;
                    close_with(ws, close::POLICY, ErrorCode::TokenExpired.as_str()).await;
                    break;
                }
                _ = &mut draining, if !drain_sent => {
                    drain_sent = true;
                    let t = &node.config.timing;
                    let text = Event::Reconnect {
                        after_ms: jitter(t.drain_reconnect_min_ms, t.drain_reconnect_max_ms),
                        reason: "draining",
                        url: None,
                        region: None,
                    }
                    .encode();
                    if !send_text(&node, ws, text).await {
                        break;
                    }
                }
                msg = ws.recv() => {
                    last_heard = tokio::time::Instant::now();
                    if !self.received(&node, ws, msg).await {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_timeout {
                        tracing::info!(user = %self.conn.user, "no pong within ping_timeout; closing dead connection");
                        break;
                    }
                    if tokio::time::timeout(ping_timeout, ws.send(Message::Ping(bytes::Bytes::new()))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::Close(Some(CloseFrame {
                code: close::NORMAL,
                reason: Utf8Bytes::from_static(""),
            }))),
        )
        .await;
        Box::pin(self.cleanup()).await;
    }

    /// Writes a queued frame (and what else is queued); `false` ends the connection.
    async fn forward(
        &mut self,
        node: &Node,
        ws: &mut WebSocket,
        frame: Utf8Bytes,
        kicked: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> bool {
        // A client that stops reading blocks this write once its socket is full; its queue
        // then overflows and the connection is kicked. Give up on the write at once: the
        // socket cannot take even the `reconnect`.
        let sent = tokio::select! {
            biased;
            ok = send_queued(node, ws, frame, &mut self.queue) => Some(ok),
            _ = kicked => None,
        };
        match sent {
            Some(ok) => ok,
            None => {
                let reason = self.outbox.kick_reason().unwrap_or(KickReason::Resync);
                if reason == KickReason::SlowConsumer {
                    node.metrics.slow_consumers.inc();
                }
                tracing::info!(user = %self.conn.user, reason = reason.as_str(), "dropping a connection whose socket is full");
                // Queued behind what the socket holds; bounded by close_with.
                close_with(ws, close::POLICY, reason.as_str()).await;
                false
            }
        }
    }

    /// The connection was kicked (too slow, or its rooms must resync): `reconnect`, then close.
    async fn kicked(&self, node: &Node, ws: &mut WebSocket) {
        let reason = self.outbox.kick_reason().unwrap_or(KickReason::Resync);
        let code = if reason == KickReason::SlowConsumer {
            node.metrics.slow_consumers.inc();
            close::POLICY
        } else {
            close::TRY_LATER
        };
        if reason == KickReason::Disconnected {
            let note = self.outbox.disconnect_note().unwrap_or_default();
            tracing::info!(user = %self.conn.user, note, "disconnected by the server API");
            let message = format!("disconnected by the server: {note}");
            let text = Event::Error {
                code: ErrorCode::Forbidden,
                message: &message,
            }
            .encode();
            send_text(node, ws, text).await;
            close_with(ws, close::POLICY, reason.as_str()).await;
            return;
        }
        tracing::info!(user = %self.conn.user, reason = reason.as_str(), "telling the client to reconnect");
        let text = Event::Reconnect {
            after_ms: jitter(100, 1_000),
            reason: reason.as_str(),
            url: None,
            region: None,
        }
        .encode();
        send_text(node, ws, text).await;
        close_with(ws, code, reason.as_str()).await;
    }

    /// Answers what one read brought: the text frames it and the reads ready right after it
    /// hold (a client may pipeline requests) are answered together; a frame of another kind
    /// ends the run. `false` ends the connection.
    async fn received(&mut self, node: &Node, ws: &mut WebSocket, msg: Received) -> bool {
        let mut texts = Vec::new();
        let mut bytes = 0;
        let mut other = None;
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                Some(Ok(Message::Text(text))) => {
                    node.metrics.frames_in.inc();
                    bytes += text.len();
                    texts.push(text);
                    if texts.len() < MAX_PIPELINED && bytes < MAX_PIPELINED_BYTES {
                        next = ws.recv().now_or_never();
                    }
                }
                msg => other = Some(msg),
            }
        }
        if !texts.is_empty() {
            let replies = Box::pin(self.handle_many(&texts)).await;
            if !send_texts(node, ws, replies.into_iter().map(Utf8Bytes::from)).await {
                return false;
            }
        }
        match other {
            None | Some(Some(Ok(Message::Text(_)))) => true,
            Some(Some(Ok(Message::Binary(_)))) => {
                node.metrics.error(ErrorCode::BinaryNotSupported);
                let reply =
                    error_reply(None, ErrorCode::BinaryNotSupported, "send JSON text frames");
                send_text(node, ws, reply).await
            }
            Some(Some(Ok(Message::Close(_))) | None) => false,
            Some(Some(Ok(_))) => true,
            Some(Some(Err(e))) => {
                // tungstenite refuses frames over the hard limit before we see them.
                if matches!(e.to_string(), s if s.contains("too long") || s.contains("Space limit"))
                {
                    node.metrics.error(ErrorCode::FrameTooLarge);
                    close_with(ws, close::TOO_BIG, "frame too large").await;
                }
                false
            }
        }
    }
}
