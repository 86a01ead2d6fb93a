//! Start-up pieces: [`prepare`] reads the catalogue and certificates a config names (before
//! any socket is bound; `--validate` stops there), and [`start`] starts the links of
//! [`crate::link`] on an already-bound socket with a given sink, plus the operations HTTP
//! server (`ops.rs`), active from the start.
//!
//! [`start`] is the transport alone (tests with a [`crate::MemorySink`]); a region's relay,
//! with the lease, the standby and replication, is [`crate::run`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Mesh, RelayConfig, RelayOptions};
use crate::link::{start_links, RelayError, RelayHandle};
use crate::metrics::Metrics;
use crate::ops::{self, OpsState};
use crate::role::Role;
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
        metrics.clone(),
        shutdown.clone(),
    )?;
    let handle = links.handle.clone();
    let http_addr = match &http {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let server = http.map(|listener| {
        let state = OpsState {
            metrics: metrics.clone(),
            // A relay started this way is active from the start (no lease).
            role: watch::channel(Role::Active).1,
            shutdown: shutdown.clone(),
        };
        ops::serve(listener, state, shutdown.clone())
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

/// Everything [`crate::run`] needs besides the config, resolved from the config file before any
/// socket is bound.
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
