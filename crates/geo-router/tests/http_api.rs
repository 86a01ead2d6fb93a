//! The HTTP API of a router started in-process (`service::start`) on loopback: what the
//! end-to-end tests in `tests/tests/router.rs` leave out because their routers all allow `?ip=`
//! — the debug setting off, `/v1/regions` with the load health probes report, the process
//! endpoints, and the `weight` and `disable` admin actions with their errors. Every wait is
//! bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::start;
use geo_router::config::{AdminToken, RouterConfig};
use geo_router::service::RunningRouter;
use serde_json::Value;
use tokio::net::TcpListener;

const TOKEN: &str = "http-api-test-token-0123456789";
const LIMIT: Duration = Duration::from_secs(20);

/// (name, latitude, longitude, connections its health endpoint reports, or none).
const REGIONS: [(&str, f64, f64, Option<u64>); 3] = [
    ("us-east", 38.9072, -77.0369, Some(250)),
    ("eu-central", 50.1109, 8.6821, None),
    ("ap-southeast", 1.3521, 103.8198, Some(900)),
];

/// A health endpoint: `{"connections": N}` when the region reports load, else a plain "ok".
async fn health_server(connections: Option<u64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = match connections {
        Some(n) => format!("{{\"connections\": {n}}}"),
        None => "ok".to_owned(),
    };
    let app = axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
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
    fn http(&self) -> SocketAddr {
        self.router.as_ref().unwrap().http_addr
    }
    fn admin(&self) -> SocketAddr {
        self.router.as_ref().unwrap().admin_addr.unwrap()
    }
}

async fn fixture(allow_debug_ip: bool) -> Fixture {
    let dir = common::TestDir::new("http-api");
    for (n, (name, lat, lon, connections)) in REGIONS.into_iter().enumerate() {
        let health = health_server(connections).await;
        dir.write_region(n + 1, name, lat, lon, &format!("http://{health}/readyz"));
    }
    let mut config = RouterConfig {
        regions: dir.regions(),
        zone: "mesh.test.".into(),
        dns_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        allow_debug_ip,
        ..RouterConfig::default()
    };
    config.health.interval_ms = 100;
    config.health.timeout_ms = 80;
    config.controls.admin_tokens = vec![AdminToken {
        actor: "sre-bob".into(),
        token: TOKEN.into(),
    }];
    config.validate().unwrap();
    let router = start(config).await.unwrap();
    Fixture {
        _dir: dir,
        router: Some(router),
    }
}

/// One HTTP/1.1 request with the admin token: (status, body).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, reply) = request_raw(addr, method, path, body).await;
    (status, common::body(&reply))
}

/// One HTTP/1.1 request with the admin token: (status, the whole reply with its headers).
async fn request_raw(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let headers = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    common::exchange(addr, None, method, path, &headers, body).await
}

async fn json(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = request(addr, method, path, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn region<'a>(regions: &'a Value, name: &str) -> &'a Value {
    regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn debug_ip_is_refused_unless_allowed() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(false).await;
        for path in ["/v1/route?ip=81.20.3.1", "/v1/connect?ip=81.20.3.1"] {
            let (status, body) = json(f.http(), "GET", path, "").await;
            assert_eq!(status, 403, "{path}: {body}");
            assert_eq!(body["error"]["code"], "debug_ip_disabled", "{body}");
        }
        // Without ?ip= the socket peer routes (loopback: not in any database, default order).
        let (status, body) = json(f.http(), "GET", "/v1/route", "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["client"]["ip"], "127.0.0.1", "{body}");
        assert_eq!(body["regions"][0]["reason"], "default", "{body}");
        assert_eq!(body["regions"].as_array().map(Vec::len), Some(3));

        let allowed = fixture(true).await;
        let (status, body) = json(allowed.http(), "GET", "/v1/route?ip=81.20.3.1", "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["client"]["ip"], "81.20.3.1", "{body}");
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn process_endpoints_and_regions_report_health_load_and_controls() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(false).await;
        assert_eq!(request(f.http(), "GET", "/healthz", "").await.0, 200);
        assert_eq!(request(f.http(), "GET", "/readyz", "").await.0, 200);

        // Wait until every region has been probed and is up.
        let deadline = Instant::now() + Duration::from_secs(5);
        let regions = loop {
            let (status, regions) = json(f.http(), "GET", "/v1/regions", "").await;
            assert_eq!(status, 200, "{regions}");
            let probed = regions["regions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["last_check_ms"].is_u64() && r["health"] == "up");
            if probed {
                break regions;
            }
            assert!(Instant::now() < deadline, "regions never probed: {regions}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(regions["regions"].as_array().map(Vec::len), Some(3));
        // Load from the probe's body, divided by the catalogue's capacity; a 2xx without load
        // information is healthy with unknown load.
        assert_eq!(region(&regions, "us-east")["load"], 0.25, "{regions}");
        assert_eq!(region(&regions, "ap-southeast")["load"], 0.9, "{regions}");
        assert!(
            region(&regions, "eu-central")["load"].is_null(),
            "{regions}"
        );
        for r in regions["regions"].as_array().unwrap() {
            assert_eq!(r["capacity"], 1000);
            assert_eq!(r["control"]["state"], "active", "{r}");
            assert_eq!(r["control"]["weight"], 1.0, "{r}");
        }

        let (status, metrics) = request(f.http(), "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        for name in [
            "meridian_router_health_checks_total{",
            "meridian_router_region_healthy{",
            "meridian_router_region_load_permille{",
            "meridian_router_decision_seconds",
        ] {
            assert!(metrics.contains(name), "{name} missing:\n{metrics}");
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn weight_and_disable_are_applied_validated_and_kept_safe() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(false).await;
        let admin = |region: &str, action: &str| format!("/v1/admin/regions/{region}/{action}");

        let (status, body) = json(
            f.admin(),
            "POST",
            &admin("us-east", "weight"),
            r#"{"weight": 0.5, "note": "half"}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["applied"]["actor"], "sre-bob", "{body}");
        for bad in [
            r#"{"weight": 0}"#,
            r#"{"weight": 1.5}"#,
            r#"{"weight": -1}"#,
        ] {
            let (status, body) = json(f.admin(), "POST", &admin("us-east", "weight"), bad).await;
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert_eq!(body["error"]["code"], "bad_weight", "{bad:?}: {body}");
        }
        for bad in ["", r#"{"oops": 1}"#] {
            let (status, body) = json(f.admin(), "POST", &admin("us-east", "weight"), bad).await;
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert_eq!(body["error"]["code"], "bad_body", "{bad:?}: {body}");
        }

        let (status, body) = json(f.admin(), "POST", &admin("eu-central", "disable"), "").await;
        assert_eq!(status, 200, "{body}");
        let (_, regions) = json(f.http(), "GET", "/v1/regions", "").await;
        assert_eq!(region(&regions, "us-east")["control"]["weight"], 0.5);
        assert_eq!(region(&regions, "us-east")["control"]["note"], "half");
        assert_eq!(
            region(&regions, "eu-central")["control"]["state"],
            "disabled"
        );
        // A disabled region is not ranked at all.
        let (_, route) = json(f.http(), "GET", "/v1/route", "").await;
        let names: Vec<&str> = route["regions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(!names.contains(&"eu-central"), "{route}");

        // The safety rule: the last routable region cannot be taken away.
        let (status, _) = json(f.admin(), "POST", &admin("us-east", "drain"), "").await;
        assert_eq!(status, 200);
        let (status, body) = json(f.admin(), "POST", &admin("ap-southeast", "disable"), "").await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "unsafe", "{body}");

        let (status, audit) = json(f.admin(), "GET", "/v1/admin/audit?limit=10", "").await;
        assert_eq!(status, 200, "{audit}");
        let actions: Vec<&str> = audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert_eq!(actions, ["drain", "disable", "weight"], "{audit}");
    })
    .await
    .expect("test took too long");
}

/// The `Location` header of a reply, if any.
fn location(reply: &str) -> Option<&str> {
    reply
        .split("\r\n\r\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
}

/// A sample's value in the `/metrics` text, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `/v1/route` and `/v1/connect` answer repeat clients from a cache of rendered answers; a
/// control change (or a health change) must move the very next answer, and answers served from
/// the cache still count in the metrics.
#[tokio::test]
async fn cached_routing_answers_follow_controls_at_once_and_still_count() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(true).await;
        let route = "/v1/route?ip=81.20.3.1";
        let (status, first) = json(f.http(), "GET", route, "").await;
        assert_eq!(status, 200, "{first}");
        let winner = first["regions"][0]["name"].as_str().unwrap().to_owned();
        let winner_url = first["regions"][0]["ws_url"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let (status, again) = json(f.http(), "GET", route, "").await;
            assert_eq!(status, 200, "{again}");
            assert_eq!(again["regions"][0]["name"], winner.as_str(), "{again}");
        }
        let (status, reply) = request_raw(f.http(), "GET", "/v1/connect?ip=81.20.3.1", "").await;
        assert_eq!(status, 307, "{reply}");
        assert_eq!(location(&reply), Some(winner_url.as_str()), "{reply}");

        let (status, body) = json(
            f.admin(),
            "POST",
            &format!("/v1/admin/regions/{winner}/drain"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, moved) = json(f.http(), "GET", route, "").await;
        assert_eq!(status, 200, "{moved}");
        let next = moved["regions"][0]["name"].as_str().unwrap();
        assert_ne!(next, winner, "the drained region still wins: {moved}");
        let next_url = moved["regions"][0]["ws_url"].as_str().unwrap();
        let (status, reply) = request_raw(f.http(), "GET", "/v1/connect?ip=81.20.3.1", "").await;
        assert_eq!(status, 307, "{reply}");
        assert_eq!(location(&reply), Some(next_url), "{reply}");

        let (_, metrics) = request(f.http(), "GET", "/metrics", "").await;
        let counted = sample(
            &metrics,
            r#"meridian_router_http_requests_total{route="route",status="200"}"#,
        );
        assert_eq!(counted, 5.0, "every /v1/route request counts:\n{metrics}");
        let answers: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("meridian_router_answers_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            answers >= 7.0,
            "cached answers count in answers_total ({answers}):\n{metrics}"
        );
    })
    .await
    .expect("test took too long");
}

/// The routing requests skip the router only when they are plain: another method, or a query
/// string that does not parse, still gets the router's clear answer.
#[tokio::test]
async fn odd_routing_requests_get_the_routers_clear_errors() {
    tokio::time::timeout(LIMIT, async {
        let f = fixture(true).await;
        let (status, body) = request(f.http(), "GET", "/v1/route?ip=1.2.3.4&ip=5.6.7.8", "").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("duplicate field"), "{body}");
        let (status, body) = json(f.http(), "GET", "/v1/route?ip=not-an-ip", "").await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "bad_ip", "{body}");
        let (status, _) = request(f.http(), "POST", "/v1/route", "").await;
        assert_eq!(status, 405);
        let (status, _) = request(f.http(), "GET", "/v1/route/extra", "").await;
        assert_eq!(status, 404);
        // Unknown parameters are ignored, as before.
        let (status, body) = json(f.http(), "GET", "/v1/connect?ip=81.20.3.1&v=2", "").await;
        assert_eq!(status, 307, "{body}");
    })
    .await
    .expect("test took too long");
}
