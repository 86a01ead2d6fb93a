//! Prometheus metrics of one relay, served at `/metrics`. One registry per relay instance (no
//! globals), so several relays can run in one test process.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `meridian_relay_link_up` | `peer` | 1 while the link to `peer` is established (Hello exchanged) |
//! | `meridian_relay_link_rtt_seconds` | `peer` | QUIC smoothed RTT of the link, refreshed every `timing.rtt_sample_ms` |
//! | `meridian_relay_bytes_total` | `peer`, `direction` (`in`/`out`) | frame bytes (with prefixes) on all streams |
//! | `meridian_relay_events_total` | `peer`, `direction` | `RoomEvent` and `Direct` frames |
//! | `meridian_relay_malformed_frames_total` | `peer` | frames that closed their stream (malformed, oversized, truncated, unexpected) |
//! | `meridian_relay_active` | — | 1 while this relay is its region's active relay (always, until the standby lease exists) |
//! | `meridian_relay_refused_total` | `reason` | handshakes refused: `certificate`, `unknown_region`, `protocol_version`, `hello` |
//! | `meridian_relay_link_transitions_total` | `peer`, `state` (`up`/`down`) | link state changes |
//! | `meridian_relay_applied_total` | `peer`, `outcome` (`applied`/`duplicate`/`superseded`/`gap`/`error`) | replicated room events from `peer` written into this region's Redis, by outcome |
//! | `meridian_relay_snapshots_sent_total` | `peer` | room snapshots sent (a region started following a room, or its resume point was trimmed away) |
//! | `meridian_relay_history_truncated_total` | `peer` | resumes the room history no longer reached back to (messages the peer missed are gone) |
//! | `meridian_relay_followed_rooms` | `peer` | rooms `peer` follows from this region |
//! | `meridian_relay_region_down_total` | `peer` | times `peer` was declared down (link lost past the grace period) |
//! | `meridian_relay_direct_dropped_total` | `peer` | direct messages for a user in `peer` dropped because the link was down |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `{peer}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer region.
    pub peer: String,
}

/// `{peer, direction}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// The peer region.
    pub peer: String,
    /// `in` or `out`.
    pub direction: &'static str,
}

/// `{peer, state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The peer region.
    pub peer: String,
    /// `up` or `down`.
    pub state: &'static str,
}

/// `{peer, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The peer region.
    pub peer: String,
    /// What applying the event did.
    pub outcome: &'static str,
}

/// `{reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    /// `meridian_relay_link_up{peer}`.
    pub link_up: Family<PeerLabels, Gauge>,
    /// `meridian_relay_link_rtt_seconds{peer}`.
    pub link_rtt_seconds: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// `meridian_relay_bytes_total{peer,direction}`.
    pub bytes: Family<FlowLabels, Counter>,
    /// `meridian_relay_events_total{peer,direction}`.
    pub events: Family<FlowLabels, Counter>,
    /// `meridian_relay_malformed_frames_total{peer}`.
    pub malformed_frames: Family<PeerLabels, Counter>,
    /// `meridian_relay_active`.
    pub active: Gauge,
    /// `meridian_relay_refused_total{reason}`.
    pub refused: Family<ReasonLabels, Counter>,
    /// `meridian_relay_link_transitions_total{peer,state}`.
    pub transitions: Family<TransitionLabels, Counter>,
    /// `meridian_relay_applied_total{peer,outcome}`.
    pub applied: Family<OutcomeLabels, Counter>,
    /// `meridian_relay_snapshots_sent_total{peer}`.
    pub snapshots_sent: Family<PeerLabels, Counter>,
    /// `meridian_relay_history_truncated_total{peer}`.
    pub history_truncated: Family<PeerLabels, Counter>,
    /// `meridian_relay_followed_rooms{peer}`.
    pub followed_rooms: Family<PeerLabels, Gauge>,
    /// `meridian_relay_region_down_total{peer}`.
    pub region_down: Family<PeerLabels, Counter>,
    /// `meridian_relay_direct_dropped_total{peer}`.
    pub direct_dropped: Family<PeerLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Direction label of received traffic.
pub const IN: &str = "in";
/// Direction label of sent traffic.
pub const OUT: &str = "out";

impl Metrics {
    /// A fresh registry under `meridian_relay_`, with a zero series for every peer.
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut r = Registry::with_prefix("meridian_relay");
        let m = Self {
            link_up: Family::default(),
            link_rtt_seconds: Family::default(),
            bytes: Family::default(),
            events: Family::default(),
            malformed_frames: Family::default(),
            active: Gauge::default(),
            refused: Family::default(),
            transitions: Family::default(),
            applied: Family::default(),
            snapshots_sent: Family::default(),
            history_truncated: Family::default(),
            followed_rooms: Family::default(),
            region_down: Family::default(),
            direct_dropped: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "link_up",
            "1 while the link to the peer region is established",
            m.link_up.clone(),
        );
        r.register(
            "link_rtt_seconds",
            "Smoothed QUIC round-trip time of the link",
            m.link_rtt_seconds.clone(),
        );
        r.register(
            "bytes",
            "Frame bytes exchanged with the peer",
            m.bytes.clone(),
        );
        r.register(
            "events",
            "Room events and direct messages exchanged with the peer",
            m.events.clone(),
        );
        r.register(
            "malformed_frames",
            "Frames from the peer that closed their stream",
            m.malformed_frames.clone(),
        );
        r.register(
            "active",
            "1 while this relay is its region's active relay",
            m.active.clone(),
        );
        r.register(
            "refused",
            "Peer handshakes refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "link_transitions",
            "Link state changes",
            m.transitions.clone(),
        );
        r.register(
            "applied",
            "Replicated room events from the peer written into this region, by outcome",
            m.applied.clone(),
        );
        r.register(
            "snapshots_sent",
            "Room snapshots sent to the peer",
            m.snapshots_sent.clone(),
        );
        r.register(
            "history_truncated",
            "Peer resumes the room history no longer reached back to",
            m.history_truncated.clone(),
        );
        r.register(
            "followed_rooms",
            "Rooms the peer follows from this region",
            m.followed_rooms.clone(),
        );
        r.register(
            "region_down",
            "Times the peer region was declared down",
            m.region_down.clone(),
        );
        r.register(
            "direct_dropped",
            "Direct messages for the peer region dropped while its link was down",
            m.direct_dropped.clone(),
        );
        for peer in peers {
            let p = PeerLabels { peer: peer.into() };
            m.link_up.get_or_create(&p).set(0);
            let _ = m.snapshots_sent.get_or_create(&p);
            let _ = m.region_down.get_or_create(&p);
            let _ = m.direct_dropped.get_or_create(&p);
            let _ = m.history_truncated.get_or_create(&p);
            m.followed_rooms.get_or_create(&p).set(0);
            for outcome in ["applied", "duplicate", "superseded", "gap", "error"] {
                let _ = m.applied.get_or_create(&OutcomeLabels {
                    peer: peer.into(),
                    outcome,
                });
            }
            let _ = m.malformed_frames.get_or_create(&p);
            for direction in [IN, OUT] {
                let f = FlowLabels {
                    peer: peer.into(),
                    direction,
                };
                let _ = m.bytes.get_or_create(&f);
                let _ = m.events.get_or_create(&f);
            }
        }
        Self { registry: r, ..m }
    }

    /// Counts frame bytes.
    pub fn bytes(&self, peer: &str, direction: &'static str, n: usize) {
        self.bytes
            .get_or_create(&FlowLabels {
                peer: peer.into(),
                direction,
            })
            .inc_by(n as u64);
    }

    /// Counts one event frame.
    pub fn event(&self, peer: &str, direction: &'static str) {
        self.events
            .get_or_create(&FlowLabels {
                peer: peer.into(),
                direction,
            })
            .inc();
    }

    /// Counts a malformed frame.
    pub fn malformed(&self, peer: &str) {
        self.malformed_frames
            .get_or_create(&PeerLabels { peer: peer.into() })
            .inc();
    }

    /// Current malformed count of `peer` (tests).
    pub fn malformed_count(&self, peer: &str) -> u64 {
        self.malformed_frames
            .get_or_create(&PeerLabels { peer: peer.into() })
            .get()
    }

    /// Count of refusals for `reason` (tests).
    pub fn refused_count(&self, reason: &'static str) -> u64 {
        self.refused.get_or_create(&ReasonLabels { reason }).get()
    }

    /// Sets the link state of `peer`.
    pub fn set_link(&self, peer: &str, up: bool) {
        self.link_up
            .get_or_create(&PeerLabels { peer: peer.into() })
            .set(i64::from(up));
        self.transitions
            .get_or_create(&TransitionLabels {
                peer: peer.into(),
                state: if up { "up" } else { "down" },
            })
            .inc();
    }

    /// Counts one replicated event from `peer` by outcome.
    pub fn applied(&self, peer: &str, outcome: &'static str) {
        self.applied
            .get_or_create(&OutcomeLabels {
                peer: peer.into(),
                outcome,
            })
            .inc();
    }

    /// Count of replicated events from `peer` with `outcome` (tests).
    pub fn applied_count(&self, peer: &str, outcome: &'static str) -> u64 {
        self.applied
            .get_or_create(&OutcomeLabels {
                peer: peer.into(),
                outcome,
            })
            .get()
    }

    /// Counts on a per-peer counter family.
    pub fn peer_inc(family: &Family<PeerLabels, Counter>, peer: &str) {
        family
            .get_or_create(&PeerLabels { peer: peer.into() })
            .inc();
    }

    /// Records the RTT of `peer`.
    pub fn set_rtt(&self, peer: &str, seconds: f64) {
        self.link_rtt_seconds
            .get_or_create(&PeerLabels { peer: peer.into() })
            .set(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
