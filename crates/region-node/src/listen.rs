//! The node's listeners: accepting client and ops connections within the file-descriptor
//! budget and the unauthenticated budget, and serving each as HTTP/1.1 with a header timeout
//! (the WebSocket upgrade happens in the router, `node.rs`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::Node;

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
pub(crate) struct SocketSlot(Arc<std::sync::atomic::AtomicUsize>);

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
pub(crate) async fn serve_clients(
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
pub(crate) async fn serve_ops(
    node: Arc<Node>,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) {
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
pub(crate) struct PendingAuth(
    pub(crate) Arc<std::sync::Mutex<Option<crate::admission::Unauthenticated>>>,
);

impl PendingAuth {
    pub(crate) fn take(&self) -> Option<crate::admission::Unauthenticated> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_for_missing_descriptors_are_recognised() {
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(24)));
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(23)));
        assert!(!out_of_fds(&std::io::Error::from_raw_os_error(104)));
    }
}
