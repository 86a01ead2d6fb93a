//! One client connection: `hello`, then requests and events until the client leaves, the
//! connection dies, it falls too far behind, or the node drains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::FutureExt;
use meridian_protocol::token::Claims;
use meridian_protocol::{
    ErrorCode, Event, HelloResult, JoinResult, LeaveResult, LeftReason, MembersResult,
    OriginPosition, PingResult, PresenceEntry, PresenceResult, PublishResult, Reply, Request,
    RequestId, ResumePoint, ResumedRoom, RoomEventFrame, RoomId, SendResult, StateDeleteResult,
    StateGetResult, StateSetResult, UserId,
};
use region_state::{Budget, ConnRef, PublishItem, Recovery, StoreError};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::fanout::{KickReason, Outbox, Subscriber};
use crate::node::Node;

/// WebSocket close codes used by the node.
mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const TRY_LATER: u16 = 1013;
}

/// A request's failure: code and message for the client.
#[derive(Clone)]
struct Failure(ErrorCode, String);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RoomFull { max } => {
                Failure(ErrorCode::RoomFull, format!("room is full ({max} members)"))
            }
            StoreError::VersionConflict { current } => Failure(
                ErrorCode::VersionConflict,
                format!("the key is at version {current}"),
            ),
            StoreError::BudgetSpent { limit } => Failure(
                ErrorCode::RateLimited,
                format!("over the {limit} publishes per second this user may make across its connections; retry later"),
            ),
            e if e.is_retryable() => Failure(
                ErrorCode::Unavailable,
                format!("regional store unavailable: {e}"),
            ),
            e => Failure(ErrorCode::Internal, e.to_string()),
        }
    }
}

/// A request's result, encoded once: a typed reply serializes stored client JSON straight into
/// the frame (going through `serde_json::Value` re-parsed it, and a value nested deeper than
/// serde_json's recursion limit made the reply fail).
type Outcome = Result<Box<RawValue>, Failure>;

/// The successful outcome carrying `result`.
fn answer<T: Serialize>(result: T) -> Outcome {
    serde_json::value::to_raw_value(&result)
        .map_err(|e| Failure(ErrorCode::Internal, format!("cannot encode the reply: {e}")))
}

/// State a test can make a session fail on, to check that nothing a session holds outlives it.
#[cfg(test)]
pub(crate) const FAULT_KEY: &str = "test-fault-panic";

/// Token bucket for requests per connection.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves one upgraded WebSocket until it ends, then cleans its state out of the store.
///
/// The returned future lives as long as the connection, so it is kept small (an idle
/// connection's memory is mostly this future): the socket and the session are owned in one
/// place and lent to the phases (a value moved into an inner future keeps its old slot too),
/// and the phases that hold large state only for a moment (hello, a request, the clean-up) are
/// boxed while they run.
pub fn serve(
    node: Arc<Node>,
    ws: WebSocket,
    peer: SocketAddr,
    handshake: crate::admission::Handshake,
) -> impl std::future::Future<Output = ()> {
    let slot = ConnectionSlot::take(&node);
    node.metrics.connections_total.inc();
    let conn_no = node.next_conn();
    let span = tracing::debug_span!("conn", conn = conn_no, %peer);
    connection(node, ws, conn_no, handshake, slot).instrument(span)
}

/// One connection's place in the `connections` gauge, which admission compares with
/// `limits.max_connections`: released when dropped, so a session that ends any way at all
/// (returns, panics, or its task is dropped) gives its place back.
struct ConnectionSlot(prometheus_client::metrics::gauge::Gauge);

impl ConnectionSlot {
    fn take(node: &Node) -> Self {
        node.metrics.connections.inc();
        Self(node.metrics.connections.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn connection(
    node: Arc<Node>,
    mut ws: WebSocket,
    conn_no: u64,
    handshake: crate::admission::Handshake,
    slot: ConnectionSlot,
) {
    let hello = Box::pin(hello(&node, &mut ws, conn_no)).await;
    // The handshake slot is free once hello is done, either way.
    drop(handshake);
    match hello {
        Some((mut session, replays)) => session.run(&mut ws, replays).await,
        None => close_with(&mut ws, close::NORMAL, "").await,
    }
    drop(slot);
}

/// A connection attempt the node sheds (accept rate or connection cap): `reconnect`
/// (`overloaded`) with the retry delay, then close 1013. No hello is read, nothing touches the
/// store.
pub async fn shed(mut ws: WebSocket, after_ms: u64) {
    let text = Event::Reconnect {
        after_ms,
        reason: "overloaded",
        url: None,
        region: None,
    }
    .encode();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        ws.send(Message::Text(Utf8Bytes::from(text))),
    )
    .await;
    close_with(&mut ws, close::TRY_LATER, "overloaded").await;
}

struct Session {
    node: Arc<Node>,
    conn: ConnRef,
    claims: Claims,
    rooms: HashMap<RoomId, Arc<Subscriber>>,
    outbox: Outbox,
    queue: mpsc::Receiver<Utf8Bytes>,
    bucket: TokenBucket,
    /// When the token expires: the connection is closed then (`token_expired`).
    expires: tokio::time::Instant,
    /// Whether `cleanup` ran; if not, dropping the session does it (see `Drop`).
    cleaned: bool,
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

async fn send_text(node: &Node, ws: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    send_texts(node, ws, [text.into()]).await
}

/// Writes frames with one flush (the replies to one read's requests, or a single frame).
async fn send_texts(
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
async fn send_queued(
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

async fn close_with(ws: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Close(Some(frame)))).await;
}

fn error_reply(id: Option<&RequestId>, code: ErrorCode, message: &str) -> String {
    let reply: Reply<'_, ()> = Reply::Error { id, code, message };
    reply.encode()
}

fn ok_reply<T: Serialize>(id: &RequestId, result: T) -> String {
    Reply::Ok { id, result }.encode()
}

/// Most frames answered together: what one read of the socket brought, as far as it goes.
const MAX_PIPELINED: usize = 64;
/// Most bytes of frames held for answering together (one largest frame's worth by default):
/// pipelining must not let a client park megabytes per connection in the node.
const MAX_PIPELINED_BYTES: usize = 64 * 1024;

/// Consecutive publishes of one client to one room, sequenced with one store call.
struct PublishBatch {
    room: RoomId,
    items: Vec<PendingPublish>,
}

/// One publish of a batch, authorised and built, and where its reply goes.
struct PendingPublish {
    slot: usize,
    id: RequestId,
    frame: RoomEventFrame,
    key: Option<String>,
}

/// Frames to write right after the hello reply: replayed room history.
type Replays = Vec<bytes::Bytes>;

/// Where a join left the connection in the room's sequence.
struct Joined {
    epoch: String,
    seq: u64,
    first: bool,
    /// A resume asked for history the room no longer has.
    history_lost: bool,
    /// Other regions' positions in the room as of the join (the seed of the client's
    /// version vector for a cross-region resume).
    origins: Vec<OriginPosition>,
}

/// Waits for `hello`, authenticates and resumes. `None` means the connection is done.
async fn hello(node: &Arc<Node>, ws: &mut WebSocket, conn_no: u64) -> Option<(Session, Replays)> {
    // `timing.hello_timeout_ms`, or shorter while unauthenticated connections crowd the node.
    let deadline = tokio::time::Instant::now() + node.admission.hello_timeout();
    loop {
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                node.metrics.error(ErrorCode::NotAuthenticated);
                let text = Event::Error { code: ErrorCode::NotAuthenticated, message: "no hello in time" }.encode();
                send_text(node, ws, text).await;
                close_with(ws, close::POLICY, "no hello in time").await;
                return None;
            }
            _ = node.draining.fired() => {
                node.metrics.error(ErrorCode::Draining);
                let text = Event::Error { code: ErrorCode::Draining, message: "node is draining; reconnect elsewhere" }.encode();
                send_text(node, ws, text).await;
                close_with(ws, close::TRY_LATER, "draining").await;
                return None;
            }
            msg = ws.recv() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                node.metrics.error(ErrorCode::BinaryNotSupported);
                send_text(
                    node,
                    ws,
                    error_reply(None, ErrorCode::BinaryNotSupported, "send JSON text frames"),
                )
                .await;
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
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
        let claims = match token.as_deref().map(|t| node.verifier.verify(t)) {
            None => Err((ErrorCode::TokenMissing, "hello needs a token".to_owned())),
            Some(Err(e)) => Err((e.code(), e.to_string())),
            Some(Ok(c)) => Ok(c),
        };
        let claims = match claims {
            Ok(c) => c,
            Err((code, message)) => {
                node.metrics.error(code);
                send_text(node, ws, error_reply(Some(&id), code, &message)).await;
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
            send_text(node, ws, error_reply(Some(&id), code, &message)).await;
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
            &id,
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
        return Some((session, replays));
    }
}

impl Session {
    async fn run(&mut self, ws: &mut WebSocket, replays: Replays) {
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
                    // A client that stops reading blocks this write once its socket is full;
                    // its queue then overflows and the connection is kicked. Give up on the
                    // write at once: the socket cannot take even the `reconnect`.
                    let sent = tokio::select! {
                        biased;
                        ok = send_queued(&node, ws, frame, &mut self.queue) => Some(ok),
                        _ = &mut kicked => None,
                    };
                    match sent {
                        Some(true) => {}
                        Some(false) => break,
                        None => {
                            let reason = self.outbox.kick_reason().unwrap_or(KickReason::Resync);
                            if reason == KickReason::SlowConsumer {
                                node.metrics.slow_consumers.inc();
                            }
                            tracing::info!(user = %self.conn.user, reason = reason.as_str(), "dropping a connection whose socket is full");
                            // Queued behind what the socket holds; bounded by close_with.
                            close_with(ws, close::POLICY, reason.as_str()).await;
                            break;
                        }
                    }
                }
                _ = &mut kicked => {
                    let reason = self.outbox.kick_reason().unwrap_or(KickReason::Resync);
                    let code = if reason == KickReason::SlowConsumer {
                        node.metrics.slow_consumers.inc();
                        close::POLICY
                    } else {
                        close::TRY_LATER
                    };
                    tracing::info!(user = %self.conn.user, reason = reason.as_str(), "telling the client to reconnect");
                    let text = Event::Reconnect { after_ms: jitter(100, 1_000), reason: reason.as_str(), url: None, region: None }.encode();
                    send_text(&node, ws, text).await;
                    close_with(ws, code, reason.as_str()).await;
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
                    // The text frames this read brought (a client may pipeline requests) are
                    // answered together; a frame of another kind ends the run.
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
                        if !send_texts(&node, ws, replies.into_iter().map(Utf8Bytes::from)).await {
                            break;
                        }
                    }
                    match other {
                        None | Some(Some(Ok(Message::Text(_)))) => {}
                        Some(Some(Ok(Message::Binary(_)))) => {
                            node.metrics.error(ErrorCode::BinaryNotSupported);
                            if !send_text(&node, ws, error_reply(None, ErrorCode::BinaryNotSupported, "send JSON text frames")).await {
                                break;
                            }
                        }
                        Some(Some(Ok(Message::Close(_))) | None) => break,
                        Some(Some(Ok(_))) => {}
                        Some(Some(Err(e))) => {
                            // tungstenite refuses frames over the hard limit before we see them.
                            if matches!(e.to_string(), s if s.contains("too long") || s.contains("Space limit")) {
                                node.metrics.error(ErrorCode::FrameTooLarge);
                                close_with(ws, close::TOO_BIG, "frame too large").await;
                            }
                            break;
                        }
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

    /// Checks the size and rate of one frame and parses it; `Err` is the reply for a frame
    /// refused before it is executed.
    fn admit(&mut self, text: &str) -> Result<(RequestId, Request), String> {
        let node = &self.node;
        if text.len() > node.config.limits.max_frame_bytes {
            node.metrics.error(ErrorCode::FrameTooLarge);
            let m = format!(
                "frame is {} bytes; the limit is {}",
                text.len(),
                node.config.limits.max_frame_bytes
            );
            return Err(error_reply(None, ErrorCode::FrameTooLarge, &m));
        }
        // Every frame costs a token, parsable or not, so garbage cannot flood past the limit.
        let allowed = self.bucket.take();
        let (id, request) = match Request::parse(text) {
            Ok(r) => r,
            Err(e) if allowed => {
                node.metrics.error(e.code);
                return Err(error_reply(e.id.as_ref(), e.code, &e.message));
            }
            Err(e) => {
                node.metrics.error(ErrorCode::RateLimited);
                return Err(error_reply(
                    e.id.as_ref(),
                    ErrorCode::RateLimited,
                    "too many requests; slow down",
                ));
            }
        };
        if !allowed {
            node.metrics.error(ErrorCode::RateLimited);
            return Err(error_reply(
                Some(&id),
                ErrorCode::RateLimited,
                "too many requests; slow down",
            ));
        }
        Ok((id, request))
    }

    fn reply(&self, id: &RequestId, outcome: Outcome) -> String {
        match outcome {
            Ok(result) => ok_reply(id, result),
            Err(Failure(code, message)) => {
                self.node.metrics.error(code);
                error_reply(Some(id), code, &message)
            }
        }
    }

    /// Answers the frames one read of the socket brought (a client may pipeline requests),
    /// in order; returns one reply per frame, in order. Consecutive publishes to one room go
    /// to the store as one batch (one round trip and one script, sequenced in the order
    /// sent); any other request first waits for the publishes before it.
    async fn handle_many(&mut self, texts: &[Utf8Bytes]) -> Vec<String> {
        let mut replies = Vec::with_capacity(texts.len());
        let mut batch: Option<PublishBatch> = None;
        for text in texts {
            let (id, request) = match self.admit(text) {
                Ok(r) => r,
                Err(reply) => {
                    replies.push(reply);
                    continue;
                }
            };
            let request = match request {
                Request::Publish {
                    room,
                    data,
                    idempotency_key,
                } => {
                    if let Err(f) = self.may_write(&room) {
                        replies.push(self.reply(&id, Err(f)));
                        continue;
                    }
                    if batch.as_ref().is_some_and(|b| b.room != room) {
                        self.publish(batch.take(), &mut replies).await;
                    }
                    let frame = RoomEventFrame::message(&room, &self.conn.user, &data);
                    let b = batch.get_or_insert_with(|| PublishBatch {
                        room,
                        items: Vec::new(),
                    });
                    b.items.push(PendingPublish {
                        slot: replies.len(),
                        id,
                        frame,
                        key: idempotency_key,
                    });
                    replies.push(String::new());
                    continue;
                }
                other => other,
            };
            self.publish(batch.take(), &mut replies).await;
            let outcome = self.execute(request).await;
            replies.push(self.reply(&id, outcome));
        }
        self.publish(batch.take(), &mut replies).await;
        replies
    }

    /// Sequences a batch of publishes (if there is one) with one store call and writes their
    /// replies into their slots.
    async fn publish(&self, batch: Option<PublishBatch>, replies: &mut [String]) {
        let Some(batch) = batch else { return };
        let node = &self.node;
        let items: Vec<PublishItem<'_>> = batch
            .items
            .iter()
            .map(|p| PublishItem {
                frame: &p.frame,
                idempotency: p.key.as_deref().map(|k| (&self.conn.user, k)),
            })
            .collect();
        // Charged to the user's region-wide budget (`limits.user_publishes_per_second`),
        // which all its connections on every node share, in the same store call.
        let budget_name = format!("pub:{}", self.conn.user);
        let budget = node
            .config
            .limits
            .user_publish_budget()
            .map(|limit| (budget_name.as_str(), limit));
        let result = node
            .timed(
                "publish",
                node.store
                    .publish_budgeted(&batch.room, &items, budget, Duration::from_secs(1)),
            )
            .await;
        match result {
            Ok(published) => {
                for (p, done) in batch.items.iter().zip(published) {
                    let result = PublishResult {
                        room: batch.room.clone(),
                        seq: done.seq,
                        epoch: done.epoch,
                        duplicate: done.duplicate,
                    };
                    replies[p.slot] = ok_reply(&p.id, result);
                }
            }
            Err(e) => {
                let failure = Failure::from(e);
                for p in &batch.items {
                    replies[p.slot] = self.reply(&p.id, Err(failure.clone()));
                }
            }
        }
    }

    async fn execute(&mut self, request: Request) -> Outcome {
        let node = self.node.clone();
        let store = &node.store;
        #[cfg(test)]
        if let Request::StateGet { key: Some(key), .. } = &request {
            // The forced failure of `tests::a_failing_session_gives_back_its_slot_and_rooms`.
            assert!(key != FAULT_KEY, "fault injected by a test");
        }
        match request {
            Request::Hello { .. } => Err(Failure(
                ErrorCode::AlreadyAuthenticated,
                "hello was already sent".into(),
            )),
            Request::Ping => answer(PingResult { pong: true }),
            Request::Join { room } => {
                let j = self.join(&room, None, &mut Vec::new()).await?;
                answer(JoinResult {
                    epoch: j.epoch,
                    first: j.first,
                    origins: j.origins,
                    room,
                    seq: j.seq,
                })
            }
            Request::Leave { room } => {
                let Some(_) = self.rooms.get(&room) else {
                    return Err(not_joined(&room));
                };
                let left = node
                    .timed("leave", store.leave(&room, &self.conn, LeftReason::Leave))
                    .await?;
                self.rooms.remove(&room);
                node.local.remove_subscriber(&room, self.conn.conn);
                let _ = store.unsubscribe(&room).await;
                answer(LeaveResult { left, room })
            }
            // `handle_many` batches every publish; none reaches here.
            Request::Publish { .. } => Err(Failure(
                ErrorCode::Internal,
                "publish outside a batch".into(),
            )),
            Request::Send { to, data } => {
                self.may_message(&to).await?;
                let frame = Event::Direct {
                    from: &self.conn.user,
                    data: &data,
                }
                .encode();
                self.spend_direct(&to, frame.len() as u64).await?;
                if node
                    .timed("send_direct", store.send_direct(&to, &frame))
                    .await?
                {
                    answer(SendResult { to })
                } else {
                    Err(Failure(
                        ErrorCode::UserOffline,
                        format!("{to} has no live connection"),
                    ))
                }
            }
            Request::Members { room, after, limit } => {
                self.may_see(&room)?;
                let max = node.config.limits.members_page_max;
                let limit = limit.unwrap_or(max).clamp(1, max);
                let page = node
                    .timed("members", store.members(&room, after.as_ref(), limit))
                    .await?;
                answer(MembersResult {
                    members: page.members,
                    next: page.next,
                    room,
                })
            }
            Request::Presence { users } => {
                let entries = self.presence(&users).await?;
                answer(PresenceResult { users: entries })
            }
            Request::StateSet {
                room,
                key,
                value,
                if_version,
            } => {
                self.may_write(&room)?;
                let version = node
                    .timed(
                        "state_set",
                        store.state_set(&room, &key, &value, if_version, &self.conn.user),
                    )
                    .await?;
                answer(StateSetResult { key, room, version })
            }
            Request::StateGet { room, key } => {
                self.may_see(&room)?;
                let entries = node
                    .timed("state_get", store.state_get(&room, key.as_deref()))
                    .await?;
                answer(StateGetResult { room, entries })
            }
            Request::StateDelete {
                room,
                key,
                if_version,
            } => {
                self.may_write(&room)?;
                let deleted = node
                    .timed(
                        "state_delete",
                        store.state_delete(&room, &key, if_version, &self.conn.user),
                    )
                    .await?;
                answer(StateDeleteResult { deleted, key, room })
            }
        }
    }

    /// The `send` rule: the target must share a room with this connection (a room it has
    /// joined, members of every region count), unless the token has the claim `dm`.
    async fn may_message(&self, to: &UserId) -> Result<(), Failure> {
        if self.claims.dm {
            return Ok(());
        }
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        let shared = if rooms.is_empty() {
            false
        } else {
            let node = &self.node;
            node.timed(
                "shares_room",
                node.store.shares_room(&rooms, std::slice::from_ref(to)),
            )
            .await?
            .first()
            .copied()
            .unwrap_or(false)
        };
        if shared {
            Ok(())
        } else {
            Err(Failure(
                ErrorCode::Forbidden,
                format!("{to} shares no room with this connection; direct messages need a shared room or the token claim `dm`"),
            ))
        }
    }

    /// Charges one direct message of `bytes` to the sender's and the recipient's region-wide
    /// budgets (count and bytes per second); `rate_limited` names the one that is spent.
    async fn spend_direct(&self, to: &UserId, bytes: u64) -> Result<(), Failure> {
        let l = &self.node.config.limits;
        let from = &self.conn.user;
        let names = [
            format!("dm-sent:{from}"),
            format!("dm-sent-bytes:{from}"),
            format!("dm-received:{to}"),
            format!("dm-received-bytes:{to}"),
        ];
        let all = [
            (
                l.dm_sent_per_second,
                1,
                "direct messages this user may send per second",
            ),
            (
                l.dm_sent_bytes_per_second,
                bytes,
                "direct-message bytes this user may send per second",
            ),
            (
                l.dm_received_per_second,
                1,
                "direct messages the recipient may be sent per second",
            ),
            (
                l.dm_received_bytes_per_second,
                bytes,
                "direct-message bytes the recipient may be sent per second",
            ),
        ];
        let mut budgets = Vec::with_capacity(4);
        let mut what = Vec::with_capacity(4);
        for (name, (limit, cost, text)) in names.iter().zip(all) {
            if limit > 0 {
                budgets.push(Budget { name, cost, limit });
                what.push((limit, text));
            }
        }
        let node = &self.node;
        match node
            .timed("spend", node.store.spend(&budgets, Duration::from_secs(1)))
            .await?
        {
            None => Ok(()),
            Some(i) => {
                let (limit, text) = what
                    .get(i)
                    .copied()
                    .unwrap_or((0, "a direct-message budget"));
                Err(Failure(
                    ErrorCode::RateLimited,
                    format!("over the {limit} {text}; retry later"),
                ))
            }
        }
    }

    /// `presence`, scoped: users who share no room with this connection (a room it has
    /// joined) are reported offline, whatever their state, so presence tells nothing about
    /// strangers. The asker always sees itself; a token with the claim `dm` (may contact
    /// anyone) sees everyone.
    async fn presence(&self, users: &[UserId]) -> Result<Vec<PresenceEntry>, Failure> {
        let node = &self.node;
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        let shared = if self.claims.dm {
            vec![true; users.len()]
        } else if rooms.is_empty() {
            vec![false; users.len()]
        } else {
            node.timed("shares_room", node.store.shares_room(&rooms, users))
                .await?
        };
        let visible: Vec<UserId> = users
            .iter()
            .zip(shared.iter().chain(std::iter::repeat(&false)))
            .filter(|(u, s)| **s || **u == self.conn.user)
            .map(|(u, _)| u.clone())
            .collect();
        let found: HashMap<UserId, PresenceEntry> = if visible.is_empty() {
            HashMap::new()
        } else {
            node.timed("presence", node.store.presence(&visible))
                .await?
                .into_iter()
                .map(|e| (e.user.clone(), e))
                .collect()
        };
        Ok(users
            .iter()
            .map(|u| {
                found.get(u).cloned().unwrap_or_else(|| PresenceEntry {
                    user: u.clone(),
                    online: false,
                    connections: 0,
                    regions: Vec::new(),
                })
            })
            .collect())
    }

    fn may_see(&self, room: &RoomId) -> Result<(), Failure> {
        if self.claims.may_join(room) {
            Ok(())
        } else {
            Err(Failure(
                ErrorCode::Forbidden,
                format!("the token does not cover room {room}"),
            ))
        }
    }

    fn may_write(&self, room: &RoomId) -> Result<(), Failure> {
        if !self.rooms.contains_key(room) {
            return Err(not_joined(room));
        }
        if !self.claims.may_publish(room) {
            return Err(Failure(
                ErrorCode::PublishForbidden,
                format!("the token does not allow publishing in {room}"),
            ));
        }
        Ok(())
    }

    /// Joins a room: subscribe first (so nothing published after the join is missed), then
    /// the store join, then — when resuming — the history replay, then live delivery.
    async fn join(
        &mut self,
        room: &RoomId,
        resume: Option<(&str, u64, &[OriginPosition])>,
        replays: &mut Replays,
    ) -> Result<Joined, Failure> {
        self.may_see(room)?;
        if let Some(sub) = self.rooms.get(room) {
            // Already in the room (a repeated join, or a room listed twice in a resume).
            let (epoch, seq) = sub.position().unwrap_or_default();
            return Ok(Joined {
                epoch: epoch.to_string(),
                seq,
                first: false,
                history_lost: false,
                origins: Vec::new(),
            });
        }
        let node = self.node.clone();
        let limits = &node.config.limits;
        if self.rooms.len() >= limits.max_rooms_per_connection {
            return Err(Failure(
                ErrorCode::TooManyRooms,
                format!(
                    "a connection may be in at most {} rooms",
                    limits.max_rooms_per_connection
                ),
            ));
        }
        let sub = Subscriber::new(self.conn.conn, self.outbox.clone());
        node.local.add_subscriber(room, sub.clone());
        if let Err(e) = node.timed("subscribe", node.store.subscribe(room)).await {
            node.local.remove_subscriber(room, self.conn.conn);
            return Err(e.into());
        }
        if let Some((_, _, vector)) = resume.filter(|(_, _, v)| !v.is_empty()) {
            // Before the join announces interest: where a relay that starts following the
            // room here must have the other regions replay from (a client re-homed into a
            // region where the room had no members yet). Without it the replay starts at the
            // join, so the failure is logged, not refused.
            if let Err(e) = node.store.want_replay(room, vector).await {
                tracing::warn!(%room, error = %e, "cannot record the resumer's positions for the relays");
            }
        }
        let joined = node
            .timed(
                "join",
                node.store
                    .join(room, &self.conn, limits.max_members_per_room),
            )
            .await;
        let outcome = match joined {
            Ok(o) => o,
            Err(e) => {
                node.local.remove_subscriber(room, self.conn.conn);
                let _ = node.store.unsubscribe(room).await;
                return Err(e.into());
            }
        };
        node.metrics.joins.inc();
        self.rooms.insert(room.clone(), sub.clone());
        let mut position = outcome.seq;
        let mut history_lost = false;
        if let Some((epoch, seq, vector)) = resume {
            // A position in another region's sequence (the epoch is not this room's here)
            // with a version vector: cross-region resume.
            let cross = !vector.is_empty() && epoch != outcome.epoch;
            if cross {
                // Events the client got elsewhere may still reach this region later.
                sub.set_floor(vector);
            }
            // A slow or failing-over store gets two more tries (after 200 ms and 800 ms)
            // before the resumer is told its history is lost.
            let mut retries = 0u32;
            let read = loop {
                let attempt = if cross {
                    node.timed("history", node.store.history_since(room, vector))
                        .await
                } else {
                    node.timed("history", node.store.history(room, epoch, seq))
                        .await
                };
                match attempt {
                    Err(e) if e.is_retryable() && retries < 2 => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(50 << (2 * retries))).await;
                    }
                    read => break read,
                }
            };
            match read {
                Ok(Recovery::Replay { events, .. }) => {
                    for (s, frame) in events {
                        // The resumer's own `joined` is not news to it (as on a plain join).
                        if !(outcome.first && s == outcome.seq) {
                            replays.push(frame);
                        }
                        position = position.max(s);
                    }
                }
                Ok(Recovery::Lost { .. }) => history_lost = true,
                Err(e) => {
                    // Joined, but the replay failed: the client is live from the join and is
                    // told its history could not be recovered.
                    tracing::warn!(%room, error = %e, "history read failed during resume");
                    history_lost = true;
                }
            }
        }
        if !sub.go_live(position, &outcome.epoch) {
            // More events arrived during the join than can be held: the client must resume.
            self.outbox.kick(KickReason::Resync);
        }
        Ok(Joined {
            epoch: outcome.epoch,
            seq: position,
            first: outcome.first,
            history_lost,
            origins: outcome.origins,
        })
    }

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

    /// Removes the connection's memberships and presence from the store. Retries for a while
    /// when the store is unreachable so a Redis blip does not leave ghost members.
    async fn cleanup(&mut self) {
        self.take_cleanup().await;
    }

    /// The clean-up, once: unregisters the connection locally at once and returns the store
    /// part to run.
    fn take_cleanup(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.cleaned = true;
        let node = self.node.clone();
        node.local.remove_user_conn(&self.conn.user, self.conn.conn);
        let rooms: Vec<RoomId> = self.rooms.drain().map(|(r, _)| r).collect();
        for room in &rooms {
            node.local.remove_subscriber(room, self.conn.conn);
        }
        let store = node.store.clone();
        let conn = self.conn.clone();
        let work = async move {
            let mut pending = rooms;
            let mut backoff = Duration::from_millis(100);
            for _ in 0..8 {
                let mut failed = Vec::new();
                for room in pending {
                    match store.leave(&room, &conn, LeftReason::Disconnect).await {
                        Ok(_) => {
                            let _ = store.unsubscribe(&room).await;
                        }
                        Err(_) => failed.push(room),
                    }
                }
                pending = failed;
                if pending.is_empty() && store.disconnect(&conn).await.is_ok() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            tracing::warn!(user = %conn.user, rooms = pending.len(), "could not remove a closed connection from the store");
        };
        work
    }
}

/// A session that ends without its clean-up (a panic, a bug, its task dropped) still leaves
/// no member or presence behind: local state goes at once, the store part runs on its own.
impl Drop for Session {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        tracing::warn!(user = %self.conn.user, conn = self.conn.conn, "session ended without its clean-up; cleaning up now");
        let work = self.take_cleanup();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(work);
            }
            Err(_) => tracing::warn!("no runtime to clean a dropped session out of the store"),
        }
    }
}

fn not_joined(room: &RoomId) -> Failure {
    Failure(
        ErrorCode::NotJoined,
        format!("not in room {room}; join it first"),
    )
}

fn jitter(min: u64, max: u64) -> u64 {
    min + rand::random::<u64>() % (max.saturating_sub(min) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use futures_util::{SinkExt, StreamExt};
    use meridian_protocol::token::{issue, Claims, RoomGrant};
    use region_state::{MemoryRegion, NodeId, StateStore};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    const SECRET: &str = "session-test-secret-0123";

    fn token(user: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = Claims {
            sub: UserId::new(user).unwrap(),
            exp,
            rooms: vec![RoomGrant {
                pattern: "*".into(),
                publish: true,
            }],
            nbf: None,
            iat: None,
            dm: false,
        };
        issue(SECRET.as_bytes(), &claims).unwrap()
    }

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Sends `req` and returns the next text frame, or `None` when the connection ended.
    async fn ask(ws: &mut Ws, req: serde_json::Value) -> Option<serde_json::Value> {
        ws.send(WsMessage::Text(req.to_string().into()))
            .await
            .ok()?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(WsMessage::Text(t)))) => return serde_json::from_str(&t).ok(),
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return None,
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("no answer to {req} within 5 s"),
            }
        }
    }

    async fn open_gauge(addr: std::net::SocketAddr) -> i64 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.unwrap();
        body.lines()
            .find(|l| l.starts_with("meridian_node_connections{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }

    /// A session that fails (here: a panic injected on one `state_get` key) gives back its
    /// admission slot and its memberships. Before the guards, 20 such failures with
    /// `max_connections = 20` left the gauge at 20 and every later user shed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_session_gives_back_its_slot_and_rooms() {
        let mut config = NodeConfig::dev("test", SECRET);
        config.limits.max_connections = 20;
        let (tx, rx) = mpsc::channel(4096);
        let store: Arc<dyn StateStore> = Arc::new(MemoryRegion::new().store(
            "test",
            NodeId::random(),
            config.store_limits(),
            tx,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running =
            crate::node::start_with_store(config, store.clone(), rx, listener, shutdown.clone())
                .await
                .unwrap();
        let url = format!("ws://{}/v1/ws", running.addr);
        let room = RoomId::new("poisoned").unwrap();
        for i in 0..30 {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let hello = ask(
                &mut ws,
                json!({"id": 1, "op": "hello", "token": token(&format!("u{i}"))}),
            )
            .await
            .unwrap();
            assert_eq!(hello["type"], "ok", "reader {i}: {hello}");
            let joined = ask(&mut ws, json!({"id": 2, "op": "join", "room": "poisoned"}))
                .await
                .unwrap();
            assert_eq!(joined["type"], "ok", "{joined}");
            let read = ask(
                &mut ws,
                json!({"id": 3, "op": "state_get", "room": "poisoned", "key": FAULT_KEY}),
            )
            .await;
            assert!(
                read.is_none(),
                "the injected fault ends the session: {read:?}"
            );
        }
        // Every slot and membership comes back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let gauge = open_gauge(running.addr).await;
            let members = store.members(&room, None, 100).await.unwrap().members;
            if gauge == 0 && members.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gauge {gauge}, members {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And a new user gets in.
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let hello = ask(
            &mut ws,
            json!({"id": 1, "op": "hello", "token": token("late")}),
        )
        .await
        .unwrap();
        assert_eq!(hello["type"], "ok", "{hello}");
        shutdown.cancel();
    }
}
