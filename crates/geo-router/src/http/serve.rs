//! The HTTP/1.1 accept loop of both listeners: hyper connections over the [`Service`], over
//! TLS on the admin listener when `admin_tls` is set, with a graceful end on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Service;

/// Longest a client may take to send a request's headers (a slow-loris bound). hyper also
/// applies it to the idle wait between keep-alive requests, so it is nginx's
/// `keepalive_timeout` (75 s): longer than a load balancer's usual idle timeout (60 s), which
/// must not find its pooled connection closed under it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Longest a client may take over its TLS handshake on the admin listener.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 (over TLS when `tls` is given) on `listener` until `stop`, then lets every
/// open connection finish the request in hand and close (the caller bounds the wait).
pub async fn serve_http(
    listener: TcpListener,
    service: Service,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    let service = Arc::new(service);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers are one small write each, latency-bound: no Nagle delay (as nginx's
        // `tcp_nodelay on` default for keep-alive connections).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = Arc::clone(&service);
        let stop = stop.clone();
        match &tls {
            None => {
                connections.spawn(serve_http_connection(tcp, peer, service, stop));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    match handshake {
                        Ok(Ok(stream)) => serve_http_connection(stream, peer, service, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    connections.close();
    connections.wait().await;
}

async fn serve_http_connection<IO>(
    io: IO,
    peer: SocketAddr,
    service: Arc<Service>,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |request| {
        let service = Arc::clone(&service);
        async move { service.call(peer, request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .writev(false)
        .serve_connection(hyper_util::rt::TokioIo::new(io), handler);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
