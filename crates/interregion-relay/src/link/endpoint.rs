//! The QUIC endpoint: transport settings, [`start_links`] (TLS, socket, the accept loop and
//! the dial loops) and the shutdown that closes every link within the grace period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::VarInt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dial::dial_loop;
use super::established::run_link;
use super::handshake::accept_handshake;
use super::{codes, lock, Link, RelayError, RelayHandle, Shared};
use crate::config::{Limits, Mesh, RelayOptions, Timing};
use crate::metrics::Metrics;
use crate::sink::EventSink;
use crate::tls::{self, Refusal, TlsError, TlsIdentity};
use meridian_protocol::relay::{self as frame, Hello, PROTOCOL_VERSION};

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
