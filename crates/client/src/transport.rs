//! Opening the WebSocket: `ws://` over TCP, `wss://` over TLS (rustls with ring; the
//! platform's roots unless the caller gives its own configuration).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::error::ClientError;

/// A byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The WebSocket a [`Connection`](crate::Connection) owns.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The TLS configuration for `wss://` (default: the platform's roots, see
    /// [`platform_tls`]). A CLI that trusts a dev CA builds its own.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// WebSocket limits (default: tungstenite's).
    pub websocket: Option<WebSocketConfig>,
}

/// A TLS configuration trusting the platform's root certificates (rustls with ring).
pub fn platform_tls() -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A platform certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the WebSocket at `url` (`ws://` or `wss://`).
pub async fn open(url: &str, options: &ConnectOptions) -> Result<Ws, ClientError> {
    let bad = |why: &str| ClientError::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let request = url.into_client_request().map_err(|e| bad(&e.to_string()))?;
    let uri = request.uri().clone();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(bad("use ws:// or wss://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let failed = |e: std::io::Error| ClientError::Connect {
        url: url.to_owned(),
        source: e.into(),
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(failed)?;
    // Requests are small frames that should leave at once.
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        let config = match &options.tls {
            Some(config) => Arc::clone(config),
            None => platform_tls()?,
        };
        let name = ServerName::try_from(host).map_err(|e| bad(&e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(failed)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, options.websocket)
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok(ws)
}
