//! Wires the router together: loads the catalogue and the database, connects the control
//! store, binds DNS (UDP + TCP) and HTTP, and runs every background task until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RouterConfig;
use crate::controls::ControlStore;
use crate::dns::{serve_tcp_limited, serve_udp_limited, Answerer, SourceLimits, ZoneConfig};
use crate::router::{
    open_geoip, spawn_control_poller, spawn_geoip_reloader, spawn_health_checks, spawn_rtt_sweeper,
    DnsRouter, GeoView, RouterState,
};

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Configuration or catalogue problem.
    #[error("{0}")]
    Config(String),
    /// The GeoIP database could not be loaded.
    #[error(transparent)]
    GeoIp(#[from] crate::geoip::GeoIpError),
    /// The control store could not be reached.
    #[error("routing controls: {0}")]
    Controls(#[from] crate::controls::ControlError),
    /// The health-probe TLS trust could not be set up (`health.ca_file`).
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeSetupError),
    /// The admin listener's TLS certificate or key could not be loaded.
    #[error("admin_tls: {0}")]
    AdminTls(String),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A started router.
#[derive(Debug)]
pub struct RunningRouter {
    /// The shared state (for tests and the binary's log lines).
    pub state: Arc<RouterState>,
    /// The DNS address bound (UDP and TCP).
    pub dns_addr: SocketAddr,
    /// The HTTP address bound.
    pub http_addr: SocketAddr,
    /// The admin API's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl RunningRouter {
    /// Stops everything and waits at most `timeout` for the tasks to finish.
    pub async fn stop(self, timeout: Duration) {
        self.shutdown.cancel();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(?timeout, "shutdown timed out; exiting anyway");
        }
    }
}

/// Starts a router with `config` (already validated). Controls in Redis are read once before
/// this returns; connecting is retried for up to 10 s.
/// Binds DNS on UDP and TCP at one address. With port 0 the UDP socket picks the port and
/// TCP takes the same one; when another process holds that port for TCP, both are dropped and
/// a new port is tried (a few times), instead of failing the start.
async fn bind_dns(listen: SocketAddr) -> Result<(UdpSocket, SocketAddr, TcpListener), StartError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, addr, tcp)),
            Err(e)
                if listen.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < 8 =>
            {
                tracing::debug!(%addr, "TCP port taken; picking another DNS port");
            }
            Err(source) => return Err(StartError::Bind { addr, source }),
        }
    }
}

pub async fn start(config: RouterConfig) -> Result<RunningRouter, StartError> {
    let catalogue = meridian_catalogue::load_dir(&config.regions)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let regions: Vec<_> = catalogue.into_values().collect();
    if regions.is_empty() {
        return Err(StartError::Config(format!(
            "the catalogue {} has no regions",
            config.regions.display()
        )));
    }
    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    config
        .validate_against(&names)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let zone = ZoneConfig {
        ttl: config.ttl,
        minimum: config.ttl,
        ..ZoneConfig::new(
            config
                .zone_name()
                .map_err(|e| StartError::Config(e.to_string()))?,
            config
                .name_server_names()
                .map_err(|e| StartError::Config(e.to_string()))?,
        )
    };

    // Before any socket is bound: a broken health.ca_file stops the start with its own line.
    let prober = crate::probe::Prober::new(&config.health)?;

    let reloading = open_geoip(config.geoip.as_ref())?;
    let geo = {
        let db = reloading.as_ref().map(|r| r.current());
        let regions = regions.clone();
        tokio::task::spawn_blocking(move || GeoView::build(db, &regions))
            .await
            .map_err(|e| StartError::Config(format!("building the scope index: {e}")))??
    };
    if let Some(stats) = &geo.stats {
        tracing::info!(?stats, "GeoIP database loaded");
    } else {
        tracing::warn!("no GeoIP database configured: every client gets the default order");
    }

    let store = match &config.controls.redis_url {
        Some(url) => {
            let ca = match &config.controls.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    StartError::Config(format!(
                        "controls.ca_file = {:?}: cannot read it: {e}",
                        path.display().to_string()
                    ))
                })?),
                None => None,
            };
            connect_store(url, &config.controls.key_prefix, ca).await?
        }
        None => {
            tracing::warn!(
                "controls.redis_url is not set: routing controls apply to THIS router only; \
                 set it when more than one router runs"
            );
            ControlStore::memory()
        }
    };

    let admin_tls = config.admin_tls.as_ref().map(admin_acceptor).transpose()?;
    if let (Some(admin), None) = (config.admin_listen, &admin_tls) {
        if !admin.ip().is_loopback() {
            tracing::warn!(%admin, "the admin API listens on plain HTTP beyond loopback: set admin_tls");
        }
    }
    if config.admin_listen.is_none() && !config.controls.admin_tokens.is_empty() {
        tracing::warn!(
            "controls.admin_tokens are set but admin_listen is not: no admin API is served"
        );
    }

    let (dns_udp, dns_addr, dns_tcp) = bind_dns(config.dns_listen).await?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.http_listen,
            source,
        })?;
    let http_addr = http.local_addr().map_err(|source| StartError::Bind {
        addr: config.http_listen,
        source,
    })?;

    let admin = match config.admin_listen {
        Some(listen) => {
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
            Some((listener, addr))
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(|(_, addr)| *addr);
    let dns_limits = Arc::new(SourceLimits::new(&config.dns_limits));

    let state = Arc::new(RouterState::new(config, regions, geo, store));
    if let Err(e) = state.refresh_controls().await {
        tracing::warn!(error = %e, "cannot read routing controls yet; /readyz stays false until they load");
    }
    let shutdown = CancellationToken::new();
    let answerer = Arc::new(Answerer::new(zone, DnsRouter::new(Arc::clone(&state))));
    let mut tasks = Vec::new();
    {
        let answerer = Arc::clone(&answerer);
        let limits = Arc::clone(&dns_limits);
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            serve_udp_limited(dns_udp, answerer, limits, stop.cancelled_owned()).await;
        }));
    }
    {
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            serve_tcp_limited(dns_tcp, answerer, dns_limits, stop.cancelled_owned()).await;
        }));
    }
    tasks.push(tokio::spawn(serve_http(
        http,
        crate::http::Service::new(Arc::clone(&state)),
        None,
        shutdown.clone(),
    )));
    if let Some((listener, _)) = admin {
        tasks.push(tokio::spawn(serve_http(
            listener,
            crate::http::Service::admin(Arc::clone(&state)),
            admin_tls,
            shutdown.clone(),
        )));
    }
    tasks.extend(spawn_health_checks(
        Arc::clone(&state),
        prober,
        shutdown.clone(),
    ));
    tasks.push(spawn_control_poller(Arc::clone(&state), shutdown.clone()));
    tasks.push(spawn_rtt_sweeper(Arc::clone(&state), shutdown.clone()));
    if let Some(db) = reloading {
        tasks.push(spawn_geoip_reloader(
            Arc::clone(&state),
            db,
            shutdown.clone(),
        ));
    }
    Ok(RunningRouter {
        state,
        dns_addr,
        http_addr,
        admin_addr,
        tasks,
        shutdown,
    })
}

async fn connect_store(
    url: &str,
    prefix: &str,
    ca: Option<Vec<u8>>,
) -> Result<ControlStore, StartError> {
    let mut delay = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ControlStore::redis_with_ca(url, prefix, ca.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, "control store not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Longest a client may take to send a request's headers (a slow-loris bound). hyper also
/// applies it to the idle wait between keep-alive requests, so it is nginx's
/// `keepalive_timeout` (75 s): longer than a load balancer's usual idle timeout (60 s), which
/// must not find its pooled connection closed under it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Checks that `admin_tls`'s certificate and key load (for `geo-router --validate`).
pub fn check_admin_tls(config: &RouterConfig) -> Result<(), StartError> {
    config.admin_tls.as_ref().map(admin_acceptor).transpose()?;
    Ok(())
}

/// The admin listener's TLS acceptor from `admin_tls`'s PEM files.
fn admin_acceptor(tls: &crate::config::AdminTls) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StartError::AdminTls(format!("{what} = {:?}: {e}", path.display().to_string()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| fail("cert", &tls.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail("cert", &tls.cert, &e))?;
    if certs.is_empty() {
        return Err(fail("cert", &tls.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| fail("key", &tls.key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::AdminTls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| fail("key", &tls.key, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Longest a client may take over its TLS handshake on the admin listener.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 (over TLS when `tls` is given) on `listener` until `stop`, then lets every
/// open connection finish the request in hand and close (the caller bounds the wait).
async fn serve_http(
    listener: TcpListener,
    service: crate::http::Service,
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
    service: Arc<crate::http::Service>,
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
