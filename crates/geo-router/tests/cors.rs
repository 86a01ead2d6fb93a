//! CORS on the public routing endpoints (`/v1/route`, `/v1/connect`, `/v1/rtt`): a web app on
//! another origin can ask for its route and report RTTs; admin and status endpoints never get
//! CORS headers. Config `http.cors_origins` (default `["*"]`).

mod common;

use std::net::SocketAddr;

use common::start;
use geo_router::config::{AdminToken, RouterConfig};
use geo_router::service::RunningRouter;

const TOKEN: &str = "cors-test-admin-token-0123456789";

struct Fixture {
    _dir: common::TestDir,
    router: Option<RunningRouter>,
}

async fn router(cors_origins: Option<Vec<String>>) -> Fixture {
    let dir = common::TestDir::new("cors");
    dir.write_region(1, "eu-central", 50.1, 8.7, "http://127.0.0.1:9/readyz");
    let mut config = RouterConfig {
        regions: dir.regions(),
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
        _dir: dir,
        router: Some(start(config).await.unwrap()),
    }
}

/// One request with the header lines `extra`: (status, lower-cased head).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let (status, reply) = common::exchange(addr, None, method, path, extra, body).await;
    let head = reply
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status, head)
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
