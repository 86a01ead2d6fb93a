//! The drill's view of a mesh: the geo-router's HTTP API (`/v1/route`, `/v1/regions`, admin
//! routing controls), its DNS (`ws.<zone>` with an ECS subnet), and — on a local mesh — the
//! control API of `meridian up` (kill / drain / restart a region). Also the target resolution
//! shared with `meridian route`: `--state-dir` / `--endpoints` of a local mesh, or flags.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::up::Endpoints;

/// Reads `endpoints.json` from `--endpoints FILE` or `--state-dir DIR`, if either is given.
pub fn load_endpoints(
    endpoints: Option<&Path>,
    state_dir: Option<&Path>,
) -> Result<Option<Endpoints>> {
    let path: PathBuf = match (endpoints, state_dir) {
        (Some(p), _) => p.to_owned(),
        (None, Some(dir)) => dir.join("endpoints.json"),
        (None, None) => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is `meridian up` running with that --state-dir? (it writes \
             endpoints.json once the mesh is ready)",
            path.display()
        )
    })?;
    let endpoints: Endpoints = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an endpoints.json written by `meridian up`",
            path.display()
        )
    })?;
    Ok(Some(endpoints))
}

/// One region of a `/v1/route` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct RankedRegion {
    /// Region name.
    pub name: String,
    /// Where its clients connect.
    pub ws_url: String,
    /// The router's estimate.
    #[serde(default)]
    pub estimated_rtt_ms: f64,
    /// Why it is ranked so (`geo`, `rtt`, `drain`, `failover`, …).
    #[serde(default)]
    pub reason: String,
}

/// A `/v1/route` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteAnswer {
    /// Best first.
    pub regions: Vec<RankedRegion>,
    /// Every region is down: the answer is a least-bad one.
    #[serde(default)]
    pub all_down: bool,
    /// ECS scope the DNS would use for this client.
    #[serde(default)]
    pub scope: Option<u8>,
    /// The client as the router saw it (address, network, location).
    #[serde(default)]
    pub client: Value,
    /// The whole answer as the router sent it.
    #[serde(skip)]
    pub raw: Value,
}

/// One region of `/v1/regions`.
#[derive(Debug, Clone, Deserialize)]
pub struct RegionStatus {
    /// Region name.
    pub name: String,
    /// What DNS answers for it.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// What HTTP answers for it.
    #[serde(default)]
    pub ws_url: Option<String>,
    /// `up`, `down` or `unknown`.
    #[serde(default)]
    pub health: String,
    /// The routing control (`state`, `weight`, `drill`, …).
    #[serde(default)]
    pub control: Value,
}

impl RegionStatus {
    /// The routing control's state (`active`, `drained`, `disabled`).
    pub fn control_state(&self) -> &str {
        self.control["state"].as_str().unwrap_or("active")
    }
}

/// The CLI's HTTP client for the router's and `meridian up`'s APIs: reqwest over rustls
/// (`tls`: the trust to use for https; None: reqwest's, the platform roots). It talks to the
/// address given, never through an `HTTP_PROXY` from the environment, and follows no redirect.
pub fn http_client(tls: Option<rustls::ClientConfig>) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    let builder = match tls {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    };
    builder.build().context("building the HTTP client")
}

/// Sends `request` and reads the whole answer, `within` a deadline: (status, body). `what`
/// names the request in errors (`POST http://…/path`).
pub async fn http_call(
    request: reqwest::RequestBuilder,
    what: &str,
    within: Duration,
) -> Result<(u16, String)> {
    let work = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    match tokio::time::timeout(within, work).await {
        Ok(answer) => answer.with_context(|| format!("{what}: no answer")),
        Err(_) => bail!("{what}: no answer within {within:?}"),
    }
}

/// The router's admin listener: `http://HOST:PORT`, or `https://HOST:PORT` (its `admin_tls`),
/// trusting the platform's roots plus `ca` (a PEM file: the router's self-signed certificate or
/// your CA).
#[derive(Debug, Clone)]
pub struct AdminApi {
    authority: String,
    https: bool,
    http: reqwest::Client,
}

impl AdminApi {
    /// `base` is `http://HOST:PORT` or `https://HOST:PORT`; `ca` extra trust for https.
    pub fn new(base: &str, ca: Option<&Path>) -> Result<Self> {
        let (https, authority) = match base.split_once("://") {
            Some(("https", rest)) => (true, rest.trim_end_matches('/')),
            Some(("http", rest)) => (false, rest.trim_end_matches('/')),
            None => (false, base.trim_end_matches('/')),
            Some((scheme, _)) => bail!("--router-admin {base}: {scheme}:// is not http or https"),
        };
        if authority.is_empty() || authority.contains('/') {
            bail!("--router-admin {base}: give the router's admin address as http(s)://HOST:PORT");
        }
        let tls = if https {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            rustls::pki_types::ServerName::try_from(host.to_owned())
                .with_context(|| format!("--router-admin {base}: bad host name"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(ca) = ca {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("--router-admin-ca {}", ca.display()))?
                {
                    let cert =
                        cert.with_context(|| format!("--router-admin-ca {}", ca.display()))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("--router-admin-ca {}", ca.display()))?;
                }
            }
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(config)
        } else {
            None
        };
        Ok(Self {
            authority: authority.to_owned(),
            https,
            http: http_client(tls)?,
        })
    }

    /// The base URL.
    pub fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// `POST /v1/admin/regions/{region}/{action}` with `{"drill": true, "note": …}`, on the
    /// router's admin listener.
    pub async fn admin(&self, token: &str, region: &str, action: &str, note: &str) -> Result<()> {
        let path = format!("/v1/admin/regions/{region}/{action}");
        let url = format!("{}{path}", self.base());
        let request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({"drill": true, "note": note}));
        let hint = if self.https {
            " (is --router-admin-ca right?)"
        } else {
            ""
        };
        let (status, body) = http_call(request, &format!("POST {url}"), Duration::from_secs(5))
            .await
            .with_context(|| format!("POST {url}{hint}"))?;
        match status {
            200 => Ok(()),
            404 if body.contains("admin_not_here") => bail!(
                "POST {url}: this is the router's public port; give its admin_listen address \
                 (--router-admin)"
            ),
            401 => bail!(
                "POST {url}: 401: the admin token is wrong (--admin-token or \
                 MERIDIAN_ADMIN_TOKEN; a local mesh has it in endpoints.json)"
            ),
            403 => bail!("POST {url}: 403: the router has no admin tokens configured ({body})"),
            409 => bail!(
                "POST {url}: 409: the router refuses because no region would be left routable \
                 ({body})"
            ),
            _ => bail!("POST {url}: {status}: {body}"),
        }
    }
}

/// The geo-router's HTTP API.
#[derive(Debug, Clone)]
pub struct RouterApi {
    authority: String,
    http: reqwest::Client,
}

impl RouterApi {
    /// `base` is `http://host:port` or `host:port` (a trailing `/` is fine).
    pub fn new(base: &str) -> Result<Self> {
        let base = base.trim_end_matches('/');
        if base.starts_with("https://") {
            bail!(
                "--router {base}: only http:// is supported (the router's API is plain HTTP on \
                 its internal port, 8053 by default; reach it through a tunnel or from inside \
                 the network)"
            );
        }
        let authority = base.strip_prefix("http://").unwrap_or(base);
        if authority.is_empty() || authority.contains('/') {
            bail!("--router {base}: give the router's HTTP address as http://HOST:PORT");
        }
        Ok(Self {
            authority: authority.to_owned(),
            http: http_client(None)?,
        })
    }

    /// The base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.authority)
    }

    async fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base());
        http_call(
            self.http.get(&url),
            &format!("GET {url}"),
            Duration::from_secs(3),
        )
        .await
        .with_context(|| {
            format!(
                "GET {}{path}: is the geo-router running and is --router right?",
                self.base()
            )
        })
    }

    /// `GET /v1/route?ip=ADDR`: the ranked regions for a client at `ip`. An empty list means
    /// the router has no region to offer (503).
    pub async fn route(&self, ip: IpAddr) -> Result<RouteAnswer> {
        let (status, body) = self.get(&format!("/v1/route?ip={ip}")).await?;
        match status {
            200 => {
                let raw: Value = serde_json::from_str(&body)
                    .with_context(|| format!("unexpected /v1/route answer: {body}"))?;
                let mut answer: RouteAnswer = serde_json::from_value(raw.clone())
                    .with_context(|| format!("unexpected /v1/route answer: {body}"))?;
                answer.raw = raw;
                Ok(answer)
            }
            503 => Ok(RouteAnswer {
                regions: Vec::new(),
                all_down: true,
                scope: None,
                client: Value::Null,
                raw: serde_json::from_str(&body).unwrap_or(Value::Null),
            }),
            403 if body.contains("debug_ip_disabled") => bail!(
                "the router refuses ?ip= (allow_debug_ip = false). Set allow_debug_ip = true on \
                 the router the drill talks to (a dedicated instance is fine): the drill places \
                 its synthetic clients with it"
            ),
            _ => bail!("/v1/route?ip={ip} answered {status}: {body}"),
        }
    }

    /// `GET /v1/regions`.
    pub async fn regions(&self) -> Result<Vec<RegionStatus>> {
        let (status, body) = self.get("/v1/regions").await?;
        if status != 200 {
            bail!("/v1/regions answered {status}: {body}");
        }
        let parsed: Value = serde_json::from_str(&body)
            .with_context(|| format!("bad /v1/regions answer: {body}"))?;
        serde_json::from_value(parsed["regions"].clone())
            .with_context(|| format!("bad /v1/regions answer: {body}"))
    }
}

/// `meridian up`'s control API (kill / drain / restart a region's processes).
#[derive(Debug, Clone)]
pub struct ControlApi {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl ControlApi {
    /// The API at `addr` (from endpoints.json).
    pub fn new(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            addr,
            http: http_client(None)?,
        })
    }

    /// `POST /regions/<region>/<action>`; returns the answer text.
    pub async fn call(&self, region: &str, action: &str) -> Result<String> {
        let path = format!("/regions/{region}/{action}");
        let url = format!("http://{}{path}", self.addr);
        let (status, body) = http_call(
            self.http.post(&url),
            &format!("POST {url}"),
            Duration::from_secs(120),
        )
        .await
        .with_context(|| {
            format!(
                "POST http://{}{path}: is the `meridian up` that wrote endpoints.json still running?",
                self.addr
            )
        })?;
        if status != 200 {
            bail!("POST http://{}{path}: {status}: {body}", self.addr);
        }
        Ok(body)
    }
}

/// The A (or AAAA) answer for `qname` from `server`, with an ECS option for `subnet` when
/// given; `Ok(None)` for an answer without addresses (NODATA, SERVFAIL, …).
pub async fn dns_addresses(
    server: SocketAddr,
    qname: &str,
    subnet: Option<(IpAddr, u8)>,
) -> Result<Vec<IpAddr>> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};
    let record_type = match subnet {
        Some((IpAddr::V6(_), _)) => RecordType::AAAA,
        _ => RecordType::A,
    };
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_utf8(qname).with_context(|| format!("bad DNS name {qname}"))?,
        record_type,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some((address, prefix)) = subnet {
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(address, prefix, 0)));
    }
    message.set_edns(edns);
    let bytes = message.to_vec().context("encoding a DNS query")?;
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.send_to(&bytes, server).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| anyhow!("no DNS answer from {server} within 2 s (is --dns right?)"))??;
        if from != server {
            continue;
        }
        let response = Message::from_vec(buf.get(..n).unwrap_or_default())
            .with_context(|| format!("bad DNS answer from {server}"))?;
        if response.metadata.id != id {
            continue;
        }
        return Ok(response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect());
    }
}

/// `ws.<zone>` as a DNS name (the zone may come with or without its final dot).
pub fn ws_name(zone: &str) -> String {
    format!("ws.{}", zone.trim_end_matches('.')) + "."
}

/// The network (`a.b.c.0/24`, `…/48`) a client address is in, for an ECS option.
pub fn client_network(ip: IpAddr) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            (IpAddr::from([a, b, c, 0]), 24)
        }
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            for o in octets.iter_mut().skip(6) {
                *o = 0;
            }
            (IpAddr::from(octets), 48)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_http_or_https_with_an_optional_ca() {
        let plain = AdminApi::new("http://127.0.0.1:8054/", None).unwrap();
        assert_eq!(plain.base(), "http://127.0.0.1:8054");
        let tls = AdminApi::new("https://router.example.net:8054", None).unwrap();
        assert_eq!(tls.base(), "https://router.example.net:8054");
        for bad in ["ftp://x:1", "https://", "http://x:1/v1/admin"] {
            assert!(AdminApi::new(bad, None).is_err(), "{bad}");
        }
        let missing = AdminApi::new("https://x:1", Some(Path::new("/nonexistent/ca.pem")));
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("--router-admin-ca"),
            "names the flag"
        );
    }

    #[test]
    fn names_and_networks() {
        assert_eq!(ws_name("mesh.localhost."), "ws.mesh.localhost.");
        assert_eq!(ws_name("mesh.localhost"), "ws.mesh.localhost.");
        assert_eq!(
            client_network("81.20.3.1".parse().unwrap()),
            ("81.20.3.0".parse().unwrap(), 24)
        );
        assert_eq!(
            client_network("2001:db8:600::1".parse().unwrap()),
            ("2001:db8:600::".parse().unwrap(), 48)
        );
        assert!(RouterApi::new("https://router").is_err());
        assert_eq!(
            RouterApi::new("127.0.0.1:8053/").unwrap().base(),
            "http://127.0.0.1:8053"
        );
    }

    /// A chunked answer is read whole (the router streams some answers). The server here is a
    /// raw socket on purpose: it writes the chunked encoding byte for byte.
    #[tokio::test]
    async fn chunked_answers_are_read_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap();
        });
        let client = http_client(None).unwrap();
        let answer = http_call(
            client.get(format!("http://{addr}/v1/regions")),
            "GET /v1/regions",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(answer, (200, "abcde".to_owned()));
    }
}
