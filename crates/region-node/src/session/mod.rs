//! One client connection: `hello`, then requests and events until the client leaves, the
//! connection dies, it falls too far behind, or the node drains.
//!
//! The layers, outermost first:
//!
//! - this file: [`serve`] and [`shed`] (what the HTTP layer hands an upgraded socket to), the
//!   [`Session`] a connection owns after `hello`, and its clean-up out of the store;
//! - `hello.rs`: waiting for `hello`, authentication, and the `resume` list;
//! - `run.rs`: the connection's loop: requests in, queued events out, pings, drain, kicks;
//! - `requests.rs`: admitting frames (size, rate), answering a read's pipelined requests
//!   (`handle_many`, the publish batch) and executing every other op;
//! - `join.rs`: joining a room, with the history replay of a resume;
//! - `access.rs`: what the token and the room memberships allow (rooms, `send`, presence,
//!   direct-message budgets);
//! - `socket.rs`: writing frames and closing the WebSocket, with timeouts.
//!
//! Every reply's `result` is a typed value from `meridian_protocol` (`JoinResult`, …).

mod access;
mod hello;
mod join;
mod requests;
mod run;
mod socket;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use meridian_protocol::token::Claims;
use meridian_protocol::{ErrorCode, Event, LeftReason, RoomId};
use region_state::{ConnRef, StoreError};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::context::Node;
use crate::fanout::{Outbox, Subscriber};
use requests::TokenBucket;
use socket::{close, close_with};

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

/// Frames to write right after the hello reply: replayed room history.
type Replays = Vec<bytes::Bytes>;

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
    let hello = Box::pin(hello::hello(&node, &mut ws, conn_no)).await;
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

/// An authenticated connection: who it is, the rooms it is in, and its queue of frames to send.
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

impl Session {
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
