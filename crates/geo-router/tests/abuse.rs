//! Issue #20's attacks on a router started in-process (`service::start`) on loopback: RTT
//! reports that steer other clients, a flood of RTT networks, DNS floods over UDP and TCP,
//! operator notes leaking through `/v1/regions`, and the admin API on the public listener.
//! Sources are varied by binding client sockets to other loopback addresses (127.a.b.c), so
//! "another network" is a real other source address. Every wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use geo_router::config::{AdminToken, RouterConfig};
use geo_router::service::{start, RunningRouter};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TOKEN: &str = "abuse-test-admin-token-0123456789";
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
    dir: PathBuf,
    router: Option<RunningRouter>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn running(&self) -> &RunningRouter {
        self.router.as_ref().unwrap()
    }
    fn http(&self) -> SocketAddr {
        self.running().http_addr
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "geo-router-abuse-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

/// A router over three healthy regions, with `change` applied to its config.
async fn fixture(change: impl FnOnce(&mut RouterConfig, &std::path::Path)) -> Fixture {
    let dir = temp_dir("fixture");
    let regions = dir.join("regions");
    std::fs::create_dir_all(&regions).unwrap();
    for (n, (name, lat, lon)) in REGIONS.into_iter().enumerate() {
        let health = health_server().await;
        let n = n + 1;
        std::fs::write(
            regions.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\ncapacity = 1000\n\
                 cloud = \"aws\"\ncloud_region = \"test-{n}\"\n\
                 [ingress]\naddresses = [\"127.0.1.{n}\"]\nws_url = \"ws://127.0.1.{n}:7000/v1/ws\"\n\
                 health_url = \"http://{health}/readyz\"\n[relay]\naddress = \"127.0.1.{n}:7400\"\n"
            ),
        )
        .unwrap();
    }
    let mut config = RouterConfig {
        regions,
        zone: "mesh.test.".into(),
        dns_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        allow_debug_ip: true,
        ..RouterConfig::default()
    };
    config.health.interval_ms = 100;
    config.health.timeout_ms = 80;
    config.controls.admin_tokens = vec![AdminToken {
        actor: "sre-bob".into(),
        token: TOKEN.into(),
    }];
    change(&mut config, &dir);
    config.validate().unwrap();
    let router = start(config).await.unwrap();
    let f = Fixture {
        dir,
        router: Some(router),
    };
    // Every region probed and up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, regions) = json(f.http(), None, "GET", "/v1/regions", &[], "").await;
        let up = regions["regions"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["health"] == "up"));
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
    let exchange = async {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(source) = source {
            socket
                .bind(SocketAddr::new(IpAddr::V4(source), 0))
                .unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(body);
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = reply
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("HTTP request timed out")
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
