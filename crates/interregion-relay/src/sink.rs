//! Where received frames go: the seam between the transport (this crate's links) and the
//! replication logic that comes next (writing remote events and members into the region's
//! Redis). The transport calls an [`EventSink`] for every frame it accepts from a peer.
//!
//! Calls for frames of one lane are awaited one after the other, so the order of
//! `room_event` calls for one room is the order the origin sent them. A slow sink slows that
//! lane only (QUIC flow control pushes back to the sender); other lanes go on.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use meridian_protocol::relay::{Direct, Frame, Hello, RoomEvent};

/// A link came up or went down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// Hello exchanged; frames flow.
    Up {
        /// The peer's Hello.
        hello: Hello,
    },
    /// The link is gone.
    Down {
        /// Why, for logs (`timed out`, `closed by peer: ... relay shutting down`, ...).
        reason: String,
    },
}

/// Receives what peers send. Implementations must not block the runtime.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// A room event from `peer`.
    async fn room_event(&self, peer: &str, event: RoomEvent);
    /// A direct message from `peer`.
    async fn direct(&self, peer: &str, direct: Direct);
    /// A control frame from `peer`: `Interest`, `InterestSnapshot` or `Presence`.
    async fn control(&self, peer: &str, frame: Frame);
    /// The link to `peer` changed state (e.g. to announce the interest snapshot on `Up`).
    async fn link(&self, peer: &str, event: LinkEvent);
}

/// The sink of the relay binary until replication exists: logs at debug level. Counts are
/// in `/metrics` already (`meridian_relay_events_total`).
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait]
impl EventSink for LogSink {
    async fn room_event(&self, peer: &str, event: RoomEvent) {
        tracing::debug!(
            peer,
            room = %event.room,
            origin = %event.origin_region,
            seq = event.origin_seq,
            "room event received (not replicated yet)"
        );
    }
    async fn direct(&self, peer: &str, direct: Direct) {
        tracing::debug!(peer, to = %direct.to_user, "direct message received (not delivered yet)");
    }
    async fn control(&self, peer: &str, frame: Frame) {
        tracing::debug!(peer, frame = frame.name(), "control frame received");
    }
    async fn link(&self, peer: &str, event: LinkEvent) {
        tracing::debug!(peer, ?event, "link event");
    }
}

/// Something a [`MemorySink`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A room event.
    RoomEvent(String, RoomEvent),
    /// A direct message.
    Direct(String, Direct),
    /// A control frame.
    Control(String, Frame),
    /// A link change.
    Link(String, LinkEvent),
}

/// Keeps everything in memory, in arrival order; tests wait on it.
#[derive(Debug)]
pub struct MemorySink {
    items: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }
}

impl MemorySink {
    fn push(&self, item: Received) {
        let n = {
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            items.push(item);
            items.len()
        };
        self.count.send_replace(n);
    }

    /// A copy of everything received so far.
    pub fn items(&self) -> Vec<Received> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The room events received so far, with the peer they came from.
    pub fn room_events(&self) -> Vec<(String, RoomEvent)> {
        self.items()
            .into_iter()
            .filter_map(|i| match i {
                Received::RoomEvent(p, e) => Some((p, e)),
                _ => None,
            })
            .collect()
    }

    /// Waits until `done(items)` holds, or `limit` passes; returns whether it held.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let mut rx = self.count.subscribe();
        let check = || done(&self.items.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::time::timeout(limit, async {
            loop {
                if check() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && check()
    }
}

#[async_trait]
impl EventSink for MemorySink {
    async fn room_event(&self, peer: &str, event: RoomEvent) {
        self.push(Received::RoomEvent(peer.into(), event));
    }
    async fn direct(&self, peer: &str, direct: Direct) {
        self.push(Received::Direct(peer.into(), direct));
    }
    async fn control(&self, peer: &str, frame: Frame) {
        self.push(Received::Control(peer.into(), frame));
    }
    async fn link(&self, peer: &str, event: LinkEvent) {
        self.push(Received::Link(peer.into(), event));
    }
}
