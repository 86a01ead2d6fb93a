//! Start-up and the HTTP side: wires config, catalogue, TLS identity and sink into the links
//! of [`crate::link`], and serves `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` is 200 while the process serves HTTP. `/readyz` is 200 once the QUIC endpoint is
//! bound and until shutdown starts: a relay with no live link is still ready, because links
//! depend on the other regions (per-link state is `meridian_relay_link_up` in `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Mesh, RelayConfig, RelayOptions};
use crate::link::{start_links, RelayError, RelayHandle};
use crate::metrics::Metrics;
use crate::sink::EventSink;
use crate::tls::TlsIdentity;

/// A started relay.
#[derive(Debug)]
pub struct RunningRelay {
    /// The bound QUIC (UDP) address.
    pub quic_addr: SocketAddr,
    /// The bound HTTP address, when one was given.
    pub http_addr: Option<SocketAddr>,
    /// The API (send frames, link states, metrics).
    pub handle: RelayHandle,
    /// Resolves when links and HTTP have stopped after `shutdown`.
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts a relay on already-bound sockets (tests pass port-0 sockets).
pub async fn start(
    options: RelayOptions,
    mesh: Mesh,
    identity: &TlsIdentity,
    sink: Arc<dyn EventSink>,
    socket: std::net::UdpSocket,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<RunningRelay, RelayError> {
    let metrics = Arc::new(Metrics::new(
        mesh.regions
            .keys()
            .filter(|r| **r != options.region)
            .map(String::as_str),
    ));
    let links = start_links(
        options,
        mesh,
        identity,
        sink,
        socket,
        metrics,
        shutdown.clone(),
    )?;
    let handle = links.handle.clone();
    let http_addr = match &http {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let server = http.map(|listener| {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state((handle.clone(), shutdown.clone()));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "relay HTTP server failed");
            }
        })
    });
    let links_done = links.done;
    let done = tokio::spawn(async move {
        let _ = links_done.await;
        if let Some(server) = server {
            let _ = server.await;
        }
    });
    Ok(RunningRelay {
        quic_addr: links.quic_addr,
        http_addr,
        handle,
        done,
    })
}

type HttpState = (RelayHandle, CancellationToken);

async fn readyz(State((_, shutdown)): State<HttpState>) -> Response {
    if shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics_text(State((handle, _)): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        handle.metrics().render(),
    )
        .into_response()
}

/// Everything `serve` needs, resolved from a config file before any socket is bound.
#[derive(Debug)]
pub struct Prepared {
    /// Runtime options.
    pub options: RelayOptions,
    /// Regions and dial addresses.
    pub mesh: Mesh,
    /// Certificates.
    pub identity: TlsIdentity,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// HTTP address to bind.
    pub http_listen: SocketAddr,
}

/// Errors preparing a relay from its config: one line each, for `main` to print.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The catalogue could not be read.
    #[error("catalogue: {0}")]
    Catalogue(#[from] meridian_catalogue::CatalogueError),
    /// The config contradicts the catalogue.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Certificates missing, unreadable or not this region's.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Reads the catalogue and the certificates named by `config` and checks them together.
pub fn prepare(config: &RelayConfig) -> Result<Prepared, PrepareError> {
    let catalogue = meridian_catalogue::load_dir(&config.catalogue_dir)?;
    let mesh = Mesh::resolve(&catalogue, &config.region, &config.peers)?;
    let identity = TlsIdentity::load(&config.tls)?;
    identity.check_region(&config.region)?;
    let listen = match config.listen {
        Some(l) => l,
        None => catalogue
            .get(&config.region)
            .map(|r| r.relay.address)
            .ok_or_else(|| {
                crate::config::ConfigError::Invalid(format!(
                    "region {:?} is not in the catalogue",
                    config.region
                ))
            })?,
    };
    Ok(Prepared {
        options: config.options(),
        mesh,
        identity,
        listen,
        http_listen: config.http_listen,
    })
}
