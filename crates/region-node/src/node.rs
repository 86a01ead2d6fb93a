//! The node runtime: start-up, the HTTP routes (`/v1/ws`, `/healthz`, `/readyz`, `/metrics`)
//! and the graceful drain. The shared state is [`Node`] (`context.rs`); the background loops
//! are in `dispatch.rs` (fan-out) and `lease.rs` (lease, re-assert, reaper); the listeners in
//! `listen.rs`; one connection in `session/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use region_state::{
    Inbound, MemoryRegion, NodeId, RedisStore, RedisStoreConfig, StateStore, StoreError,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Shed;
use crate::api::KeySet;
use crate::config::NodeConfig;
pub use crate::context::Node;
use crate::dispatch::dispatch;
use crate::lease::{lease_loop, reap_loop};
use crate::listen::{serve_clients, serve_ops, PendingAuth, SocketSlot};

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
    /// The server API's keys could not be loaded (`api.keys_file`).
    #[error("{0}")]
    ApiKeys(String),
}

/// A started node: its address and a handle to wait for it.
#[derive(Debug)]
pub struct RunningNode {
    /// The bound client address.
    pub addr: SocketAddr,
    /// The bound operations address (`ops_listen`), if there is one.
    pub ops_addr: Option<SocketAddr>,
    /// The bound server API address (`api.listen`), if the API is on.
    pub api_addr: Option<SocketAddr>,
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
    let api = match &config.api {
        Some(c) => {
            let keys = KeySet::new(c).map_err(NodeError::ApiKeys)?;
            Some((TcpListener::bind(c.listen).await?, Arc::new(keys)))
        }
        None => None,
    };
    let api_addr = api.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let node_id = store.node().clone();
    let node = Arc::new(Node::new(config, store));
    tracing::info!(%addr, ?ops_addr, ?api_addr, node = %node_id, region = %node.config.region, "region node serving");
    let done = tokio::spawn(run(node, listener, ops, api, inbound, shutdown));
    Ok(RunningNode {
        addr,
        ops_addr,
        api_addr,
        node_id,
        done,
    })
}

async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    ops: Option<TcpListener>,
    api: Option<(TcpListener, Arc<KeySet>)>,
    inbound: mpsc::Receiver<Inbound>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let loops = CancellationToken::new();
    let ops_stop = CancellationToken::new();
    let ops_stop_for_api = ops_stop.clone();
    let background = TaskTracker::new();
    background.spawn(dispatch(node.clone(), inbound, loops.clone()));
    background.spawn(lease_loop(node.clone(), loops.clone()));
    background.spawn(reap_loop(node.clone(), loops.clone()));
    // The server API, like the ops listener, serves until the drain is over (backends may
    // still publish to the sessions moving away).
    let api_server = api.map(|(listener, keys)| {
        background.spawn(keys.clone().watch(loops.clone()));
        let max_body = node.config.api.as_ref().map_or(0, |a| a.max_body_bytes);
        let app = crate::api::router(node.clone(), keys, max_body);
        tokio::spawn(serve_ops(
            node.clone(),
            listener,
            app,
            ops_stop_for_api.clone(),
        ))
    });
    background.close();
    let mut webhooks = start_webhooks(&node, loops.clone());

    // The ops listener outlives the drain: balancers see `/readyz` 503 until the end.
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
    let started = Instant::now();
    let clean = drain_sessions(&node, started).await;
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "server task failed");
    }
    ops_stop.cancel();
    if let Some(ops) = ops_server {
        if let Err(e) = ops.await {
            tracing::warn!(error = %e, "ops server task failed");
        }
    }
    if let Some(api) = api_server {
        if let Err(e) = api.await {
            tracing::warn!(error = %e, "API server task failed");
        }
    }
    loops.cancel();
    background.wait().await;
    // A worker mid-request stops within its timeout; do not wait that long: what it was
    // sending stays pending in Redis for the next lease holder.
    let stopped = tokio::time::timeout(Duration::from_secs(2), async {
        while webhooks.join_next().await.is_some() {}
    });
    if stopped.await.is_err() {
        webhooks.abort_all();
    }
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

/// The webhook delivery workers (`meridian-webhooks`), when endpoints are configured.
fn start_webhooks(node: &Node, stop: CancellationToken) -> tokio::task::JoinSet<()> {
    let cfg = &node.config.webhooks;
    let crate::config::StoreConfig::Redis { url, .. } = &node.config.store else {
        return tokio::task::JoinSet::new();
    };
    if !cfg.enabled() {
        return tokio::task::JoinSet::new();
    }
    match meridian_webhooks::redis::Client::open(url.as_str()) {
        Ok(client) => meridian_webhooks::deliver::spawn(
            client,
            cfg.clone(),
            node.config.region.clone(),
            node.store.node().to_string(),
            node.webhook_metrics.clone(),
            stop,
        ),
        Err(e) => {
            tracing::error!(error = %e, "webhooks: bad Redis URL, webhooks off");
            tokio::task::JoinSet::new()
        }
    }
}

/// The drain: every session is told to reconnect and given most of the drain deadline to go;
/// then the rest are closed and given what remains for their clean-up. `false` when some did
/// not finish in time.
async fn drain_sessions(node: &Node, started: Instant) -> bool {
    let deadline = Duration::from_millis(node.config.timing.drain_deadline_ms);
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
    clean
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
}
