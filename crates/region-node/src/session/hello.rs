//! The first phase of a connection: wait for `hello`, verify the token, register the
//! connection in the store, rejoin the rooms of its `resume` list, and answer with a
//! [`HelloResult`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use meridian_protocol::token::Claims;
use meridian_protocol::{
    ErrorCode, Event, HelloResult, Request, RequestId, ResumePoint, ResumedRoom,
};
use region_state::ConnRef;
use tokio::sync::mpsc;

use super::requests::TokenBucket;
use super::socket::{close, close_with, error_reply, ok_reply, send_text};
use super::{Failure, Replays, Session};
use crate::context::Node;
use crate::fanout::Outbox;

/// What one wait for a frame before `hello` brought.
enum Read {
    /// A text frame.
    Text(Utf8Bytes),
    /// Nothing to answer (a control frame, or a binary frame already refused).
    Again,
    /// The connection is done (closed, timed out, or the node drains).
    Done,
}

/// Waits for `hello`, authenticates and resumes. `None` means the connection is done.
pub(super) async fn hello(
    node: &Arc<Node>,
    ws: &mut WebSocket,
    conn_no: u64,
) -> Option<(Session, Replays)> {
    // `timing.hello_timeout_ms`, or shorter while unauthenticated connections crowd the node.
    let deadline = tokio::time::Instant::now() + node.admission.hello_timeout();
    loop {
        let text = match read(node, ws, deadline).await {
            Read::Text(text) => text,
            Read::Again => continue,
            Read::Done => return None,
        };
        node.metrics.frames_in.inc();
        if text.len() > node.config.limits.max_frame_bytes {
            node.metrics.error(ErrorCode::FrameTooLarge);
            send_text(
                node,
                ws,
                error_reply(None, ErrorCode::FrameTooLarge, "frame too large"),
            )
            .await;
            continue;
        }
        let (id, request) = match Request::parse(&text) {
            Ok(r) => r,
            Err(e) => {
                node.metrics.error(e.code);
                send_text(node, ws, error_reply(e.id.as_ref(), e.code, &e.message)).await;
                continue;
            }
        };
        let Request::Hello { token, resume } = request else {
            node.metrics.error(ErrorCode::NotAuthenticated);
            send_text(
                node,
                ws,
                error_reply(Some(&id), ErrorCode::NotAuthenticated, "send hello first"),
            )
            .await;
            continue;
        };
        return open(node, ws, conn_no, &id, token.as_deref(), resume).await;
    }
}

/// Waits for the next frame until `deadline`; says why and closes when the deadline passes or
/// the node drains first.
async fn read(node: &Node, ws: &mut WebSocket, deadline: tokio::time::Instant) -> Read {
    let msg = tokio::select! {
        _ = tokio::time::sleep_until(deadline) => {
            node.metrics.error(ErrorCode::NotAuthenticated);
            let text = Event::Error { code: ErrorCode::NotAuthenticated, message: "no hello in time" }.encode();
            send_text(node, ws, text).await;
            close_with(ws, close::POLICY, "no hello in time").await;
            return Read::Done;
        }
        _ = node.draining.fired() => {
            node.metrics.error(ErrorCode::Draining);
            let text = Event::Error { code: ErrorCode::Draining, message: "node is draining; reconnect elsewhere" }.encode();
            send_text(node, ws, text).await;
            close_with(ws, close::TRY_LATER, "draining").await;
            return Read::Done;
        }
        msg = ws.recv() => msg,
    };
    match msg {
        Some(Ok(Message::Text(t))) => Read::Text(t),
        Some(Ok(Message::Binary(_))) => {
            node.metrics.error(ErrorCode::BinaryNotSupported);
            send_text(
                node,
                ws,
                error_reply(None, ErrorCode::BinaryNotSupported, "send JSON text frames"),
            )
            .await;
            Read::Again
        }
        Some(Ok(_)) => Read::Again,
        Some(Err(_)) | None => Read::Done,
    }
}

/// Answers a `hello`: verifies the token, registers the connection in the store, resumes the
/// listed rooms and sends the reply. `None` (after an error reply and a close) when any of it
/// fails.
async fn open(
    node: &Arc<Node>,
    ws: &mut WebSocket,
    conn_no: u64,
    id: &RequestId,
    token: Option<&str>,
    resume: Vec<ResumePoint>,
) -> Option<(Session, Replays)> {
    let claims = match verify(node, token) {
        Ok(c) => c,
        Err((code, message)) => {
            node.metrics.error(code);
            send_text(node, ws, error_reply(Some(id), code, &message)).await;
            close_with(ws, close::POLICY, code.as_str()).await;
            return None;
        }
    };
    let conn = ConnRef {
        node: node.store.node().clone(),
        conn: conn_no,
        user: claims.sub.clone(),
    };
    let claims_exp = claims.exp;
    if let Err(e) = node.timed("connect", node.store.connect(&conn)).await {
        let Failure(code, message) = e.into();
        node.metrics.error(code);
        send_text(node, ws, error_reply(Some(id), code, &message)).await;
        close_with(ws, close::TRY_LATER, "store unavailable").await;
        return None;
    }
    let (tx, queue) = mpsc::channel(node.config.limits.send_queue);
    let outbox = Outbox::new(tx);
    node.local
        .add_user_conn(&conn.user, conn_no, outbox.clone());
    let limits = &node.config.limits;
    let mut session = Session {
        node: node.clone(),
        conn,
        claims,
        rooms: HashMap::new(),
        outbox,
        queue,
        bucket: TokenBucket::new(limits.requests_per_second, limits.request_burst),
        expires: expiry_instant(claims_exp),
        cleaned: false,
    };
    let mut resumed = Vec::new();
    let mut replays = Vec::new();
    for point in resume.into_iter().take(limits.max_rooms_per_connection) {
        resumed.push(session.resume(point, &mut replays).await);
    }
    let reply = ok_reply(
        id,
        HelloResult {
            conn: conn_no,
            node: session.conn.node.as_str().to_owned(),
            protocol: meridian_protocol::PROTOCOL_VERSION,
            region: node.config.region.clone(),
            resumed,
            user: session.conn.user.clone(),
        },
    );
    if !send_text(node, ws, reply).await {
        session.cleanup().await;
        return None;
    }
    Some((session, replays))
}

/// The token's claims, or the code and message to refuse it with.
fn verify(node: &Node, token: Option<&str>) -> Result<Claims, (ErrorCode, String)> {
    match token.map(|t| node.verifier.verify(t)) {
        None => Err((ErrorCode::TokenMissing, "hello needs a token".to_owned())),
        Some(Err(e)) => Err((e.code(), e.to_string())),
        Some(Ok(c)) => Ok(c),
    }
}

/// The instant a token's `exp` (seconds since the epoch) falls on, by the node's clock.
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // A year is as good as never for a connection, and keeps the addition in range.
    let left = Duration::from_secs(exp)
        .saturating_sub(now)
        .min(Duration::from_secs(365 * 24 * 3600));
    tokio::time::Instant::now() + left
}

impl Session {
    /// One room of a `hello` resume list, reported as `{room, status, epoch, seq}`.
    async fn resume(&mut self, point: ResumePoint, replays: &mut Replays) -> ResumedRoom {
        let ResumePoint {
            room,
            epoch,
            seq,
            origins,
        } = point;
        let before = replays.len();
        match self
            .join(&room, Some((&epoch, seq, &origins)), replays)
            .await
        {
            Ok(j) if j.history_lost => ResumedRoom::HistoryLost {
                room,
                epoch: j.epoch,
                seq: j.seq,
                origins: j.origins,
            },
            Ok(j) => ResumedRoom::Recovered {
                room,
                epoch: j.epoch,
                seq: j.seq,
                replayed: (replays.len() - before) as u64,
                origins: j.origins,
            },
            Err(Failure(code, message)) => {
                self.node.metrics.error(code);
                ResumedRoom::Error {
                    room,
                    code,
                    message,
                }
            }
        }
    }
}
