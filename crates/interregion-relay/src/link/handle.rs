//! [`RelayHandle`]: what the rest of the relay (replication, tests) does with running links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{lock, Link, SendError, Shared};
use crate::link::Outgoing;
use crate::metrics::{Metrics, OUT};
use meridian_protocol::relay::{self as frame, Direct, Frame, RoomEvent};

/// The API of a running relay; cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("region", &self.shared.options.region)
            .finish()
    }
}

impl RelayHandle {
    /// This relay's region.
    pub fn region(&self) -> &str {
        &self.shared.options.region
    }

    /// The QUIC address the relay listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// QUIC connections currently open on the endpoint (dialed and accepted, any state).
    pub fn open_connections(&self) -> usize {
        self.shared.endpoint.open_connections()
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether the link to `peer` is up.
    pub fn is_up(&self, peer: &str) -> bool {
        lock(&self.shared.links).contains_key(peer)
    }

    /// When anything was last received from `peer` (at the latest; sampled every 200 ms from
    /// the connection's datagram count, so it is never later than the truth). `None` while
    /// the link is down. Keep-alives make a live link heard at least every `keep_alive` + RTT.
    pub fn last_heard(&self, peer: &str) -> Option<std::time::Instant> {
        let link = lock(&self.shared.links).get(peer).cloned()?;
        let heard = *lock(&link.heard);
        Some(heard)
    }

    /// Link state of every peer.
    pub fn links(&self) -> BTreeMap<String, bool> {
        self.shared.states.borrow().clone()
    }

    /// Waits until the link to `peer` is `up` (or not), at most `limit`; returns whether it is.
    pub async fn wait_link(&self, peer: &str, up: bool, limit: Duration) -> bool {
        let mut rx = self.shared.states.subscribe();
        tokio::time::timeout(
            limit,
            rx.wait_for(|m| m.get(peer).copied().unwrap_or(false) == up),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    fn link(&self, peer: &str) -> Result<Arc<Link>, SendError> {
        lock(&self.shared.links)
            .get(peer)
            .cloned()
            .ok_or_else(|| SendError::NotConnected(peer.into()))
    }

    /// Sends a room event to `peer` on the room's lane.
    pub async fn send_room_event(&self, peer: &str, event: &RoomEvent) -> Result<(), SendError> {
        let out = Outgoing::room_event(event, self.shared.options.limits.max_frame_bytes)?;
        self.send(peer, &out).await
    }

    /// Sends a direct message to `peer` on the recipient's lane.
    pub async fn send_direct(&self, peer: &str, direct: &Direct) -> Result<(), SendError> {
        let out = Outgoing::direct(direct, self.shared.options.limits.max_frame_bytes)?;
        self.send(peer, &out).await
    }

    /// Sends an encoded frame on its lane. Waits while the lane's queue is full.
    pub async fn send(&self, peer: &str, out: &Outgoing) -> Result<(), SendError> {
        let link = self.link(peer)?;
        let lane = link.lane(&self.shared, &out.lane_key);
        lane.send(out.bytes.clone())
            .await
            .map_err(|_| SendError::Closed(peer.into()))?;
        self.shared.metrics.event(peer, OUT);
        Ok(())
    }

    /// Sends `Interest`, `InterestSnapshot` or `Presence` on the control stream.
    pub async fn send_control(&self, peer: &str, frame: &Frame) -> Result<(), SendError> {
        match frame {
            Frame::Interest { .. } | Frame::InterestSnapshot { .. } | Frame::Presence(_) => {}
            other => return Err(SendError::WrongKind(other.name())),
        }
        let bytes = frame::encode(frame, self.shared.options.limits.max_frame_bytes)?;
        let link = self.link(peer)?;
        link.control
            .send(bytes)
            .await
            .map_err(|_| SendError::Closed(peer.into()))
    }

    /// Measures an application-level round trip to `peer` (`Ping`/`Pong` on the control stream).
    pub async fn ping(&self, peer: &str, limit: Duration) -> Result<Duration, SendError> {
        let link = self.link(peer)?;
        let nonce = self.shared.next_nonce.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pings).insert(nonce, tx);
        let bytes = frame::encode(&Frame::Ping { nonce }, usize::MAX)?;
        let start = tokio::time::Instant::now();
        let sent = link.control.send(bytes).await;
        let answered = sent.is_ok() && matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())));
        lock(&self.shared.pings).remove(&nonce);
        if answered {
            Ok(start.elapsed())
        } else {
            Err(SendError::Closed(peer.into()))
        }
    }

    /// The QUIC smoothed RTT of the link to `peer`.
    pub fn rtt(&self, peer: &str) -> Option<Duration> {
        lock(&self.shared.links).get(peer).map(|l| l.conn.rtt())
    }
}
