//! Links: one QUIC connection per pair of regions, mutual TLS, a control stream and lanes.
//!
//! - **Who dials.** Of two regions, the one whose name sorts first dials the other; the other
//!   only accepts. So exactly one connection exists per pair, with no tie-breaking race. An
//!   acceptor refuses a connection from a region that should have been dialed by it
//!   ([`codes::WRONG_DIALER`]). A newer connection from the same peer replaces the older one
//!   ([`codes::REPLACED`]): a restarted peer does not wait for the stale link to time out.
//! - **Handshake.** QUIC + TLS 1.3 with the checks of [`crate::tls`], then the dialer opens the
//!   control stream (bidirectional) and both sides send [`Hello`]. The Hello's region must
//!   equal the certificate's and its version must be [`PROTOCOL_VERSION`]; otherwise the
//!   connection is closed with [`codes::HELLO_MISMATCH`]. The link is *up* once both Hellos
//!   are exchanged, all within `timing.handshake_timeout_ms`.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::certs::region_dns_name;
use crate::config::{Limits, Mesh, RelayOptions, Timing};
use crate::metrics::{Metrics, IN, OUT};
use crate::sink::{EventSink, LinkEvent};
use crate::tls::{self, Refusal, TlsError, TlsIdentity};
use meridian_protocol::relay::{
    self as frame, Direct, Frame, FrameError, Hello, RoomEvent, PROTOCOL_VERSION,
};

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

/// Why a link could not be established (logged by the dial loop; retried with backoff).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer speaks another relay protocol version (TLS alert `no_application_protocol`).
    /// Not retryable until one side is upgraded (the dial loop keeps trying at the cap).
    #[error("peer refused our relay protocol version {ours} (TLS no_application_protocol): it speaks another version; upgrade one side", ours = String::from_utf8_lossy(frame::ALPN))]
    ProtocolVersion,
    /// QUIC or TLS failed (unreachable, refused certificate, timed out...). Retryable.
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
    /// The connection could not be started (bad address...).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// No Hello within `timing.handshake_timeout_ms`. Retryable.
    #[error("handshake timed out")]
    Timeout,
    /// The peer's Hello or certificate did not match. Retryable only after reconfiguration.
    #[error("peer rejected: {0}")]
    Hello(String),
    /// The control stream failed during the handshake.
    #[error("control stream: {0}")]
    Frame(#[from] FrameError),
    /// Writing to the control stream failed.
    #[error("control stream write: {0}")]
    Write(#[from] quinn::WriteError),
}

impl LinkError {
    fn from_connection(e: ConnectionError) -> Self {
        if is_alpn_refusal(&e) {
            LinkError::ProtocolVersion
        } else {
            LinkError::Connection(e)
        }
    }
}

/// TLS alert 120 (`no_application_protocol`) as a QUIC crypto error (0x100 + 120).
fn is_alpn_refusal(e: &ConnectionError) -> bool {
    let alpn = quinn::TransportErrorCode::crypto(120);
    match e {
        ConnectionError::ConnectionClosed(c) => c.error_code == alpn,
        ConnectionError::TransportError(t) => t.code == alpn,
        _ => false,
    }
}

/// TLS alert 116 (`certificate_required`) as a QUIC crypto error: the peer presented no
/// client certificate. The verifier is never called then, so the refusal is counted here.
fn is_missing_client_certificate(e: &ConnectionError) -> bool {
    let required = quinn::TransportErrorCode::crypto(116);
    match e {
        ConnectionError::ConnectionClosed(c) => c.error_code == required,
        ConnectionError::TransportError(t) => t.code == required,
        _ => false,
    }
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

/// QUIC transport settings every link uses.
pub fn transport_config(timing: &Timing, limits: &Limits) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(timing.keep_alive()));
    // Validation caps the idle timeout far below the VarInt range, so the fallback (none)
    // is unreachable in practice.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(timing.idle_timeout()).ok());
    // Lanes, plus slack for lanes reopened after a stopped stream.
    let uni = u32::try_from(limits.max_room_streams)
        .unwrap_or(u32::MAX)
        .saturating_add(16);
    t.max_concurrent_uni_streams(VarInt::from_u32(uni));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4));
    // Flow control: a connection-level window well above quinn's default, so many busy rooms
    // over one high-RTT link are not throttled by the sum of their streams (window / RTT is
    // the link's throughput ceiling: 16 MiB / 200 ms = 80 MiB/s).
    let window = VarInt::from_u64(limits.receive_window_bytes).unwrap_or(VarInt::MAX);
    t.receive_window(window);
    t.send_window(limits.receive_window_bytes);
    t.stream_receive_window(
        VarInt::from_u64((limits.receive_window_bytes / 8).max(64 * 1024)).unwrap_or(VarInt::MAX),
    );
    t
}

/// Asks the kernel for `bytes` of UDP receive and send buffer on the relay's socket (the
/// defaults, ~200 KiB, drop bursts of datagrams); logs what it granted (capped by
/// `net.core.rmem_max` / `wmem_max`).
fn size_udp_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
    let granted = (s.recv_buffer_size().ok(), s.send_buffer_size().ok());
    if granted.0.is_some_and(|g| g < bytes) {
        tracing::info!(
            wanted = bytes,
            recv = ?granted.0,
            send = ?granted.1,
            "UDP buffers capped by the kernel (raise net.core.rmem_max / wmem_max)"
        );
    } else {
        tracing::debug!(recv = ?granted.0, send = ?granted.1, "UDP buffers sized");
    }
}

/// A quinn client config for dialing peers from a rustls config (tests dial with their own).
pub fn quic_client_config(
    tls: rustls::ClientConfig,
    timing: &Timing,
    limits: &Limits,
) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(timing, limits)));
    Ok(config)
}

/// Stable FNV-1a, for lane sharing (the same on every build, unlike `DefaultHasher`).
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A frame encoded once, ready for any number of peers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    lane_key: String,
    bytes: Bytes,
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
struct Lanes {
    by_key: HashMap<String, usize>,
    senders: Vec<mpsc::Sender<Bytes>>,
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

/// The API of a running relay; cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("region", &self.shared.options.region)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

impl Link {
    /// The lane for `key`, opening one when allowed (or replacing a lane whose stream died).
    fn lane(&self, shared: &Arc<Shared>, key: &str) -> mpsc::Sender<Bytes> {
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

/// A started relay: its addresses, its API and a handle to wait for it.
#[derive(Debug)]
pub struct RunningRelay {
    /// The bound QUIC (UDP) address.
    pub quic_addr: SocketAddr,
    /// The API.
    pub handle: RelayHandle,
    /// Resolves when the relay has stopped (links closed, within `shutdown_grace_ms`).
    pub done: tokio::task::JoinHandle<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a relay on `socket`: accepts peers, dials the peers it should dial, hands received
/// frames to `sink`, until `shutdown` is cancelled. The library entry point shared by the
/// binary and in-process tests.
pub fn start_links(
    options: RelayOptions,
    mesh: Mesh,
    identity: &TlsIdentity,
    sink: Arc<dyn EventSink>,
    socket: std::net::UdpSocket,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<RunningRelay, RelayError> {
    crate::config::validate_options(&options)?;
    if !mesh.regions.contains_key(&options.region) {
        return Err(crate::config::ConfigError::Invalid(format!(
            "region {:?} is not in the mesh",
            options.region
        ))
        .into());
    }
    identity.check_region(&options.region)?;
    let names = Arc::new(mesh.names());
    let hook_metrics = metrics.clone();
    let hook: tls::RefusalHook = Arc::new(move |why: Refusal, message: &str| {
        hook_metrics
            .refused
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
        tracing::warn!(reason = why.as_str(), "refusing relay peer: {message}");
    });
    let server_tls = tls::server_config(identity, names.clone(), hook)?;
    let server_crypto =
        QuicServerConfig::try_from(server_tls).map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(Arc::new(transport_config(&options.timing, &options.limits)));
    let client_config = quic_client_config(
        tls::client_config(identity, names.clone(), frame::ALPN)?,
        &options.timing,
        &options.limits,
    )?;
    socket.set_nonblocking(true)?;
    size_udp_buffers(&socket, options.limits.udp_buffer_bytes);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let quic_addr = endpoint.local_addr()?;
    let peers: Vec<String> = mesh
        .regions
        .keys()
        .filter(|r| **r != options.region)
        .cloned()
        .collect();
    let hello = Hello {
        region: options.region.clone(),
        protocol_version: PROTOCOL_VERSION,
        relay_id: format!("{:016x}", rand::random::<u64>()),
        epoch: now_ms(),
    };
    let shared = Arc::new(Shared {
        states: watch::channel(peers.iter().map(|p| (p.clone(), false)).collect()).0,
        options,
        mesh,
        names,
        endpoint,
        client_config,
        metrics,
        sink,
        hello,
        links: Mutex::new(HashMap::new()),
        generation: AtomicU64::new(0),
        pings: Mutex::new(HashMap::new()),
        next_nonce: AtomicU64::new(1),
        shutdown,
        tasks: TaskTracker::new(),
    });
    shared.metrics.active.set(1);
    tracing::info!(
        region = %shared.options.region,
        %quic_addr,
        relay_id = %shared.hello.relay_id,
        "relay listening"
    );
    shared.tasks.spawn(accept_loop(shared.clone()));
    for peer in peers.into_iter().filter(|p| *p > shared.options.region) {
        shared.tasks.spawn(dial_loop(shared.clone(), peer));
    }
    let done = tokio::spawn(run_until_shutdown(shared.clone()));
    Ok(RunningRelay {
        quic_addr,
        handle: RelayHandle { shared },
        done,
    })
}

async fn run_until_shutdown(shared: Arc<Shared>) {
    shared.shutdown.cancelled().await;
    let grace = Duration::from_millis(shared.options.timing.shutdown_grace_ms);
    shared.metrics.active.set(0);
    let links: Vec<Arc<Link>> = lock(&shared.links).values().cloned().collect();
    tracing::info!(
        links = links.len(),
        ?grace,
        "relay shutting down: closing links"
    );
    for link in &links {
        link.conn.close(codes::SHUTDOWN, b"relay shutting down");
    }
    shared
        .endpoint
        .close(codes::SHUTDOWN, b"relay shutting down");
    shared.tasks.close();
    let finished = tokio::time::timeout(grace, async {
        shared.tasks.wait().await;
        shared.endpoint.wait_idle().await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!(?grace, "relay tasks still running after the grace period");
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            i = shared.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        shared.tasks.spawn(accept_one(shared.clone(), incoming));
    }
}

async fn accept_one(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let from = incoming.remote_address();
    let limit = shared.options.timing.handshake_timeout();
    let result = tokio::time::timeout(limit, accept_handshake(&shared, incoming)).await;
    let (conn, peer, hello, send, recv) = match result {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            // Certificate and version refusals were logged with their detail by the TLS
            // layer; this line adds the address.
            tracing::info!(%from, error = %e, "inbound relay handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%from, "inbound relay handshake timed out");
            return;
        }
    };
    run_link(shared, conn, peer, hello, send, recv).await;
}

type Handshake = (Connection, String, Hello, SendStream, RecvStream);

fn refuse(shared: &Shared, conn: &Connection, code: VarInt, why: String) -> LinkError {
    shared
        .metrics
        .refused
        .get_or_create(&crate::metrics::ReasonLabels { reason: "hello" })
        .inc();
    tracing::warn!(remote = %conn.remote_address(), "refusing relay peer: {why}");
    conn.close(code, why.as_bytes());
    LinkError::Hello(why)
}

async fn accept_handshake(
    shared: &Shared,
    incoming: quinn::Incoming,
) -> Result<Handshake, LinkError> {
    let from = incoming.remote_address();
    let conn = incoming
        .accept()
        .map_err(LinkError::from_connection)?
        .await
        .map_err(|e| {
            if is_missing_client_certificate(&e) {
                shared
                    .metrics
                    .refused
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: Refusal::UntrustedCertificate.as_str(),
                    })
                    .inc();
                tracing::warn!(%from, reason = "certificate", "refusing relay peer: it presented no client certificate");
            }
            LinkError::from_connection(e)
        })?;
    // The verifier accepted the certificate, so it names exactly one catalogue region.
    let Some(peer) = tls::peer_region(&conn, &shared.names) else {
        return Err(refuse(
            shared,
            &conn,
            codes::HELLO_MISMATCH,
            "certificate names no catalogue region".into(),
        ));
    };
    if peer == shared.options.region {
        return Err(refuse(
            shared,
            &conn,
            codes::HELLO_MISMATCH,
            format!("peer presents our own region {peer}"),
        ));
    }
    if peer > shared.options.region {
        return Err(refuse(
            shared,
            &conn,
            codes::WRONG_DIALER,
            format!(
                "{peer} dialed {}, but the region whose name sorts first dials",
                shared.options.region
            ),
        ));
    }
    let (mut send, mut recv) = conn.accept_bi().await.map_err(LinkError::from_connection)?;
    let hello = read_hello(shared, &conn, &mut recv, &peer).await?;
    write_hello(shared, &mut send, &peer).await?;
    Ok((conn, peer, hello, send, recv))
}

async fn read_hello(
    shared: &Shared,
    conn: &Connection,
    recv: &mut RecvStream,
    peer: &str,
) -> Result<Hello, LinkError> {
    let max = shared.options.limits.max_frame_bytes;
    match frame::read_frame(recv, max).await {
        Ok(Some((Frame::Hello(h), n))) => {
            shared.metrics.bytes(peer, IN, n);
            if h.region != peer {
                return Err(refuse(
                    shared,
                    conn,
                    codes::HELLO_MISMATCH,
                    format!(
                        "Hello says region {:?} but the certificate says {peer}",
                        h.region
                    ),
                ));
            }
            if h.protocol_version != PROTOCOL_VERSION {
                return Err(refuse(
                    shared,
                    conn,
                    codes::HELLO_MISMATCH,
                    format!(
                        "{peer} Hello carries protocol version {}, we speak {PROTOCOL_VERSION}",
                        h.protocol_version
                    ),
                ));
            }
            Ok(h)
        }
        Ok(Some((other, _))) => Err(refuse(
            shared,
            conn,
            codes::PROTOCOL_ERROR,
            format!("{peer} sent {} before Hello", other.name()),
        )),
        Ok(None) => Err(LinkError::Hello(format!(
            "{peer} closed the control stream"
        ))),
        Err(e) if e.is_protocol_violation() => {
            shared.metrics.malformed(peer);
            Err(refuse(
                shared,
                conn,
                codes::PROTOCOL_ERROR,
                format!("{peer} sent a bad Hello: {e}"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn write_hello(shared: &Shared, send: &mut SendStream, peer: &str) -> Result<(), LinkError> {
    let bytes = frame::encode(
        &Frame::Hello(shared.hello.clone()),
        shared.options.limits.max_frame_bytes,
    )?;
    let n = bytes.len();
    send.write_chunk(bytes).await?;
    shared.metrics.bytes(peer, OUT, n);
    Ok(())
}

async fn dial(shared: &Shared, peer: &str, addr: SocketAddr) -> Result<Handshake, LinkError> {
    let connecting =
        shared
            .endpoint
            .connect_with(shared.client_config.clone(), addr, &region_dns_name(peer))?;
    let conn = connecting.await.map_err(LinkError::from_connection)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(LinkError::from_connection)?;
    write_hello(shared, &mut send, peer).await?;
    // A refused client certificate shows up here: the server closes the connection.
    let hello = match read_hello(shared, &conn, &mut recv, peer).await {
        Err(LinkError::Frame(FrameError::Io(_))) if conn.close_reason().is_some() => {
            return Err(conn
                .close_reason()
                .map(LinkError::from_connection)
                .unwrap_or(LinkError::Timeout))
        }
        other => other?,
    };
    Ok((conn, peer.to_owned(), hello, send, recv))
}

async fn dial_loop(shared: Arc<Shared>, peer: String) {
    let Some(addr) = shared.mesh.regions.get(&peer).copied() else {
        return;
    };
    let t = &shared.options.timing;
    let mut backoff = Backoff::new(
        Duration::from_millis(t.backoff_initial_ms),
        Duration::from_millis(t.backoff_max_ms),
    );
    let mut failures = 0u32;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(t.handshake_timeout(), dial(&shared, &peer, addr)) => r,
        };
        match attempt {
            Ok(Ok((conn, peer, hello, send, recv))) => {
                failures = 0;
                backoff.reset();
                run_link(shared.clone(), conn, peer, hello, send, recv).await;
            }
            Ok(Err(e)) => {
                failures += 1;
                // First failure (and every 30th) at warn, so a long outage does not flood logs.
                if failures == 1
                    || failures.is_multiple_of(30)
                    || matches!(e, LinkError::ProtocolVersion)
                {
                    tracing::warn!(%peer, %addr, failures, error = %e, "cannot link to peer");
                } else {
                    tracing::debug!(%peer, %addr, failures, error = %e, "cannot link to peer");
                }
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(%peer, %addr, failures, "dial timed out");
            }
        }
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs an established link until it closes.
async fn run_link(
    shared: Arc<Shared>,
    conn: Connection,
    peer: String,
    hello: Hello,
    control_send: SendStream,
    control_recv: RecvStream,
) {
    if shared.shutdown.is_cancelled() {
        conn.close(codes::SHUTDOWN, b"relay shutting down");
        return;
    }
    let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
    let (control_tx, control_rx) = mpsc::channel(1024);
    let link = Arc::new(Link {
        peer: peer.clone(),
        generation,
        conn: conn.clone(),
        control: control_tx,
        lanes: Mutex::new(Lanes {
            by_key: HashMap::new(),
            senders: Vec::new(),
        }),
        heard: Mutex::new(std::time::Instant::now()),
    });
    let replaced = lock(&shared.links).insert(peer.clone(), link.clone());
    if let Some(old) = replaced {
        old.conn
            .close(codes::REPLACED, b"replaced by a newer connection");
    }
    shared.metrics.set_link(&peer, true);
    shared.metrics.set_rtt(&peer, conn.rtt().as_secs_f64());
    shared.states.send_modify(|m| {
        m.insert(peer.clone(), true);
    });
    tracing::info!(
        %peer,
        remote = %conn.remote_address(),
        relay_id = %hello.relay_id,
        epoch = hello.epoch,
        "link up"
    );
    shared
        .sink
        .link(
            &peer,
            LinkEvent::Up {
                hello: hello.clone(),
            },
        )
        .await;

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(control_writer(
        control_send,
        control_rx,
        peer.clone(),
        shared.metrics.clone(),
        stop.clone(),
    ));
    tasks.spawn(control_reader(
        shared.clone(),
        link.clone(),
        control_recv,
        stop.clone(),
    ));
    tasks.spawn(accept_lanes(
        shared.clone(),
        conn.clone(),
        peer.clone(),
        stop.clone(),
    ));
    tasks.spawn(sample_rtt(
        shared.clone(),
        conn.clone(),
        peer.clone(),
        stop.clone(),
    ));
    tasks.spawn(watch_heard(link.clone(), stop.clone()));
    tasks.close();

    let reason = conn.closed().await;
    stop.cancel();
    // Lane senders live in the link; dropping it lets idle lane writers end.
    drop(link);
    let reason = describe_close(&reason);
    let current = {
        let mut links = lock(&shared.links);
        if links.get(&peer).is_some_and(|l| l.generation == generation) {
            links.remove(&peer);
            true
        } else {
            false
        }
    };
    if current {
        shared.metrics.set_link(&peer, false);
        shared.states.send_modify(|m| {
            m.insert(peer.clone(), false);
        });
        tracing::warn!(%peer, %reason, "link down");
        shared.sink.link(&peer, LinkEvent::Down { reason }).await;
    } else {
        // A newer connection to the same peer took over: the link never went down.
        tracing::info!(%peer, %reason, "replaced connection closed");
    }
    tasks.wait().await;
}

fn describe_close(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => format!(
            "closed by peer with code {}: {}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        ConnectionError::TimedOut => "timed out (idle timeout: no packets from the peer)".into(),
        other => other.to_string(),
    }
}

async fn control_writer(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
    peer: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let bytes = tokio::select! {
            _ = stop.cancelled() => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        let n = bytes.len();
        if send.write_chunk(bytes).await.is_err() {
            return;
        }
        metrics.bytes(&peer, OUT, n);
    }
}

async fn control_reader(
    shared: Arc<Shared>,
    link: Arc<Link>,
    mut recv: RecvStream,
    stop: CancellationToken,
) {
    let peer = link.peer.as_str();
    let max = shared.options.limits.max_frame_bytes;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            r = frame::read_frame(&mut recv, max) => r,
        };
        let frame = match next {
            Ok(Some((frame, n))) => {
                shared.metrics.bytes(peer, IN, n);
                frame
            }
            Ok(None) => {
                link.conn
                    .close(codes::PROTOCOL_ERROR, b"control stream finished");
                return;
            }
            Err(e) if e.is_protocol_violation() => {
                shared.metrics.malformed(peer);
                tracing::warn!(%peer, error = %e, "bad frame on the control stream: closing the link");
                link.conn
                    .close(codes::PROTOCOL_ERROR, b"bad frame on the control stream");
                return;
            }
            Err(_) => return,
        };
        match frame {
            Frame::Ping { nonce } => {
                if let Ok(bytes) = frame::encode(&Frame::Pong { nonce }, max) {
                    let _ = link.control.send(bytes).await;
                }
            }
            Frame::Pong { nonce } => {
                if let Some(tx) = lock(&shared.pings).remove(&nonce) {
                    let _ = tx.send(());
                }
            }
            f @ (Frame::Interest { .. } | Frame::InterestSnapshot { .. } | Frame::Presence(_)) => {
                shared.sink.control(peer, f).await;
            }
            other => {
                shared.metrics.malformed(peer);
                tracing::warn!(%peer, frame = other.name(), "unexpected frame on the control stream: closing the link");
                link.conn.close(
                    codes::PROTOCOL_ERROR,
                    b"unexpected frame on the control stream",
                );
                return;
            }
        }
    }
}

async fn accept_lanes(
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
                let _ = recv.stop(code);
                shared.metrics.malformed(&peer);
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
                let _ = recv.stop(codes::UNEXPECTED_FRAME);
                shared.metrics.malformed(&peer);
                tracing::warn!(%peer, frame = other.name(), "closing a lane: frame does not belong on a lane");
                return;
            }
        }
    }
}

/// Keeps `link.heard` current: every 200 ms, if the connection received datagrams since the
/// last check, they arrived after that check, so the check's time is a safe "heard by".
async fn watch_heard(link: Arc<Link>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = link.conn.stats().udp_rx.datagrams;
    let mut checked = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = std::time::Instant::now();
        let count = link.conn.stats().udp_rx.datagrams;
        if count != seen {
            seen = count;
            *lock(&link.heard) = checked;
        }
        checked = now;
    }
}

async fn sample_rtt(shared: Arc<Shared>, conn: Connection, peer: String, stop: CancellationToken) {
    let mut every =
        tokio::time::interval(Duration::from_millis(shared.options.timing.rtt_sample_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => shared.metrics.set_rtt(&peer, conn.rtt().as_secs_f64()),
        }
    }
}
