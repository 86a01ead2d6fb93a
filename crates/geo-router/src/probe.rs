//! The I/O side of health checks: one `GET` of a region's `health_url`, over plain HTTP or
//! HTTPS. [`crate::health`] holds the pure side (hysteresis, load parsing, [`ProbeResult`]).
//!
//! **HTTPS.** rustls (ring provider, TLS 1.3 and 1.2) through tokio-rustls, with the server name
//! (SNI, and the name the certificate must match) taken from the URL's host; an IP-address host
//! is matched against the certificate's IP SANs and sends no SNI. The certificate is always
//! verified: there is no switch to turn verification off. The trusted roots are given to
//! [`Prober::new`]; the router's are the platform's store (`health.platform_roots`, read once at
//! start through `rustls-native-certs`) plus an optional PEM bundle (`health.ca_file`) for a
//! private CA, gathered by the config side (`HealthConfig::trust_roots`). A certificate that is expired, issued by an
//! untrusted CA or not valid for the host fails the probe with [`FailureKind::TlsCertificate`]
//! (metric label `tls_certificate`), and the error says which of the three it was.
//!
//! **HTTP.** hyper's HTTP/1.1 client connection, one connection per probe (`Connection: close`):
//! probes are once a second per region, and a fresh handshake every time is what notices a
//! rotated or expiring certificate. The body read is capped at 64 KiB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::health::{parse_load, FailureKind, ProbeResult};

/// The most of a probe body that is read.
const BODY_LIMIT: usize = 64 * 1024;

/// Why the probe client could not be set up (at start; the message names the key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeSetupError {
    /// rustls refused the protocol configuration (a build problem, not an input one).
    #[error("health probes: TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Fetches health URLs. Cheap to clone (the TLS configuration is shared).
#[derive(Clone)]
pub struct Prober {
    tls: TlsConnector,
    /// The longest one probe may take (`health.timeout_ms`).
    timeout: Duration,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prober")
    }
}

impl Prober {
    /// A prober trusting exactly `roots` (the configuration's are
    /// [`HealthConfig::trust_roots`](crate::config::HealthConfig::trust_roots)), whose probes
    /// each end within `timeout`.
    pub fn new(roots: RootCertStore, timeout: Duration) -> Result<Prober, ProbeSetupError> {
        // An explicit provider, so the process-wide default (or two providers compiled in by
        // other crates) cannot change what the probes accept.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Prober {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// Fetches `url` once within the prober's timeout. Never fails: every problem is a failed
    /// probe with its kind and reason.
    pub async fn probe(&self, url: &str, capacity: u64) -> ProbeResult {
        let timeout = self.timeout;
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.fetch(url, capacity)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure {
                kind: FailureKind::Timeout,
                message: format!("no answer within {} ms", timeout.as_millis()),
            }),
        };
        let latency = started.elapsed();
        match outcome {
            Ok(load) => ProbeResult {
                ok: true,
                load,
                error: None,
                failure: None,
                latency,
            },
            Err(failure) => ProbeResult {
                ok: false,
                load: None,
                error: Some(failure.message),
                failure: Some(failure.kind),
                latency,
            },
        }
    }

    async fn fetch(&self, url: &str, capacity: u64) -> Result<Option<f64>, Failure> {
        let target = Target::parse(url).map_err(|message| Failure {
            kind: FailureKind::BadUrl,
            message,
        })?;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| Failure {
                kind: FailureKind::Connect,
                message: format!("connect to {}: {e}", target.authority),
            })?;
        // Best effort: a probe is one small request.
        let _ = tcp.set_nodelay(true);
        if !target.tls {
            return request(tcp, &target, capacity).await;
        }
        let name = ServerName::try_from(target.host.clone()).map_err(|e| Failure {
            kind: FailureKind::BadUrl,
            message: format!("{url}: {:?} is not a TLS server name: {e}", target.host),
        })?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failure(&target.host, &e))?;
        request(stream, &target, capacity).await
    }
}

/// A failed probe: its class (the metric label) and the log line's reason.
#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    message: String,
}

/// The parts of a health URL a probe needs.
#[derive(Debug, PartialEq)]
struct Target {
    tls: bool,
    /// Host without brackets (`::1`), for connecting and for the server name.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => {
                return Err(format!(
                    "{url:?}: scheme {:?} is not http or https",
                    other.unwrap_or("")
                ))
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Target {
            tls,
            host,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// One `GET` on an established connection; the load its 2xx body reports, if any.
async fn request<S>(stream: S, target: &Target, capacity: u64) -> Result<Option<f64>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_failure = |e: hyper::Error| Failure {
        kind: FailureKind::Http,
        message: format!("HTTP exchange with {}: {e}", target.authority),
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(http_failure)?;
    let request = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::USER_AGENT, "meridian-geo-router")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| Failure {
            kind: FailureKind::BadUrl,
            message: format!("{}{}: {e}", target.authority, target.path),
        })?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http_failure)?;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while bytes.len() < BODY_LIMIT {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame.map_err(http_failure)?.into_data() {
                let room = BODY_LIMIT - bytes.len();
                bytes.extend_from_slice(data.get(..data.len().min(room)).unwrap_or_default());
            }
        }
        // Dropping the sender (end of this block) lets the connection future finish.
        if status.is_success() {
            Ok(parse_load(&bytes, capacity))
        } else {
            Err(Failure {
                kind: FailureKind::Status,
                message: format!("HTTP {}", status.as_u16()),
            })
        }
    };
    // The connection is driven here, not on a spawned task, so a timed-out probe leaves
    // nothing running behind it. Its own error is already in the exchange's result.
    let (outcome, _) = tokio::join!(exchange, connection);
    outcome
}

/// Classifies a failed TLS handshake: the certificate, or anything else.
fn tls_failure(host: &str, error: &std::io::Error) -> Failure {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => {
            let hint = match cert {
                CertificateError::UnknownIssuer => {
                    " (issuer not trusted: a private CA goes in health.ca_file)"
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => " (expired)",
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => " (name mismatch)",
                _ => "",
            };
            Failure {
                kind: FailureKind::TlsCertificate,
                message: format!(
                    "TLS certificate of {host} rejected: {}{hint}",
                    rustls::Error::InvalidCertificate(cert.clone())
                ),
            }
        }
        Some(rustls::Error::NoCertificatesPresented) => Failure {
            kind: FailureKind::TlsCertificate,
            message: format!("TLS certificate of {host} rejected: none presented"),
        },
        Some(other) => Failure {
            kind: FailureKind::Tls,
            message: format!("TLS handshake with {host} failed: {other}"),
        },
        None => Failure {
            kind: FailureKind::Tls,
            message: format!("TLS handshake with {host} failed: {error}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_scheme_host_port_and_path() {
        let t = Target::parse("https://health.eu.example.net/readyz?deep=1").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "health.eu.example.net".into(),
                port: 443,
                authority: "health.eu.example.net".into(),
                path: "/readyz?deep=1".into(),
            }
        );
        let t = Target::parse("http://127.0.0.1:7101/readyz").unwrap();
        assert_eq!((t.tls, t.port, t.host.as_str()), (false, 7101, "127.0.0.1"));
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8443, "/")
        );
        assert_eq!(t.authority, "[::1]:8443");
        for bad in ["ftp://x/", "/readyz", "https://user:pw@host/", "not a url"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
