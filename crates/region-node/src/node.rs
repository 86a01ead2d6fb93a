//! The node runtime: shared state, background loops (lease, reaper, fan-out dispatcher) and
//! the HTTP/WebSocket server with graceful drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use meridian_protocol::token::TokenVerifier;
use meridian_protocol::{LeftReason, RoomId};
use region_state::{
    Inbound, MemoryRegion, NodeId, Recovery, RedisStore, RedisStoreConfig, StateStore, StoreError,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Shed};
use crate::config::NodeConfig;
use crate::fanout::LocalIndex;
use crate::metrics::Metrics;
use crate::signal::Signal;

/// Errors that stop a node from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The regional store could not be reached at start-up.
    #[error("cannot reach the regional state store: {0}")]
    Store(#[from] StoreError),
    /// The listener failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a node's sessions and loops share.
pub struct Node {
    /// The validated configuration.
    pub config: Arc<NodeConfig>,
    /// The regional state store.
    pub store: Arc<dyn StateStore>,
    /// Token verification with the shared secret.
    pub verifier: TokenVerifier,
    /// Local rooms and users.
    pub local: LocalIndex,
    /// Metrics.
    pub metrics: Metrics,
    next_conn: AtomicU64,
    /// Fired on SIGTERM: sessions send `reconnect`, `/readyz` fails.
    pub draining: Signal,
    /// Fired when sessions still open must close (drain grace over).
    pub closing: Signal,
    /// Bounded accept rate: sheds connection attempts beyond it.
    pub admission: Admission,
    /// Wakes the lease loop to renew at once (after the store reconnected).
    pub renew_now: tokio::sync::Notify,
    /// Since when the lease has been renewed without a break (and re-asserted if it had
    /// lapsed); `None` while it is not. The reaper runs only after a full lease TTL of this.
    lease_healthy_since: std::sync::Mutex<Option<Instant>>,
    sessions: TaskTracker,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", self.store.node())
            .finish()
    }
}

impl Node {
    /// A fresh connection number.
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Times one store call into the `store_seconds` histogram.
    pub async fn timed<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.metrics.store_call(op, start.elapsed());
        out
    }
}

/// A started node: its address and a handle to wait for it.
#[derive(Debug)]
pub struct RunningNode {
    /// The bound client address.
    pub addr: SocketAddr,
    /// The bound operations address (`ops_listen`), if there is one.
    pub ops_addr: Option<SocketAddr>,
    /// The node's id in the store.
    pub node_id: NodeId,
    /// Resolves when the node has fully stopped.
    pub done: tokio::task::JoinHandle<Result<(), NodeError>>,
}

/// Connects the configured store and serves on `listener` until `shutdown` is cancelled, then
/// drains. The library entry point that `main` and in-process tests share.
pub async fn start(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<RunningNode, NodeError> {
    let node_id = NodeId::random();
    let (inbound_tx, inbound_rx) = mpsc::channel(65_536);
    let limits = config.store_limits();
    let store: Arc<dyn StateStore> = match config.store.redis_endpoint() {
        Some((endpoint, durable)) => Arc::new(
            RedisStore::connect(
                RedisStoreConfig {
                    endpoint,
                    region: config.region.clone(),
                    node: node_id.clone(),
                    limits,
                    durable,
                },
                inbound_tx,
            )
            .await?,
        ),
        None => {
            tracing::warn!(
                "store.kind = memory: single-node dev region, nothing is shared or persisted"
            );
            Arc::new(MemoryRegion::new().store(&config.region, node_id.clone(), limits, inbound_tx))
        }
    };
    start_with_store(config, store, inbound_rx, listener, shutdown).await
}

/// Like [`start`], with a store made by the caller (tests share one [`MemoryRegion`]).
pub async fn start_with_store(
    config: NodeConfig,
    store: Arc<dyn StateStore>,
    inbound: mpsc::Receiver<Inbound>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<RunningNode, NodeError> {
    store.renew_lease().await?;
    let addr = listener.local_addr()?;
    let ops = match config.ops_listen {
        Some(at) => Some(TcpListener::bind(at).await?),
        None => None,
    };
    let ops_addr = ops.as_ref().map(TcpListener::local_addr).transpose()?;
    let node_id = store.node().clone();
    let node = Arc::new(Node {
        admission: Admission::new(&config),
        renew_now: tokio::sync::Notify::new(),
        // A fresh node has just renewed: it may reap at once (the TTL wait is for recoveries).
        lease_healthy_since: std::sync::Mutex::new(
            Instant::now().checked_sub(Duration::from_millis(config.timing.lease_ttl_ms)),
        ),
        verifier: TokenVerifier::new(config.token_secret.as_bytes()),
        metrics: Metrics::new(&config.region),
        config: Arc::new(config),
        store,
        local: LocalIndex::default(),
        next_conn: AtomicU64::new(0),
        draining: Signal::new(),
        closing: Signal::new(),
        sessions: TaskTracker::new(),
    });
    tracing::info!(%addr, ?ops_addr, node = %node_id, region = %node.config.region, "region node serving");
    let done = tokio::spawn(run(node, listener, ops, inbound, shutdown));
    Ok(RunningNode {
        addr,
        ops_addr,
        node_id,
        done,
    })
}

async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    ops: Option<TcpListener>,
    inbound: mpsc::Receiver<Inbound>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let loops = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(dispatch(node.clone(), inbound, loops.clone()));
    background.spawn(lease_loop(node.clone(), loops.clone()));
    background.spawn(reap_loop(node.clone(), loops.clone()));
    background.close();

    // The ops listener outlives the drain: balancers see `/readyz` 503 until the end.
    let ops_stop = CancellationToken::new();
    let ops_app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node.clone());
    let client_app = Router::new()
        .route("/v1/ws", get(ws_upgrade))
        .with_state(node.clone());
    let (client_app, ops_server) = match ops {
        // Health and metrics on their own listener: a client port saturated by sockets
        // cannot hide a healthy node from its balancer.
        Some(ops) => {
            let server = tokio::spawn(serve_ops(node.clone(), ops, ops_app, ops_stop.clone()));
            (client_app, Some(server))
        }
        None => (client_app.merge(ops_app), None),
    };
    let server = tokio::spawn(serve_clients(
        node.clone(),
        listener,
        client_app,
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    let deadline = Duration::from_millis(node.config.timing.drain_deadline_ms);
    let started = Instant::now();
    tracing::info!(
        sessions = node.sessions.len(),
        ?deadline,
        "draining: telling clients to reconnect"
    );
    node.draining.fire();
    // Sessions get most of the deadline to go on their own after `reconnect`; then the rest
    // are closed and every session's store cleanup gets the remainder.
    let close_at = deadline
        .saturating_sub(Duration::from_millis(2_000))
        .max(deadline / 2);
    node.sessions.close();
    let mut clean = true;
    if tokio::time::timeout(close_at, node.sessions.wait())
        .await
        .is_err()
    {
        tracing::info!(
            remaining = node.sessions.len(),
            "drain grace over: closing remaining sessions"
        );
        node.closing.fire();
        let rest = deadline
            .saturating_sub(started.elapsed())
            .saturating_sub(Duration::from_millis(300));
        if tokio::time::timeout(rest, node.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = node.sessions.len(),
                "sessions did not finish cleanup in time"
            );
            clean = false;
        }
    }
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "server task failed");
    }
    ops_stop.cancel();
    if let Some(ops) = ops_server {
        if let Err(e) = ops.await {
            tracing::warn!(error = %e, "ops server task failed");
        }
    }
    loops.cancel();
    background.wait().await;
    if !clean {
        // Keep the lease and index: once the lease expires, another node's reaper removes the
        // memberships these sessions could not.
        tracing::warn!("leaving the node lease to expire so the reaper cleans up");
    } else if let Err(e) = node.store.release_lease().await {
        tracing::warn!(error = %e, "could not release the node lease; it will expire");
    }
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "node stopped"
    );
    Ok(())
}

/// File descriptors kept free below the soft limit for everything but client sockets: Redis
/// reconnects, the ops listener's health checks, logs.
const FD_HEADROOM: u64 = 64;

/// How many client sockets this process can hold: the soft `RLIMIT_NOFILE` less what is
/// open now and [`FD_HEADROOM`]. `None` when the limit cannot be read (no cap then).
fn client_fd_budget() -> Option<usize> {
    let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let budget = soft.saturating_sub(open).saturating_sub(FD_HEADROOM);
    usize::try_from(budget).ok()
}

/// Whether an accept error means the process (or system) is out of file descriptors.
fn out_of_fds(e: &std::io::Error) -> bool {
    // EMFILE (24), ENFILE (23).
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// A file held open so that, at the fd limit, it can be closed to make room for one accept.
fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// The fd-limit state of the client listener: log once on entering, once on leaving.
struct FdLimit {
    hit: bool,
}

impl FdLimit {
    fn enter(&mut self, node: &Node, why: &str) {
        node.metrics.refused("fd_limit");
        if !self.hit {
            self.hit = true;
            node.metrics.at_fd_limit.set(1);
            tracing::warn!(
                why,
                sockets = node.metrics.connections.get(),
                "at the file-descriptor limit: closing new client connections at once until \
                 sockets are freed (raise LimitNOFILE / ulimit -n)"
            );
        }
    }

    fn leave(&mut self, node: &Node) {
        if self.hit {
            self.hit = false;
            node.metrics.at_fd_limit.set(0);
            tracing::info!("below the file-descriptor limit again: accepting clients");
        }
    }
}

/// Counts a client socket from its accept until its HTTP connection (and the WebSocket
/// session it upgraded to, if any) ends.
struct SocketSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client listener: `/v1/ws` (plus the ops routes when there is no ops listener).
///
/// Every connection must send a complete request within `timing.upgrade_timeout_ms` (1 s under
/// pressure), counts against the unauthenticated budget of its source from the accept on, and
/// is closed at once when the process is at its file-descriptor budget: the node logs once,
/// counts `refused_connections{reason="fd_limit"}`, and recovers by itself as sockets close.
async fn serve_clients(
    node: Arc<Node>,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) {
    let budget = client_fd_budget();
    if let Some(b) = budget {
        tracing::info!(
            client_sockets = b,
            "client socket budget from the open-files limit"
        );
    }
    let sockets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut reserve = reserve_fd();
    let mut limit = FdLimit { hit: false };
    loop {
        if reserve.is_none() {
            reserve = reserve_fd();
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if out_of_fds(&e) => {
                limit.enter(&node, "accept failed: EMFILE");
                // Free the reserve, take the waiting connection and close it: the client
                // learns at once instead of hanging in the backlog.
                reserve = None;
                if let Ok((shed, _)) = listener.accept().await {
                    drop(shed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let held = sockets.load(Ordering::Relaxed);
        if budget.is_some_and(|b| held >= b) {
            limit.enter(&node, "client socket budget spent");
            drop(stream);
            continue;
        }
        limit.leave(&node);
        // Behind a trusted proxy the source is known only from the request: its budget is
        // taken at the upgrade.
        let unauthenticated = if node.admission.is_trusted_proxy(peer.ip()) {
            None
        } else {
            match node.admission.open_unauthenticated(peer.ip(), true) {
                Ok(u) => Some(u),
                Err(reason) => {
                    node.metrics.refused(reason);
                    tracing::debug!(%peer, reason, "refusing an unauthenticated connection");
                    drop(stream);
                    continue;
                }
            }
        };
        node.metrics
            .unauthenticated
            .set(node.admission.unauthenticated() as i64);
        sockets.fetch_add(1, Ordering::Relaxed);
        let slot = SocketSlot(sockets.clone());
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let timeout = node.admission.upgrade_timeout();
        let pending = PendingAuth(Arc::new(std::sync::Mutex::new(unauthenticated)));
        let conn = serve_http(
            node.clone(),
            stream,
            peer,
            app.clone(),
            timeout,
            Some(pending),
            slot,
        );
        tokio::spawn(conn);
    }
}

/// The ops listener: `/healthz`, `/readyz`, `/metrics`. It keeps a reserve descriptor of its
/// own, so a health check is answered even when client sockets have taken every descriptor.
async fn serve_ops(node: Arc<Node>, listener: TcpListener, app: Router, stop: CancellationToken) {
    let mut reserve = reserve_fd();
    let timeout = Duration::from_millis(node.config.timing.upgrade_timeout_ms);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        if reserve.is_none() {
            reserve = reserve_fd();
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                counter.fetch_add(1, Ordering::Relaxed);
                let slot = SocketSlot(counter.clone());
                tokio::spawn(serve_http(
                    node.clone(),
                    stream,
                    peer,
                    app.clone(),
                    timeout,
                    None,
                    slot,
                ));
            }
            Err(e) if out_of_fds(&e) && reserve.is_some() => {
                // Give the reserve to the health check waiting in the backlog.
                reserve = None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "ops accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A connection's unit of the unauthenticated budget, handed from the accept to the upgrade
/// through the request's extensions (the upgrade moves it into the session's handshake).
#[derive(Clone)]
struct PendingAuth(Arc<std::sync::Mutex<Option<crate::admission::Unauthenticated>>>);

impl PendingAuth {
    fn take(&self) -> Option<crate::admission::Unauthenticated> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Serves one HTTP/1.1 connection: every request's head must arrive within `timeout` (hyper's
/// header read timeout, which also runs while a fresh connection is silent).
async fn serve_http(
    node: Arc<Node>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    timeout: Duration,
    pending: Option<PendingAuth>,
    slot: SocketSlot,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;
    let slot = Arc::new(slot);
    let pending_in_requests = pending.clone();
    let service = hyper::service::service_fn(
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(slot.clone());
            if let Some(p) = &pending_in_requests {
                req.extensions_mut().insert(p.clone());
            }
            let mut app = app.clone();
            async move { app.call(req).await }
        },
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true);
    let served = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        if e.is_timeout() {
            node.metrics.refused("upgrade_timeout");
            tracing::debug!(%peer, "closing a connection without a complete request in time");
        } else {
            tracing::debug!(%peer, error = %e, "http connection ended with an error");
        }
    }
    // An unauthenticated unit not taken by an upgrade goes with the connection.
    drop(pending);
    node.metrics
        .unauthenticated
        .set(node.admission.unauthenticated() as i64);
}

/// Initial WebSocket read/write buffer per connection.
const WS_BUFFER_BYTES: usize = 8 * 1024;

/// Initial WebSocket read buffer of a served connection.
const READ_BUFFER_BYTES: usize = 1024;

async fn ws_upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    pending: Option<axum::Extension<PendingAuth>>,
    slot: Option<axum::Extension<Arc<SocketSlot>>>,
    ws: WebSocketUpgrade,
) -> Response {
    if node.draining.is_fired() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let hard_limit = node
        .config
        .limits
        .max_frame_bytes
        .saturating_mul(4)
        .max(64 * 1024);
    // The user's address: the peer, or behind a trusted proxy the last X-Forwarded-For hop
    // (unknown when the proxy does not say: then only the node-wide limits apply).
    let trusted = node.admission.is_trusted_proxy(peer.ip());
    let source = if trusted {
        forwarded_for(&headers)
    } else {
        Some(peer.ip())
    };
    let unauthenticated = match pending.and_then(|p| p.0.take()) {
        Some(u) => Some(u),
        // Behind a trusted proxy that names the client: that source's budget. A proxy that
        // does not name it bounds its own silent connections (HAProxy's `timeout
        // http-request`); counting all its users as one would make a reconnect storm through
        // it look like a flood.
        None if trusted && source.is_some() => match node
            .admission
            .open_unauthenticated(source.unwrap_or(peer.ip()), true)
        {
            Ok(u) => Some(u),
            Err(reason) => {
                node.metrics.refused(reason);
                node.metrics.shed_connections.inc();
                let after_ms = node.config.timing.shed_reconnect_min_ms;
                return shed_upgrade(ws, after_ms);
            }
        },
        _ => None,
    };
    let open = usize::try_from(node.metrics.connections.get()).unwrap_or(0);
    let handshake = match node.admission.admit(open, source, unauthenticated) {
        Ok(handshake) => handshake,
        Err(Shed { after_ms, why }) => {
            node.metrics.shed_connections.inc();
            if why == "source_rate" {
                node.metrics.refused(why);
            }
            tracing::debug!(%peer, ?source, after_ms, why, "shedding a connection attempt");
            // Upgrade and say why, so the client gets a `reconnect` it understands; the
            // session costs nothing in the store (no hello was processed).
            return shed_upgrade(ws, after_ms);
        }
    };
    let tracker = node.sessions.clone();
    // The socket stays counted against the fd budget while its session lives.
    let slot = slot.map(|s| s.0);
    // tungstenite starts every connection with 128 KiB read and write buffers; signaling
    // frames are small, and the buffers grow when a large frame needs it. Small initial
    // buffers keep a node with thousands of sockets (a reconnect storm) at ~20 KiB each.
    // tungstenite zero-fills the whole free capacity of the read buffer before every read
    // attempt (`FrameCodec::read_in`): that is resident memory per connection and a memset per
    // poll of the socket, so the read buffer starts at 1 KiB (it grows for a larger frame).
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                crate::session::serve(node, socket, peer, handshake).await;
                drop(slot);
            })
        })
}

/// The last address of `X-Forwarded-For` (the one the trusted proxy appended).
fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<std::net::IpAddr> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()?;
    last.trim().parse().ok()
}

fn shed_upgrade(ws: WebSocketUpgrade, after_ms: u64) -> Response {
    ws.read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(4096)
        .max_frame_size(4096)
        .on_upgrade(move |socket| crate::session::shed(socket, after_ms))
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.draining.is_fired() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(1), node.store.ping()).await {
        Ok(Ok(())) => {
            // The region's load for the geo-router's health checks; best effort.
            let mine = u64::try_from(node.metrics.connections.get()).unwrap_or(0);
            let load = tokio::time::timeout(Duration::from_secs(1), node.store.region_load(mine))
                .await
                .ok()
                .and_then(Result::ok);
            let report = meridian_protocol::health::ReadyReport::ready(mine, load);
            (
                [(header::CONTENT_TYPE, "application/json")],
                report.encode(),
            )
                .into_response()
        }
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store: timeout\n").into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

/// Hands what the store pushes to local connections.
async fn dispatch(node: Arc<Node>, mut inbound: mpsc::Receiver<Inbound>, stop: CancellationToken) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            _ = &mut stopped => return,
            item = inbound.recv() => match item { Some(i) => i, None => return },
        };
        let started = Instant::now();
        match item {
            Inbound::Room {
                room,
                seq,
                epoch,
                frame,
            } => {
                let Ok(text) = Utf8Bytes::try_from(frame) else {
                    tracing::warn!(%room, "dropping a room event that is not UTF-8");
                    continue;
                };
                let n = node.local.deliver_room(&room, seq, &epoch, &text);
                node.metrics.deliveries.inc_by(n as u64);
                node.metrics
                    .fanout_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Inbound::Direct { user, frame } => {
                if let Ok(text) = Utf8Bytes::try_from(frame) {
                    node.local.deliver_direct(&user, &text);
                }
            }
            Inbound::Resubscribed => {
                // The store reconnected (perhaps to a new primary after a failover): renew
                // the lease there now, then replay what the pub/sub outage may have missed.
                node.renew_now.notify_one();
                // Inline, not spawned: live events of the new subscription queue behind this
                // message and must reach the cursors only after the replay, or a cursor that
                // saw a live event first would drop the older replayed ones as duplicates.
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = catch_up(node.clone()) => {}
                }
            }
        }
    }
}

/// After a pub/sub outage: replays, from room history, what local subscribers missed. The
/// history reads run 16 at a time; each room's replay is delivered as soon as it is read (live
/// events wait in the inbound queue until the whole catch-up is done).
async fn catch_up(node: Arc<Node>) {
    use futures_util::StreamExt;
    let positions = node.local.room_positions();
    let rooms = positions.len();
    let started = Instant::now();
    let mut reads = futures_util::stream::iter(positions.into_iter().map(|(room, epoch, last)| {
        let node = node.clone();
        async move {
            let result = node.store.history(&room, &epoch, last).await;
            (room, epoch, result)
        }
    }))
    .buffer_unordered(16);
    let mut replayed = 0usize;
    while let Some((room, epoch, result)) = reads.next().await {
        match result {
            Ok(Recovery::Replay { events, .. }) => {
                for (seq, frame) in events {
                    if let Ok(text) = Utf8Bytes::try_from(frame) {
                        replayed += 1;
                        node.local.deliver_room(&room, seq, &epoch, &text);
                    }
                }
            }
            Ok(Recovery::Lost { .. }) => {
                // The clients cannot be caught up from here: make them reconnect and resume,
                // which reports `history_lost` per room.
                tracing::warn!(%room, "room history no longer covers the pub/sub outage; asking its clients to resume");
                node.local.force_resync(&room);
            }
            Err(e) => {
                // Without the replay these subscribers would silently miss events: resume.
                tracing::warn!(%room, error = %e, "catch-up after pub/sub outage failed; asking the room's clients to resume");
                node.local.force_resync(&room);
            }
        }
    }
    tracing::info!(
        rooms,
        replayed,
        took_ms = started.elapsed().as_millis() as u64,
        "caught up after the pub/sub outage"
    );
}

fn set_lease_healthy(node: &Node, healthy: bool) {
    let mut since = node
        .lease_healthy_since
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !healthy {
        *since = None;
    } else if since.is_none() {
        *since = Some(Instant::now());
    }
}

/// Renews the node's lease. While Redis is away, clients stay connected (their requests fail
/// with `unavailable`); when it answers again and the lease had lapsed — another node may have
/// reaped this node's members meanwhile — [`reassert`] writes every local session's presence
/// and memberships again.
async fn lease_loop(node: Arc<Node>, stop: CancellationToken) {
    let ttl = Duration::from_millis(node.config.timing.lease_ttl_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.timing.lease_renew_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    let mut lapsed = false;
    let mut sweep = false;
    let mut expired_warned = false;
    let mut failing_since: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    let mut reasserting: Option<tokio::task::JoinHandle<Result<Reasserted, StoreError>>> = None;
    loop {
        // While renewals fail, retry every 200 ms: a failover's new primary should see this
        // node's lease as soon as it is reachable, well before the lease runs out.
        let retry = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            _ = stop.cancelled() => {
                if let Some(task) = reasserting.take() {
                    task.abort();
                }
                return;
            }
            _ = tick.tick() => {}
            _ = node.renew_now.notified() => {}
            _ = retry, if failing_since.is_some() || reasserting.is_some() => {}
        }
        if let Some(task) = reasserting.take_if(|t| t.is_finished()) {
            match task.await {
                Ok(Ok(r)) => {
                    // A sweep that was owed is done (a failed one is retried with it).
                    sweep = false;
                    node.metrics.lease_reasserts.inc();
                    tracing::info!(
                        connections = r.connections,
                        memberships = r.memberships,
                        rejoined = r.rejoined,
                        removed = r.removed,
                        "re-asserted this node's sessions after the lease lapsed"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "re-asserting sessions failed; retrying");
                    lapsed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "re-assert task failed; retrying");
                    lapsed = true;
                }
            }
        }
        match node
            .timed("renew_lease", node.store.renew_lease_checked())
            .await
        {
            Ok(alive) => {
                let down_for = failing_since.take().map(|since| since.elapsed());
                if let Some(down) = down_for {
                    tracing::info!(down_ms = down.as_millis() as u64, "lease renewed again");
                    // Sessions closed during an outage this long may have given up their own
                    // clean-up: the re-assert then sweeps their entries.
                    if down >= ORPHAN_SWEEP_AFTER {
                        sweep = true;
                    }
                }
                node.metrics.redis_up.set(1);
                expired_warned = false;
                // `SET ... GET` says exactly whether the lease had lapsed.
                if !alive {
                    lapsed = true;
                }
                renewed = Instant::now();
                if lapsed && reasserting.is_none() {
                    lapsed = false;
                    set_lease_healthy(&node, false);
                    tracing::warn!("this node's lease had lapsed: re-asserting its sessions");
                    reasserting = Some(tokio::spawn(reassert(node.clone(), sweep)));
                } else if reasserting.is_none() {
                    set_lease_healthy(&node, true);
                }
                // Keep this node's connection count current for the region's load report.
                let mine = u64::try_from(node.metrics.connections.get()).unwrap_or(0);
                if let Err(e) = node.store.region_load(mine).await {
                    tracing::debug!(error = %e, "cannot record the connection count");
                }
            }
            Err(e) => {
                failing_since.get_or_insert_with(Instant::now);
                set_lease_healthy(&node, false);
                node.metrics.redis_up.set(0);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, "lease renewal failed; clients stay connected, requests fail with `unavailable` until Redis answers");
                }
                if !expired_warned && renewed.elapsed() >= ttl {
                    // Another node may reap this node's members now. Clients stay: once Redis
                    // answers, the renewal says whether the lease lapsed, and if so the node
                    // writes their presence and memberships again.
                    expired_warned = true;
                    tracing::warn!(
                        connections = node.metrics.connections.get(),
                        "lease expired while Redis is away; keeping clients, will re-assert them"
                    );
                }
            }
        }
    }
}

/// Store outages at least this long make the re-assert sweep the node's index for connections
/// that closed meanwhile (a session's own clean-up retries for longer than this before it gives
/// up; a shorter lapse, e.g. a late renewal under load, has nothing to sweep).
const ORPHAN_SWEEP_AFTER: Duration = Duration::from_secs(5);

/// What [`reassert`] wrote or removed.
#[derive(Debug, Default)]
struct Reasserted {
    connections: usize,
    memberships: usize,
    rejoined: usize,
    removed: usize,
}

/// After the node's lease lapsed: waits for any reaper that claimed this node, then writes
/// every local connection's presence and live memberships again (a membership the reaper
/// removed comes back with a `joined` event), and finally removes entries of connections that
/// closed while Redis was away (their own clean-up gave up) when `sweep` is set. Every step is
/// idempotent.
async fn reassert(node: Arc<Node>, sweep: bool) -> Result<Reasserted, StoreError> {
    use region_state::ConnRef;
    let store = &node.store;
    let waited = Instant::now();
    // A reaper's claim expires after 30 s even if it died mid-way.
    while store.reaping_in_progress().await? && waited.elapsed() < Duration::from_secs(35) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let newest = node.next_conn.load(Ordering::Relaxed);
    let mut done = Reasserted::default();
    // What the store still has: a reaper removes memberships and presence first and the index
    // last, so an entry still in the index (no reaper runs now) is still in the store. Only
    // what is missing is written: after a stall nobody reaped, this is one read.
    let indexed: std::collections::HashSet<(u64, Option<RoomId>)> = store
        .own_index()
        .await?
        .into_iter()
        .map(|(conn, _, room)| (conn, room))
        .collect();
    for (user, conn_no, rooms) in node.local.connections() {
        let conn = ConnRef {
            node: store.node().clone(),
            conn: conn_no,
            user,
        };
        let wrote_presence = !indexed.contains(&(conn_no, None));
        if wrote_presence {
            store.connect(&conn).await?;
            done.connections += 1;
        }
        for room in rooms {
            if indexed.contains(&(conn_no, Some(room.clone()))) {
                continue;
            }
            // Unlimited: the connection was admitted to the room before.
            let joined = store.join(&room, &conn, 0).await?;
            done.memberships += 1;
            if joined.first {
                done.rejoined += 1;
            }
            if !node.local.has_subscriber(&room, conn_no) {
                // It left while we wrote it back.
                store.leave(&room, &conn, LeftReason::Leave).await?;
            }
        }
        if wrote_presence && !node.local.has_conn(conn_no) {
            store.disconnect(&conn).await?;
        }
    }
    // Entries of connections that are gone. Look twice, a few seconds apart, so a hello or
    // join in flight (its index entry is written before the node registers it locally) is
    // never taken for an orphan.
    let orphans = |index: Vec<(u64, meridian_protocol::UserId, Option<RoomId>)>| {
        index
            .into_iter()
            .filter(|(conn, _, room)| {
                *conn <= newest
                    && match room {
                        Some(room) => !node.local.has_subscriber(room, *conn),
                        None => !node.local.has_conn(*conn),
                    }
            })
            .collect::<Vec<_>>()
    };
    if !sweep {
        return Ok(done);
    }
    let first = orphans(store.own_index().await?);
    if !first.is_empty() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut again = orphans(store.own_index().await?);
        again.retain(|e| first.contains(e));
        // Memberships before presence.
        again.sort_by_key(|(_, _, room)| room.is_none());
        for (conn_no, user, room) in again {
            let conn = ConnRef {
                node: store.node().clone(),
                conn: conn_no,
                user,
            };
            match room {
                Some(room) => {
                    store.leave(&room, &conn, LeftReason::Disconnect).await?;
                }
                None => store.disconnect(&conn).await?,
            }
            done.removed += 1;
        }
    }
    Ok(done)
}

async fn reap_loop(node: Arc<Node>, stop: CancellationToken) {
    let base = node.config.timing.reap_interval_ms;
    loop {
        // Jitter so a region's nodes do not all scan at the same instant.
        let wait = base + rand::random::<u64>() % (base / 4 + 1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
        // Only a node whose own lease has been healthy for a whole TTL reaps: after a
        // region-wide Redis outage every node's lease looks expired, and each must get the
        // chance to renew before anyone takes it for dead.
        let ttl = Duration::from_millis(node.config.timing.lease_ttl_ms);
        let healthy = node
            .lease_healthy_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|since| since.elapsed() >= ttl);
        if !healthy {
            continue;
        }
        match node.timed("reap", node.store.reap_dead_nodes()).await {
            Ok(reaped) => {
                for r in reaped {
                    node.metrics.reaped_members.inc_by(r.memberships as u64);
                    tracing::info!(dead = %r.node, memberships = r.memberships, left = r.left_events, "reaped a dead node");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_takes_the_last_hop_and_ignores_garbage() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(forwarded_for(&h), None);
        h.append("x-forwarded-for", "10.0.0.1, 192.0.2.7".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("192.0.2.7".parse().unwrap()));
        h.append("x-forwarded-for", " 2001:db8::9 ".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("2001:db8::9".parse().unwrap()));
        let mut bad = axum::http::HeaderMap::new();
        bad.append("x-forwarded-for", "1.2.3.4, not-an-ip".parse().unwrap());
        assert_eq!(
            forwarded_for(&bad),
            None,
            "a forged last hop names no source"
        );
    }

    #[test]
    fn accept_errors_for_missing_descriptors_are_recognised() {
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(24)));
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(23)));
        assert!(!out_of_fds(&std::io::Error::from_raw_os_error(104)));
    }
}
