//! Links: one QUIC connection per pair of regions, mutual TLS, a control stream and lanes.
//!
//! - **Who dials.** Of two regions, the one whose name sorts first dials the other; the other
//!   only accepts. So exactly one connection exists per pair, with no tie-breaking race. An
//!   acceptor refuses a connection from a region that should have been dialed by it
//!   ([`codes::WRONG_DIALER`]). A newer connection from the same peer replaces the older one
//!   ([`codes::REPLACED`]): a restarted peer does not wait for the stale link to time out.
//! - **Handshake.** QUIC + TLS 1.3 with the checks of [`crate::tls`], then the dialer opens the
//!   control stream (bidirectional) and both sides send [`Hello`]. The Hello's region must
//!   equal the certificate's and its version must be
//!   [`PROTOCOL_VERSION`](meridian_protocol::relay::PROTOCOL_VERSION); otherwise the connection is closed
//!   with [`codes::HELLO_MISMATCH`]. The link is *up* once both Hellos are exchanged, all
//!   within `timing.handshake_timeout_ms`.
//! - **Lanes.** Room events travel on unidirectional streams, opened lazily by the sender. A
//!   room gets its own stream while fewer than `limits.max_room_streams` are open; later rooms
//!   share the open streams by a stable hash. A room never changes stream while the link
//!   lives, so per-room order holds; rooms on different streams never block each other.
//!   Direct messages use the same lanes keyed by recipient, so one user's offer/answer/ICE keep
//!   their order.
//! - **Bad frames.** A malformed, oversized, truncated or out-of-place frame on a lane stops
//!   that stream ([`codes::MALFORMED_FRAME`], [`codes::FRAME_TOO_LARGE`],
//!   [`codes::UNEXPECTED_FRAME`]) and is counted; the link and the other lanes go on. On the
//!   control stream it closes the link ([`codes::PROTOCOL_ERROR`]): nothing works without it.
//! - **Liveness.** QUIC keep-alives every `timing.keep_alive_ms`; a link that receives nothing
//!   for `timing.idle_timeout_ms` is dead (QUIC raises it to at least 3 PTO on slow paths).
//!   The dialer then redials with jittered exponential backoff ([`crate::backoff`]).
//!
//! Files, by layer:
//!
//! - `endpoint.rs`: the QUIC endpoint and its transport settings; [`start_links`], the accept
//!   loop and shutdown.
//! - `handshake.rs`: accepting a peer (certificate region, who dials) and the `Hello` exchange.
//! - `dial.rs`: dialing the peers this region dials, with backoff.
//! - `established.rs`: an established link, from `Hello` to close (link state, RTT, last heard).
//! - `control.rs`: the control stream (`Ping`/`Pong`, interest and presence frames).
//! - `lanes.rs`: the lanes, sending ([`Outgoing`], one writer per stream) and receiving.
//! - `handle.rs`: [`RelayHandle`], the API of a running relay.

mod control;
mod dial;
mod endpoint;
mod established;
mod handle;
mod handshake;
mod lanes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Mesh, RelayOptions};
use crate::metrics::Metrics;
use crate::sink::EventSink;
use crate::tls::TlsError;
use meridian_protocol::relay::{FrameError, Hello};

pub use endpoint::{quic_client_config, start_links, transport_config, RunningRelay};
pub use handle::RelayHandle;
pub use handshake::LinkError;
pub use lanes::Outgoing;

use lanes::Lanes;

/// QUIC application error codes of the relay protocol.
pub mod codes {
    use quinn::VarInt;

    /// Connection: the relay is shutting down (SIGTERM); redial with backoff.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// Connection: the control stream broke the protocol.
    pub const PROTOCOL_ERROR: VarInt = VarInt::from_u32(1);
    /// Connection: the Hello did not match the certificate, the version or the peer.
    pub const HELLO_MISMATCH: VarInt = VarInt::from_u32(2);
    /// Connection: this pair's other region is the one that dials.
    pub const WRONG_DIALER: VarInt = VarInt::from_u32(3);
    /// Connection: a newer connection from the same peer took over.
    pub const REPLACED: VarInt = VarInt::from_u32(4);
    /// Stream: a frame did not decode.
    pub const MALFORMED_FRAME: VarInt = VarInt::from_u32(0x10);
    /// Stream: a frame's length prefix exceeds `limits.max_frame_bytes`.
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(0x11);
    /// Stream: a frame that does not belong on this stream.
    pub const UNEXPECTED_FRAME: VarInt = VarInt::from_u32(0x12);
}

/// Errors of starting a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Bad options or mesh (a config problem).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS identity is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket could not be set up.
    #[error("relay I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No link to the peer right now. Retryable after it comes up.
    #[error("no link to {0}")]
    NotConnected(String),
    /// The frame could not be encoded or is over the size limit. Not retryable.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame kind does not go where it was sent.
    #[error("{0} frames are not sent this way")]
    WrongKind(&'static str),
    /// The link closed while sending. Retryable after it comes up again.
    #[error("link to {0} closed while sending")]
    Closed(String),
}

/// An established link.
struct Link {
    peer: String,
    generation: u64,
    conn: Connection,
    control: mpsc::Sender<Bytes>,
    lanes: Mutex<Lanes>,
    /// When a datagram from the peer was last seen (no later than this; see `watch_heard`).
    heard: Mutex<std::time::Instant>,
}

/// The state every task of a relay shares.
struct Shared {
    options: RelayOptions,
    mesh: Mesh,
    names: Arc<BTreeSet<String>>,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    metrics: Arc<Metrics>,
    sink: Arc<dyn EventSink>,
    hello: Hello,
    links: Mutex<HashMap<String, Arc<Link>>>,
    states: watch::Sender<BTreeMap<String, bool>>,
    generation: AtomicU64,
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_nonce: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
