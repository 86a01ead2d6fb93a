//! Issue #20's attacks on a router started in-process (`service::start`) on loopback: RTT
//! reports that steer other clients, a flood of RTT networks, DNS floods over UDP and TCP,
//! operator notes leaking through `/v1/regions`, and the admin API on the public listener.
//! Sources are varied by binding client sockets to other loopback addresses (127.a.b.c), so
//! "another network" is a real other source address. Every wait is bounded.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::start;
use geo_router::config::{AdminTls, AdminToken, RouterConfig, Secret};
use geo_router::service::RunningRouter;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const TOKEN: &str = "abuse-test-admin-token-0123456789";
const REPORT_KEY: &str = "abuse-test-report-key-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(60);

const REGIONS: [(&str, f64, f64); 3] = [
    ("us-east", 38.9072, -77.0369),
    ("eu-central", 50.1109, 8.6821),
    ("ap-southeast", 1.3521, 103.8198),
];

async fn health_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/readyz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

struct Fixture {
    _dir: common::TestDir,
    router: Option<RunningRouter>,
}

impl Fixture {
    fn running(&self) -> &RunningRouter {
        self.router.as_ref().unwrap()
    }
    fn http(&self) -> SocketAddr {
        self.running().http_addr
    }
}

/// A router over three healthy regions, with `change` applied to its config.
async fn fixture(change: impl FnOnce(&mut RouterConfig, &std::path::Path)) -> Fixture {
    let dir = common::TestDir::new("abuse");
    // A fourth region whose health endpoint refuses connections: down, with an error text.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    dir.write_region(9, "sa-east", -23.5, -46.6, &format!("http://{dead}/readyz"));
    for (n, (name, lat, lon)) in REGIONS.into_iter().enumerate() {
        let health = health_server().await;
        dir.write_region(n + 1, name, lat, lon, &format!("http://{health}/readyz"));
    }
    let mut config = RouterConfig {
        regions: dir.regions(),
        zone: "mesh.test.".into(),
        dns_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        allow_debug_ip: true,
        ..RouterConfig::default()
    };
    config.health.interval_ms = 100;
    config.health.timeout_ms = 80;
    config.controls.admin_tokens = vec![AdminToken {
        actor: "sre-bob".into(),
        token: TOKEN.into(),
    }];
    config.rtt.report_key = Some(Secret(REPORT_KEY.into()));
    change(&mut config, &dir.0);
    config.validate().unwrap();
    let router = start(config).await.unwrap();
    let f = Fixture {
        _dir: dir,
        router: Some(router),
    };
    // Every region probed and up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, regions) = json(f.http(), None, "GET", "/v1/regions", &[], "").await;
        let up = regions["regions"].as_array().is_some_and(|r| {
            r.iter()
                .all(|r| r["health"] == if r["name"] == "sa-east" { "down" } else { "up" })
        });
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "regions never up: {regions}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f
}

/// One HTTP/1.1 request with `Connection: close` from `source` (a loopback address; `None`:
/// 127.0.0.1): (status, body).
async fn request(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut lines = String::from("Content-Type: application/json\r\n");
    for (name, value) in headers {
        lines.push_str(&format!("{name}: {value}\r\n"));
    }
    let (status, reply) = common::exchange(addr, source, method, path, &lines, body).await;
    (status, common::body(&reply))
}

async fn json(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let (status, text) = request(addr, source, method, path, headers, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The winning region for a client at `ip`.
async fn winner(f: &Fixture, ip: &str) -> String {
    let (status, body) = json(
        f.http(),
        None,
        "GET",
        &format!("/v1/route?ip={ip}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["regions"][0]["name"].as_str().unwrap().to_owned()
}

/// The region a test tries to steer clients to: not the current winner.
fn other_than(winner: &str) -> &'static str {
    if winner == "eu-central" {
        "ap-southeast"
    } else {
        "eu-central"
    }
}

fn fake_samples(region: &str, n: usize) -> String {
    let rtts: Vec<String> = (0..n)
        .map(|_| format!("{{\"region\": \"{region}\", \"rtt_ms\": 0.01}}"))
        .collect();
    format!("{{\"rtts\": [{}]}}", rtts.join(", "))
}

/// Issue #20 item 3, as found: 16 fake samples posted without any credential from one address
/// moved another client's answer. They must be refused and move nothing.
#[tokio::test]
async fn unauthenticated_fake_samples_move_no_one() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|_, _| {}).await;
        let neighbour = "127.0.0.77";
        let before = winner(&f, neighbour).await;
        let target = other_than(&before);
        let (status, body) = request(
            f.http(),
            Some(Ipv4Addr::new(127, 0, 0, 1)),
            "POST",
            "/v1/rtt",
            &[],
            &fake_samples(target, 16),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("bad_rtt_token"), "{body}");
        assert_eq!(winner(&f, neighbour).await, before);
        assert_eq!(f.running().state.rtt.len(), 0);
    })
    .await
    .expect("test took too long");
}

/// Issue #20 item 3, as found: one client created thousands of RTT networks by sending from
/// many source addresses. Without a report token nothing is recorded at all.
#[tokio::test]
async fn thousands_of_unauthenticated_networks_are_not_created() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|_, _| {}).await;
        let mut refused = 0;
        for n in 0..2000u32 {
            let source = Ipv4Addr::new(127, 10 + (n / 250) as u8, (n % 250) as u8, 1);
            let (status, _) = request(
                f.http(),
                Some(source),
                "POST",
                "/v1/rtt",
                &[],
                &fake_samples("eu-central", 1),
            )
            .await;
            if status != 204 {
                refused += 1;
            }
        }
        assert_eq!(refused, 2000);
        assert_eq!(f.running().state.rtt.len(), 0);
    })
    .await
    .expect("test took too long");
}

/// The `rtt_report` token `/v1/route` gives a client asking from `source`.
async fn report_token(f: &Fixture, source: Ipv4Addr) -> String {
    let (status, body) = json(f.http(), Some(source), "GET", "/v1/route", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let report = &body["rtt_report"];
    assert_eq!(report["expires_in_s"], 540, "{body}");
    let regions = report["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 4, "{body}");
    assert!(
        regions
            .iter()
            .any(|r| r["name"] == "eu-central" && r["probe_url"] == "http://127.0.1.2:7000/healthz"),
        "{body}"
    );
    report["token"].as_str().unwrap().to_owned()
}

fn signed_samples(token: &str, region: &str, n: usize) -> String {
    let rtts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{\"region\": \"{region}\", \"rtt_ms\": {}}}",
                0.01 + i as f64
            )
        })
        .collect();
    format!(
        "{{\"token\": \"{token}\", \"rtts\": [{}]}}",
        rtts.join(", ")
    )
}

/// A real client's token counts for its own network only: from another network it is refused,
/// altered it is refused, and it moves only its own network's answer.
#[tokio::test]
async fn a_report_token_counts_only_for_its_own_network() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|_, _| {}).await;
        let reporter = Ipv4Addr::new(127, 0, 0, 1);
        let token = report_token(&f, reporter).await;
        let neighbour = "127.0.9.77";
        let before_neighbour = winner(&f, neighbour).await;
        let before_own = winner(&f, "127.0.0.77").await;
        let target = other_than(&before_own);
        // The tag's last hex digit changed: always to another digit (a fixed '0' left one
        // token in 16 unforged, and the test failed for that token's minute).
        let flipped = if token.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{flipped}", &token[..token.len() - 1]);
        assert_ne!(forged, token);

        // Missing, forged and stolen tokens.
        let cases = [
            (Some(reporter), fake_samples(target, 1), "missing"),
            (Some(reporter), signed_samples(&forged, target, 1), "forged"),
            (
                Some(Ipv4Addr::new(127, 0, 9, 1)),
                signed_samples(&token, target, 1),
                "another network",
            ),
        ];
        for (source, body, case) in cases {
            let (status, reply) = request(f.http(), source, "POST", "/v1/rtt", &[], &body).await;
            assert_eq!(status, 401, "{case}: {reply}");
            assert!(reply.contains("bad_rtt_token"), "{case}: {reply}");
        }
        assert_eq!(f.running().state.rtt.len(), 0);
        // Sixteen samples for one region in one report: refused as a whole.
        let (status, reply) = request(
            f.http(),
            Some(reporter),
            "POST",
            "/v1/rtt",
            &[],
            &signed_samples(&token, target, 16),
        )
        .await;
        assert_eq!(status, 400, "{reply}");
        assert!(reply.contains("measured twice"), "{reply}");

        // Valid, from another address of the same /24: counts for that /24 only (once it has
        // policy.min_rtt_samples = 10 samples, one per report).
        let body = signed_samples(&token, target, 1);
        for _ in 0..10 {
            let (status, reply) = request(
                f.http(),
                Some(Ipv4Addr::new(127, 0, 0, 5)),
                "POST",
                "/v1/rtt",
                &[],
                &body,
            )
            .await;
            assert_eq!(status, 204, "{reply}");
        }
        assert_eq!(f.running().state.rtt.len(), 1);
        assert_eq!(
            winner(&f, "127.0.0.77").await,
            target,
            "own network follows"
        );
        assert_eq!(winner(&f, neighbour).await, before_neighbour);
    })
    .await
    .expect("test took too long");
}

/// Reports are rate limited per source address.
#[tokio::test]
async fn reports_are_rate_limited_per_source() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|config, _| config.rtt.source_reports_per_min = 3).await;
        let source = Ipv4Addr::new(127, 0, 0, 1);
        let token = report_token(&f, source).await;
        let body = signed_samples(&token, "eu-central", 1);
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(
                request(f.http(), Some(source), "POST", "/v1/rtt", &[], &body)
                    .await
                    .0,
            );
        }
        assert_eq!(statuses, [204, 204, 204, 429, 429]);
        // Another address has its own budget.
        let other = Ipv4Addr::new(127, 0, 0, 2);
        let (status, reply) = request(f.http(), Some(other), "POST", "/v1/rtt", &[], &body).await;
        assert_eq!(status, 204, "{reply}");
    })
    .await
    .expect("test took too long");
}

/// Real clients in many networks: the table stays within its bound by evicting the network
/// updated least recently, and keeps taking new networks.
#[tokio::test]
async fn many_real_networks_keep_the_table_bounded_with_eviction() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|config, _| config.rtt.max_prefixes = 50).await;
        for n in 0..300u32 {
            let source = Ipv4Addr::new(127, 20 + (n / 250) as u8, (n % 250) as u8, 1);
            let token = report_token(&f, source).await;
            let (status, reply) = request(
                f.http(),
                Some(source),
                "POST",
                "/v1/rtt",
                &[],
                &signed_samples(&token, "eu-central", 1),
            )
            .await;
            assert_eq!(status, 204, "{n}: {reply}");
        }
        let state = &f.running().state;
        assert_eq!(state.rtt.len(), 50);
        let now = Instant::now();
        assert!(
            state.rtt.lookup("127.21.49.1".parse().unwrap(), now).len() == 1,
            "newest kept"
        );
        assert!(
            state
                .rtt
                .lookup("127.20.0.1".parse().unwrap(), now)
                .is_empty(),
            "oldest evicted"
        );
        let (_, metrics) = request(f.http(), None, "GET", "/metrics", &[], "").await;
        assert!(
            metrics.contains("meridian_router_rtt_reports_total{result=\"evicted_network\"} 250"),
            "{metrics}"
        );
    })
    .await
    .expect("test took too long");
}

/// `/v1/regions` shows operators' notes, actors and health errors only with an admin token; the
/// admin API is served on its own listener and not on the public one.
#[tokio::test]
async fn notes_and_errors_are_redacted_and_admin_lives_on_its_own_listener() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|_, _| {}).await;
        let admin = f.running().admin_addr.unwrap();
        assert_ne!(admin, f.http());
        let auth = format!("Bearer {TOKEN}");
        let note = r#"{"note": "ticket OPS-4711: db-7.internal.example failing"}"#;
        let drain = "/v1/admin/regions/us-east/drain";
        // Not on the public listener, even with the token.
        let (status, body) = json(
            f.http(),
            None,
            "POST",
            drain,
            &[("Authorization", &auth)],
            note,
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "admin_not_here", "{body}");
        let (status, _) = json(
            f.http(),
            None,
            "GET",
            "/v1/admin/audit",
            &[("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(status, 404);
        // On the admin listener.
        let (status, body) = json(admin, None, "POST", drain, &[], note).await;
        assert_eq!(status, 401, "{body}");
        let (status, body) = json(
            admin,
            None,
            "POST",
            drain,
            &[("Authorization", &auth)],
            note,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = json(
            admin,
            None,
            "GET",
            "/v1/admin/audit",
            &[("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");

        let find = |regions: &Value, name: &str| {
            regions["regions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap()
        };
        let (_, public) = json(f.http(), None, "GET", "/v1/regions", &[], "").await;
        assert_eq!(public["redacted"], true, "{public}");
        let us = find(&public, "us-east");
        assert_eq!(us["control"]["state"], "drained", "{public}");
        assert!(us["control"]["note"].is_null(), "{public}");
        assert!(us["control"]["actor"].is_null(), "{public}");
        assert!(find(&public, "sa-east")["last_error"].is_null(), "{public}");
        assert!(!public.to_string().contains("OPS-4711"), "{public}");

        for addr in [f.http(), admin] {
            let (_, full) = json(
                addr,
                None,
                "GET",
                "/v1/regions",
                &[("Authorization", &auth)],
                "",
            )
            .await;
            assert_eq!(full["redacted"], false, "{full}");
            let us = find(&full, "us-east");
            assert!(
                us["control"]["note"].as_str().unwrap().contains("OPS-4711"),
                "{full}"
            );
            assert_eq!(us["control"]["actor"], "sre-bob", "{full}");
            assert!(find(&full, "sa-east")["last_error"].is_string(), "{full}");
        }
        // A wrong token gets the redacted view.
        let (_, wrong) = json(
            f.http(),
            None,
            "GET",
            "/v1/regions",
            &[("Authorization", "Bearer not-the-token-0123456789")],
            "",
        )
        .await;
        assert_eq!(wrong["redacted"], true, "{wrong}");
    })
    .await
    .expect("test took too long");
}

/// The admin listener over TLS: a client trusting the configured certificate can drain; plain
/// HTTP on that port gets nothing.
#[tokio::test]
async fn the_admin_listener_serves_tls() {
    tokio::time::timeout(LIMIT, async {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = certified.cert.pem();
        let f = fixture(|config, dir| {
            let cert = dir.join("admin.crt");
            let key = dir.join("admin.key");
            std::fs::write(&cert, &cert_pem).unwrap();
            std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
            config.admin_tls = Some(AdminTls { cert, key });
        })
        .await;
        let admin = f.running().admin_addr.unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let tcp = TcpStream::connect(admin).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let body = r#"{"note": "tls drill"}"#;
        tls.write_all(
            format!(
                "POST /v1/admin/regions/us-east/drain HTTP/1.1\r\nHost: localhost\r\n\
                 Connection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

        // Plain HTTP to the TLS port: no HTTP answer.
        let mut plain = TcpStream::connect(admin).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut reply)).await;
        assert!(!String::from_utf8_lossy(&reply).contains("200 OK"));
    })
    .await
    .expect("test took too long");
}

/// A `ws.mesh.test` A query with ID `id`.
fn ws_query(id: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["ws", "mesh", "test"] {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// (TC set, answer count) of a response.
fn tc_and_answers(response: &[u8]) -> (bool, u16) {
    (
        response[2] & 0x02 != 0,
        u16::from_be_bytes([response[6], response[7]]),
    )
}

async fn udp_exchange(socket: &UdpSocket, server: SocketAddr, query: &[u8]) -> Vec<u8> {
    socket.send_to(query, server).await.unwrap();
    let mut buffer = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .expect("a DNS response in time")
        .unwrap();
    buffer.truncate(n);
    buffer
}

/// UDP responses are limited per /24: over the budget a source gets TC=1 replies no bigger than
/// its queries (and retries over TCP, which answers); another network is unaffected.
#[tokio::test]
async fn dns_over_udp_is_rate_limited_per_network_with_truncated_replies() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|config, _| {
            config.dns_limits.rate_per_s = 1;
            config.dns_limits.burst = 5;
        })
        .await;
        let server = f.running().dns_addr;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut full = 0;
        let mut truncated = 0;
        for id in 0..20u16 {
            let query = ws_query(id);
            let response = udp_exchange(&socket, server, &query).await;
            assert_eq!(response[..2], id.to_be_bytes());
            match tc_and_answers(&response) {
                (false, n) if n > 0 => full += 1,
                (true, 0) => {
                    truncated += 1;
                    assert!(response.len() <= query.len());
                    assert_eq!(response[12..], query[12..], "the question is echoed");
                }
                other => panic!("unexpected response {other:?}"),
            }
        }
        assert!((5..=6).contains(&full), "{full} full answers");
        assert_eq!(full + truncated, 20);
        // Same /24, another address: the same bucket.
        let neighbour = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        assert!(tc_and_answers(&udp_exchange(&neighbour, server, &ws_query(99)).await).0);
        // Another network: its own bucket.
        let other = UdpSocket::bind("127.0.5.1:0").await.unwrap();
        assert_eq!(
            tc_and_answers(&udp_exchange(&other, server, &ws_query(100)).await),
            (false, 1)
        );
        // The truncated client retries over TCP and gets its answer.
        let response = tcp_exchange(server, Ipv4Addr::new(127, 0, 0, 1), &ws_query(101)).await;
        assert_eq!(tc_and_answers(&response.unwrap()), (false, 1));
        let (_, metrics) = request(f.http(), None, "GET", "/metrics", &[], "").await;
        assert!(
            metrics.contains("meridian_router_dns_limited_total{action=\"truncated\"}"),
            "{metrics}"
        );
    })
    .await
    .expect("test took too long");
}

async fn tcp_connect_from(server: SocketAddr, source: Ipv4Addr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// One length-framed query over a new TCP connection from `source`; `None` when the server
/// closes the connection without answering.
async fn tcp_exchange(server: SocketAddr, source: Ipv4Addr, query: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = tcp_connect_from(server, source).await;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.ok()?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.ok()?;
        let mut response = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut response).await.ok()?;
        Some(response)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("TCP exchange in time")
}

/// 256 silent TCP connections from one network hold only that network's share of the slots:
/// other networks are still answered over TCP, and that network's next connection is closed.
#[tokio::test]
async fn silent_tcp_connections_from_one_network_do_not_hold_every_slot() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(|_, _| {}).await;
        let server = f.running().dns_addr;
        let mut silent = Vec::new();
        for n in 0..256u32 {
            silent.push(
                tcp_connect_from(server, Ipv4Addr::new(127, 0, 0, 1 + (n % 200) as u8)).await,
            );
        }
        // The refused ones are closed by the server: wait until the metric says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, metrics) = request(f.http(), None, "GET", "/metrics", &[], "").await;
            if metrics.contains("meridian_router_dns_limited_total{action=\"tcp_refused\"} 224") {
                break;
            }
            assert!(Instant::now() < deadline, "{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answered = tcp_exchange(server, Ipv4Addr::new(127, 0, 8, 1), &ws_query(7)).await;
        assert_eq!(
            tc_and_answers(&answered.expect("another network is answered")),
            (false, 1)
        );
        assert!(
            tcp_exchange(server, Ipv4Addr::new(127, 0, 0, 250), &ws_query(8))
                .await
                .is_none(),
            "the flooding network's next connection is closed"
        );
        drop(silent);
    })
    .await
    .expect("test took too long");
}

/// A certificate or key that does not load stops the start with a line naming the file.
#[tokio::test]
async fn a_bad_admin_certificate_stops_the_start_with_a_clear_error() {
    let scratch = common::TestDir::new("abuse-bad-tls");
    let dir = &scratch.0;
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let regions = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../regions"));
    for (cert, key, expected) in [
        (
            dir.join("missing.crt"),
            dir.join("missing.key"),
            "missing.crt",
        ),
        (garbage.clone(), garbage.clone(), "no certificate"),
    ] {
        let config = RouterConfig {
            regions: regions.clone(),
            zone: "mesh.test.".into(),
            dns_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_tls: Some(AdminTls { cert, key }),
            ..RouterConfig::default()
        };
        config.validate().unwrap();
        let error = start(config).await.unwrap_err().to_string();
        assert!(
            error.contains("admin_tls") && error.contains(expected),
            "{error}"
        );
    }
}

#[test]
fn probe_urls_follow_the_ws_url_scheme_and_host() {
    use geo_router::http::probe_url;
    assert_eq!(
        probe_url("ws://127.0.0.1:7301/v1/ws"),
        "http://127.0.0.1:7301/healthz"
    );
    assert_eq!(
        probe_url("wss://eu.mesh.example.net/v1/ws?x=1"),
        "https://eu.mesh.example.net/healthz"
    );
    assert_eq!(
        probe_url("wss://[2001:db8::1]:443/v1/ws"),
        "https://[2001:db8::1]:443/healthz"
    );
}
