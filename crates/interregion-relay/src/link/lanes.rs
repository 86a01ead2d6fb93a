//! Lanes: the unidirectional streams room events and direct messages travel on. A room (or a
//! direct message's recipient) keeps its lane while the link lives, so per-room order holds;
//! past `limits.max_room_streams`, keys share the open lanes by a stable hash.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, RecvStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{codes, lock, Link, Shared};
use crate::metrics::{Metrics, IN, OUT};
use meridian_protocol::relay::{self as frame, Direct, Frame, FrameError, RoomEvent};

/// Stable FNV-1a, for lane sharing (the same on every build, unlike `DefaultHasher`).
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A frame encoded once, ready for any number of peers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub(super) lane_key: String,
    pub(super) bytes: Bytes,
}

impl Outgoing {
    /// A room event, on the room's lane.
    pub fn room_event(event: &RoomEvent, max_frame_bytes: usize) -> Result<Self, FrameError> {
        Ok(Self {
            lane_key: event.room.as_str().to_owned(),
            bytes: frame::encode(&Frame::RoomEvent(event.clone()), max_frame_bytes)?,
        })
    }

    /// A direct message, on the recipient's lane.
    pub fn direct(direct: &Direct, max_frame_bytes: usize) -> Result<Self, FrameError> {
        Ok(Self {
            // NUL cannot occur in a room id, so user lanes never alias room lanes by key.
            lane_key: format!("\0{}", direct.to_user),
            bytes: frame::encode(&Frame::Direct(direct.clone()), max_frame_bytes)?,
        })
    }
}

/// The lanes of one link, sending side.
pub(super) struct Lanes {
    pub(super) by_key: HashMap<String, usize>,
    pub(super) senders: Vec<mpsc::Sender<Bytes>>,
}

impl Link {
    /// The lane for `key`, opening one when allowed (or replacing a lane whose stream died).
    pub(super) fn lane(&self, shared: &Arc<Shared>, key: &str) -> mpsc::Sender<Bytes> {
        let max = shared.options.limits.max_room_streams.max(1);
        let mut lanes = lock(&self.lanes);
        let index = match lanes.by_key.get(key) {
            Some(i) => *i,
            None if lanes.senders.len() < max => {
                let i = lanes.senders.len();
                let tx = self.spawn_lane(shared);
                lanes.senders.push(tx);
                lanes.by_key.insert(key.to_owned(), i);
                i
            }
            None => (fnv1a(key) % lanes.senders.len() as u64) as usize,
        };
        let lane = &mut lanes.senders[index];
        if lane.is_closed() {
            // The stream was stopped (e.g. the peer rejected a frame); its frames are gone
            // anyway, so a fresh stream cannot reorder anything.
            *lane = self.spawn_lane(shared);
        }
        lane.clone()
    }

    fn spawn_lane(&self, shared: &Arc<Shared>) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(shared.options.limits.lane_queue.max(1));
        shared.tasks.spawn(lane_writer(
            self.conn.clone(),
            rx,
            self.peer.clone(),
            shared.metrics.clone(),
        ));
        tx
    }
}

async fn lane_writer(
    conn: Connection,
    mut rx: mpsc::Receiver<Bytes>,
    peer: String,
    metrics: Arc<Metrics>,
) {
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(peer, error = %e, "cannot open a lane");
            return;
        }
    };
    while let Some(bytes) = rx.recv().await {
        let n = bytes.len();
        if let Err(e) = stream.write_chunk(bytes).await {
            tracing::debug!(peer, error = %e, "lane closed");
            return;
        }
        metrics.bytes(&peer, OUT, n);
    }
    let _ = stream.finish();
}

pub(super) async fn accept_lanes(
    shared: Arc<Shared>,
    conn: Connection,
    peer: String,
    stop: CancellationToken,
) {
    let lanes = TaskTracker::new();
    loop {
        let recv = tokio::select! {
            _ = stop.cancelled() => break,
            r = conn.accept_uni() => match r {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        lanes.spawn(lane_reader(
            shared.clone(),
            recv,
            peer.clone(),
            stop.clone(),
        ));
    }
    lanes.close();
    lanes.wait().await;
}

async fn lane_reader(
    shared: Arc<Shared>,
    mut recv: RecvStream,
    peer: String,
    stop: CancellationToken,
) {
    let max = shared.options.limits.max_frame_bytes;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            r = frame::read_frame(&mut recv, max) => r,
        };
        let (frame, n) = match next {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) if e.is_protocol_violation() => {
                let code = match e {
                    FrameError::TooLarge { .. } => codes::FRAME_TOO_LARGE,
                    _ => codes::MALFORMED_FRAME,
                };
                // Counted before the stop is sent, so whoever sees the stop sees the count.
                shared.metrics.malformed(&peer);
                let _ = recv.stop(code);
                tracing::warn!(%peer, stream = %recv.id(), error = %e, "closing a lane: bad frame");
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "lane ended");
                return;
            }
        };
        shared.metrics.bytes(&peer, IN, n);
        match frame {
            Frame::RoomEvent(event) => {
                shared.metrics.event(&peer, IN);
                shared.sink.room_event(&peer, event).await;
            }
            Frame::Direct(direct) => {
                shared.metrics.event(&peer, IN);
                shared.sink.direct(&peer, direct).await;
            }
            other => {
                shared.metrics.malformed(&peer);
                let _ = recv.stop(codes::UNEXPECTED_FRAME);
                tracing::warn!(%peer, frame = other.name(), "closing a lane: frame does not belong on a lane");
                return;
            }
        }
    }
}
