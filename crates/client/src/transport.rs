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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use tokio_tungstenite::tungstenite::Message;

    /// A one-shot wss server with a self-signed certificate for 127.0.0.1 that answers one
    /// request with `pong`; returns its URL and the certificate to trust.
    async fn wss_server() -> (String, CertificateDer<'static>) {
        let signed = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = signed.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(signed.signing_key.serialize_der());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    continue;
                };
                if let Some(Ok(Message::Text(request))) = ws.next().await {
                    let request: serde_json::Value = serde_json::from_str(&request).unwrap();
                    assert_eq!(request["op"], "ping");
                    let reply = format!(
                        r#"{{"type":"ok","id":{},"result":{{"pong":true}}}}"#,
                        request["id"]
                    );
                    let _ = ws.send(Message::Text(reply.into())).await;
                }
            }
        });
        (format!("wss://127.0.0.1:{port}/v1/ws"), cert)
    }

    #[tokio::test]
    async fn wss_with_a_trusted_certificate_and_not_without() {
        let (url, cert) = wss_server().await;
        // The platform's roots do not know the self-signed certificate.
        assert!(matches!(
            crate::Connection::connect(&url).await,
            Err(ClientError::Connect { .. })
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let options = ConnectOptions {
            tls: Some(Arc::new(tls)),
            websocket: None,
        };
        let mut c = crate::Connection::connect_with(&url, &options)
            .await
            .unwrap();
        assert!(c.ping().await.unwrap().pong);
    }

    #[tokio::test]
    async fn only_ws_and_wss_urls() {
        for url in ["http://127.0.0.1:1/v1/ws", "not a url", "ws:///nohost"] {
            let e = crate::Connection::connect(url).await.unwrap_err();
            assert!(matches!(e, ClientError::Url { .. }), "{url}: {e}");
            assert!(!e.is_retryable());
        }
    }
}
