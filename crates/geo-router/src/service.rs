//! Wires the router together: [`run`] loads the catalogue and the database, connects the
//! control store, serves DNS (UDP + TCP) and HTTP on the [`Listeners`] it is given, and runs
//! every background task until its shutdown token is cancelled. [`Listeners::bind`] binds what
//! the config names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RouterConfig;
use crate::controls::ControlStore;
use crate::dns::{
    serve_tcp_limited, serve_udp_limited, Answerer, DnsRouter, SourceLimits, ZoneConfig,
};
use crate::http::{serve_http, Service};
use crate::probe::Prober;
use crate::router::{
    open_geoip, spawn_control_poller, spawn_geoip_reloader, spawn_health_checks, spawn_rtt_sweeper,
    GeoView, RouterState,
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
    /// The health-probe trust roots could not be read (`health.ca_file`).
    #[error(transparent)]
    CaFile(#[from] crate::config::CaFileError),
    /// The health-probe TLS client could not be set up.
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

/// The sockets a router serves on, bound before [`run`] (by the binary, or by a test).
#[derive(Debug)]
pub struct Listeners {
    /// DNS over UDP (`dns_listen`).
    pub dns_udp: UdpSocket,
    /// DNS over TCP, normally on the UDP socket's port.
    pub dns_tcp: TcpListener,
    /// The public HTTP API (`http_listen`).
    pub http: TcpListener,
    /// The admin API (`admin_listen`); `None`: no admin API is served.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names: `dns_listen` on UDP and TCP (one port; with port 0
    /// the UDP socket picks it and TCP takes the same one, and when another process holds that
    /// port for TCP both are dropped and a new port is tried, a few times, instead of failing),
    /// `http_listen`, and `admin_listen` when set.
    pub async fn bind(config: &RouterConfig) -> Result<Listeners, StartError> {
        let (dns_udp, dns_tcp) = bind_dns(config.dns_listen).await?;
        let http = bind_tcp(config.http_listen).await?;
        let admin = match config.admin_listen {
            Some(listen) => Some(bind_tcp(listen).await?),
            None => None,
        };
        Ok(Listeners {
            dns_udp,
            dns_tcp,
            http,
            admin,
        })
    }
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// DNS on UDP and TCP at one port (see [`Listeners::bind`]).
async fn bind_dns(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), StartError> {
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
            Ok(tcp) => return Ok((udp, tcp)),
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

/// A running router: its addresses, its state, and a handle to wait for it.
#[derive(Debug)]
pub struct RunningRouter {
    /// The shared state (for tests and the binary's log lines).
    pub state: Arc<RouterState>,
    /// The DNS address served (UDP and TCP).
    pub dns_addr: SocketAddr,
    /// The HTTP address served.
    pub http_addr: SocketAddr,
    /// The admin API's address, when there is an admin listener.
    pub admin_addr: Option<SocketAddr>,
    /// Resolves when every task has finished, after the `shutdown` token given to [`run`] is
    /// cancelled.
    pub done: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl RunningRouter {
    /// Cancels the `shutdown` token given to [`run`] and waits at most `timeout` for every task
    /// to finish.
    pub async fn stop(self, timeout: Duration) {
        self.shutdown.cancel();
        if tokio::time::timeout(timeout, self.done).await.is_err() {
            tracing::warn!(?timeout, "shutdown timed out; exiting anyway");
        }
    }
}

/// Starts a router with `config` (already validated) on `listeners`, and serves until
/// `shutdown` is cancelled; [`RunningRouter::done`] then resolves once every task has
/// finished (open HTTP connections finish the request in hand; the caller bounds the wait).
/// The library entry point that `main` and in-process tests share, in the shape of
/// `region_node::start(config, listener, shutdown)`.
///
/// Before anything is served it loads the catalogue, the health-probe trust roots, the GeoIP
/// database (and its scope index) and the admin TLS certificate, and connects the control
/// store (retried for up to 10 s); controls in Redis are read once before this returns.
pub async fn run(
    config: RouterConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<RunningRouter, StartError> {
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

    // A broken health.ca_file stops the start with its own line.
    let prober = Prober::new(
        config.health.trust_roots()?,
        Duration::from_millis(config.health.timeout_ms),
    )?;

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
    let Listeners {
        dns_udp,
        dns_tcp,
        http,
        admin,
    } = listeners;
    // The addresses in these (unlikely) errors are what the config asked for.
    let bound = |listener: &TcpListener, addr: SocketAddr| {
        listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })
    };
    let dns_addr = dns_udp.local_addr().map_err(|source| StartError::Bind {
        addr: config.dns_listen,
        source,
    })?;
    let http_addr = bound(&http, config.http_listen)?;
    let admin_addr = match &admin {
        Some(listener) => Some(bound(
            listener,
            config.admin_listen.unwrap_or(config.http_listen),
        )?),
        None => None,
    };
    if let (Some(admin), None) = (admin_addr, &admin_tls) {
        if !admin.ip().is_loopback() {
            tracing::warn!(%admin, "the admin API listens on plain HTTP beyond loopback: set admin_tls");
        }
    }
    if admin.is_none() && !config.controls.admin_tokens.is_empty() {
        tracing::warn!(
            "controls.admin_tokens are set but admin_listen is not: no admin API is served"
        );
    }
    let dns_limits = Arc::new(SourceLimits::new(&config.dns_limits));

    let state = Arc::new(RouterState::new(config, regions, geo, store));
    if let Err(e) = state.refresh_controls().await {
        tracing::warn!(error = %e, "cannot read routing controls yet; /readyz stays false until they load");
    }
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
        Service::new(Arc::clone(&state)),
        None,
        shutdown.clone(),
    )));
    if let Some(listener) = admin {
        tasks.push(tokio::spawn(serve_http(
            listener,
            Service::admin(Arc::clone(&state)),
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
    let done = tokio::spawn(async move {
        futures_util::future::join_all(tasks).await;
    });
    Ok(RunningRouter {
        state,
        dns_addr,
        http_addr,
        admin_addr,
        done,
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
