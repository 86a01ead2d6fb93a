//! HTTPS health probes against real TLS endpoints on loopback, with certificates from a test CA
//! made by rcgen: healthy with the right CA (by name and by IP SAN), a failed probe of kind
//! `tls_certificate` with a wrong CA, a hostname mismatch and an expired certificate; plain HTTP
//! still works; and a router started in-process marks the regions up or down accordingly and
//! counts the certificate failures in `/metrics`. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::start;
use geo_router::config::{HealthConfig, RouterConfig};
use geo_router::health::FailureKind;
use geo_router::probe::Prober;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);
const TIMEOUT: Duration = Duration::from_secs(2);

/// A test CA: its PEM and the issuer that signs leaves.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses); `expired` puts its
    /// validity in the past.
    fn leaf(
        &self,
        names: &[&str],
        expired: bool,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "geo-router-https-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BODY: &str = r#"{"load": 0.25}"#;

/// Answers every request with 200 and [`BODY`]; over TLS when given a certificate.
async fn health_server(
    tls: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|(cert, key)| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        // A rejected certificate ends the handshake here: nothing to answer.
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            answer(stream).await;
                        }
                    }
                    None => answer(tcp).await,
                }
            });
        }
    });
    addr
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        // A TLS ClientHello sent to plain HTTP: answer 400 as an HTTP server would.
        if request.first() == Some(&0x16) {
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A prober as the router builds one from `health`'s trust roots, with `timeout`.
fn prober(health: &HealthConfig, timeout: Duration) -> Prober {
    Prober::new(health.trust_roots().unwrap(), timeout).unwrap()
}

fn trusting(ca_file: &Path) -> Prober {
    let health = HealthConfig {
        platform_roots: false,
        ca_file: Some(ca_file.to_owned()),
        ..HealthConfig::default()
    };
    prober(&health, TIMEOUT)
}

#[tokio::test]
async fn https_is_healthy_with_the_right_ca_by_name_and_by_ip() {
    tokio::time::timeout(LIMIT, async {
        let scratch = Scratch::new("right");
        let ca = TestCa::new("Meridian test health CA");
        let ca_file = scratch.write("ca.pem", &ca.pem);
        let addr = health_server(Some(ca.leaf(&["localhost", "127.0.0.1"], false))).await;
        let prober = trusting(&ca_file);
        for url in [
            format!("https://localhost:{}/readyz", addr.port()),
            format!("https://127.0.0.1:{}/readyz", addr.port()),
        ] {
            let result = prober.probe(&url, 1000).await;
            assert!(result.ok, "{url}: {result:?}");
            assert_eq!(result.load, Some(0.25), "{url}");
            assert_eq!(result.failure, None);
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_wrong_ca_a_name_mismatch_and_an_expired_certificate_fail_the_probe() {
    tokio::time::timeout(LIMIT, async {
        let scratch = Scratch::new("wrong");
        let ca = TestCa::new("Meridian test health CA");
        let other = TestCa::new("Some other CA");
        let right = trusting(&scratch.write("ca.pem", &ca.pem));
        let wrong = trusting(&scratch.write("other.pem", &other.pem));

        let good = health_server(Some(ca.leaf(&["localhost"], false))).await;
        let url = format!("https://localhost:{}/readyz", good.port());
        assert!(right.probe(&url, 1000).await.ok);
        let result = wrong.probe(&url, 1000).await;
        assert!(!result.ok);
        assert_eq!(
            result.failure,
            Some(FailureKind::TlsCertificate),
            "{result:?}"
        );
        let error = result.error.unwrap();
        assert!(error.contains("issuer"), "{error}");
        assert!(error.contains("health.ca_file"), "{error}");

        let elsewhere = health_server(Some(ca.leaf(&["elsewhere.example"], false))).await;
        let url = format!("https://localhost:{}/readyz", elsewhere.port());
        let result = right.probe(&url, 1000).await;
        assert!(!result.ok);
        assert_eq!(
            result.failure,
            Some(FailureKind::TlsCertificate),
            "{result:?}"
        );
        let error = result.error.unwrap();
        assert!(
            error.contains("name mismatch") && error.contains("localhost"),
            "{error}"
        );
        // The IP form is checked against IP SANs, which this certificate has none of.
        let url = format!("https://127.0.0.1:{}/readyz", elsewhere.port());
        let result = right.probe(&url, 1000).await;
        assert_eq!(
            result.failure,
            Some(FailureKind::TlsCertificate),
            "{result:?}"
        );

        let expired = health_server(Some(ca.leaf(&["localhost"], true))).await;
        let url = format!("https://localhost:{}/readyz", expired.port());
        let result = right.probe(&url, 1000).await;
        assert_eq!(
            result.failure,
            Some(FailureKind::TlsCertificate),
            "{result:?}"
        );
        assert!(result.error.unwrap().contains("expired"));

        // The platform store alone does not trust a private CA: verification is never off.
        let platform = prober(&HealthConfig::default(), TIMEOUT);
        let url = format!("https://localhost:{}/readyz", good.port());
        let result = platform.probe(&url, 1000).await;
        assert_eq!(
            result.failure,
            Some(FailureKind::TlsCertificate),
            "{result:?}"
        );
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn plain_http_still_works_and_other_failures_are_classified() {
    tokio::time::timeout(LIMIT, async {
        let prober = prober(&HealthConfig::default(), TIMEOUT);
        let plain = health_server(None).await;
        let result = prober
            .probe(&format!("http://127.0.0.1:{}/readyz", plain.port()), 1000)
            .await;
        assert!(result.ok, "{result:?}");
        assert_eq!(result.load, Some(0.25));

        // https:// to a plain-HTTP server: a TLS failure, not a certificate one.
        let result = prober
            .probe(&format!("https://127.0.0.1:{}/readyz", plain.port()), 1000)
            .await;
        assert_eq!(result.failure, Some(FailureKind::Tls), "{result:?}");

        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let result = prober
            .probe(&format!("https://127.0.0.1:{port}/readyz"), 1000)
            .await;
        assert_eq!(result.failure, Some(FailureKind::Connect), "{result:?}");

        // Accepts and never answers: the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/readyz",
            silent.local_addr().unwrap().port()
        );
        let quick = self::prober(&HealthConfig::default(), Duration::from_millis(200));
        let result = quick.probe(&url, 1000).await;
        assert_eq!(result.failure, Some(FailureKind::Timeout), "{result:?}");
        drop(silent);
    })
    .await
    .expect("test took too long");
}

/// One `GET` to the router's HTTP API: the body.
const ADMIN_TOKEN: &str = "https-probe-test-admin-token";

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The admin token: `/v1/regions` shows health error texts only to an operator.
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned())
}

#[tokio::test]
async fn a_router_marks_https_regions_up_or_down_by_their_certificates() {
    tokio::time::timeout(LIMIT, async {
        let scratch = Scratch::new("router");
        let ca = TestCa::new("Meridian test health CA");
        let ca_file = scratch.write("ca.pem", &ca.pem);
        let regions = scratch.0.join("regions");
        std::fs::create_dir_all(&regions).unwrap();
        // us-east has a good certificate; eu-central's is for another name.
        let cases = [
            ("us-east", 38.9, -77.0, ca.leaf(&["localhost"], false)),
            ("eu-central", 50.1, 8.7, ca.leaf(&["elsewhere.example"], false)),
        ];
        for (n, (name, lat, lon, leaf)) in cases.into_iter().enumerate() {
            let addr = health_server(Some(leaf)).await;
            let n = n + 1;
            std::fs::write(
                regions.join(format!("{name}.toml")),
                format!(
                    "name = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\ncapacity = 1000\n\
                     cloud = \"aws\"\ncloud_region = \"test-{n}\"\n\
                     [ingress]\naddresses = [\"127.0.1.{n}\"]\nws_url = \"wss://127.0.1.{n}/v1/ws\"\n\
                     health_url = \"https://localhost:{}/readyz\"\n\
                     [relay]\naddress = \"127.0.1.{n}:7400\"\n",
                    addr.port()
                ),
            )
            .unwrap();
        }
        let mut config = RouterConfig {
            regions,
            zone: "mesh.test.".into(),
            dns_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..RouterConfig::default()
        };
        config.health.interval_ms = 100;
        config.health.timeout_ms = 80;
        config.health.ca_file = Some(ca_file);
        config.controls.admin_tokens = vec![geo_router::config::AdminToken {
            actor: "test".into(),
            token: ADMIN_TOKEN.into(),
        }];
        config.validate().unwrap();
        let router = start(config).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        let regions = loop {
            let body = get(router.http_addr, "/v1/regions").await;
            let regions: serde_json::Value = serde_json::from_str(&body).unwrap();
            let health = |name: &str| {
                regions["regions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["name"] == name)
                    .map(|r| r["health"].clone())
            };
            if health("us-east") == Some("up".into()) && health("eu-central") == Some("down".into())
            {
                break regions;
            }
            assert!(Instant::now() < deadline, "regions never settled: {regions}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let eu = regions["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "eu-central")
            .unwrap();
        assert!(
            eu["last_error"].as_str().unwrap().contains("TLS certificate"),
            "{eu}"
        );
        let metrics = get(router.http_addr, "/metrics").await;
        let failures = metrics
            .lines()
            .find(|l| {
                l.starts_with("meridian_router_health_check_failures_total{")
                    && l.contains("region=\"eu-central\"")
                    && l.contains("reason=\"tls_certificate\"")
            })
            .unwrap_or_else(|| panic!("no certificate failures counted:\n{metrics}"));
        assert!(!failures.ends_with(" 0"), "{failures}");
        assert!(
            !metrics.contains("health_check_failures_total{region=\"us-east\""),
            "{metrics}"
        );
        router.stop(Duration::from_secs(5)).await;
    })
    .await
    .expect("test took too long");
}
