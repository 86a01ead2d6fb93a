//! CORS on the public routing endpoints (`/v1/route`, `/v1/connect`, `/v1/rtt`): a web app on
//! another origin can ask for its route and report RTTs; admin and status endpoints never get
//! CORS headers. Config `http.cors_origins` (default `["*"]`).

use std::net::SocketAddr;
use std::time::Duration;

use geo_router::config::{AdminToken, RouterConfig};
use geo_router::service::{start, RunningRouter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "cors-test-admin-token-0123456789";

struct Fixture {
    dir: std::path::PathBuf,
    router: Option<RunningRouter>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn router(cors_origins: Option<Vec<String>>) -> Fixture {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("geo-router-cors-{}-{nanos}", std::process::id()));
    let regions = dir.join("regions");
    std::fs::create_dir_all(&regions).unwrap();
    std::fs::write(
        regions.join("eu-central.toml"),
        "name = \"eu-central\"\nlatitude = 50.1\nlongitude = 8.7\ncapacity = 1000\n\
         cloud = \"aws\"\ncloud_region = \"test-1\"\n\
         [ingress]\naddresses = [\"127.0.1.1\"]\nws_url = \"ws://127.0.1.1:7000/v1/ws\"\n\
         health_url = \"http://127.0.0.1:9/readyz\"\n[relay]\naddress = \"127.0.1.1:7400\"\n",
    )
    .unwrap();
    let mut config = RouterConfig {
        regions,
        zone: "mesh.test.".into(),
        dns_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RouterConfig::default()
    };
    if let Some(origins) = cors_origins {
        config.http.cors_origins = origins;
    }
    config.controls.admin_tokens = vec![AdminToken {
        actor: "sre".into(),
        token: TOKEN.into(),
    }];
    config.validate().unwrap();
    Fixture {
        dir,
        router: Some(start(config).await.unwrap()),
    }
}

/// One request: (status, lower-cased head, body).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let head = reply
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        (status, head)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("HTTP request timed out")
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test]
async fn routing_endpoints_send_cors_headers_and_answer_preflights_admin_never() {
    let f = router(None).await;
    let http = f.router.as_ref().unwrap().http_addr;
    let origin = "Origin: http://app.example.com\r\n";

    // Simple GETs from another origin: allowed for any origin by default.
    let (status, head) = send(http, "GET", "/v1/route", origin, "").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    let (status, head) = send(http, "GET", "/v1/connect", origin, "").await;
    assert_eq!(status, 307, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    // An error answer carries the header too, so the app can read the error.
    let (status, head) = send(http, "GET", "/v1/route?ip=nope", origin, "").await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));

    // Preflight of the JSON POST to /v1/rtt.
    let (status, head) = send(
        http,
        "OPTIONS",
        "/v1/rtt",
        "Origin: http://app.example.com\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type\r\n",
        "",
    )
    .await;
    assert_eq!(status, 204, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    assert!(header(&head, "access-control-allow-methods").is_some_and(|m| m.contains("post")));
    assert!(
        header(&head, "access-control-allow-headers").is_some_and(|h| h.contains("content-type"))
    );
    let (status, head) = send(
        http,
        "POST",
        "/v1/rtt",
        "Origin: http://app.example.com\r\nContent-Type: application/json\r\n",
        r#"{"rtts":[{"region":"eu-central","rtt_ms":12.5}]}"#,
    )
    .await;
    assert!(status == 204 || status == 401, "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));

    // Without Origin (not a browser on another origin): no CORS headers.
    let (_, head) = send(http, "GET", "/v1/route", "", "").await;
    assert_eq!(header(&head, "access-control-allow-origin"), None);

    // Admin and status endpoints never.
    let auth = format!("Origin: http://app.example.com\r\nAuthorization: Bearer {TOKEN}\r\n");
    for (method, path) in [
        ("GET", "/v1/admin/audit"),
        ("OPTIONS", "/v1/admin/regions/eu-central/drain"),
        ("GET", "/v1/regions"),
        ("GET", "/metrics"),
    ] {
        let (status, head) = send(http, method, path, &auth, "").await;
        assert_ne!(status, 204, "{method} {path}: {head}");
        assert_eq!(
            header(&head, "access-control-allow-origin"),
            None,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_list_of_origins_echoes_only_listed_ones() {
    let f = router(Some(vec!["http://good.example".into()])).await;
    let http = f.router.as_ref().unwrap().http_addr;
    let (status, head) = send(
        http,
        "GET",
        "/v1/route",
        "Origin: http://good.example\r\n",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("http://good.example")
    );
    assert!(header(&head, "vary").is_some_and(|v| v.contains("origin")));
    let (_, head) = send(
        http,
        "GET",
        "/v1/route",
        "Origin: http://evil.example\r\n",
        "",
    )
    .await;
    assert_eq!(header(&head, "access-control-allow-origin"), None);
    let (status, head) = send(
        http,
        "OPTIONS",
        "/v1/route",
        "Origin: http://evil.example\r\nAccess-Control-Request-Method: GET\r\n",
        "",
    )
    .await;
    assert_ne!(status, 204);
    assert_eq!(header(&head, "access-control-allow-origin"), None);

    // An empty list turns CORS off.
    let off = router(Some(Vec::new())).await;
    let http = off.router.as_ref().unwrap().http_addr;
    let (_, head) = send(
        http,
        "GET",
        "/v1/route",
        "Origin: http://good.example\r\n",
        "",
    )
    .await;
    assert_eq!(header(&head, "access-control-allow-origin"), None);
}

#[test]
fn malformed_cors_origins_are_refused_with_the_key_named() {
    for bad in [
        vec!["*".to_owned(), "http://a.example".to_owned()],
        vec!["http://a.example/".to_owned()],
        vec!["a.example".to_owned()],
        vec!["http://a.example/path".to_owned()],
    ] {
        let mut config = RouterConfig::default();
        config.http.cors_origins = bad.clone();
        let err = config.validate().expect_err("must be refused").to_string();
        assert!(err.contains("http.cors_origins"), "{bad:?}: {err}");
    }
}
