//! End-to-end tests of the `geo-router` binary: real processes, real DNS packets over UDP and
//! TCP, real HTTP, a real Redis for shared routing controls, and health endpoints the test
//! switches off and on. Loopback only.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hickory_proto::op::ResponseCode;
use meridian_catalogue::distance_km;
use meridian_e2e::{
    bin_path, dns_query, eventually, http_request, write_catalogue, HealthServer, RedisServer,
    RouterProcess, TempDir,
};
use mmdb_writer::demo::CITIES;
use serde_json::Value;

const ZONE: &str = "mesh.test.";
const ADMIN: &str = "e2e-admin-token-0123456789";
const REPORT_KEY: &str = "e2e-rtt-report-key-0123456789abcdef";

/// The dev regions as the test catalogue writes them: (name, position, ingress address).
const REGIONS: [(&str, (f64, f64), &str); 3] = [
    ("us-east", (38.9072, -77.0369), "127.0.1.1"),
    ("eu-central", (50.1109, 8.6821), "127.0.1.2"),
    ("ap-southeast", (1.3521, 103.8198), "127.0.1.3"),
];

fn nearest(location: (f64, f64)) -> &'static str {
    REGIONS
        .iter()
        .min_by(|a, b| distance_km(location, a.1).total_cmp(&distance_km(location, b.1)))
        .map(|r| r.0)
        .unwrap_or_default()
}

fn address_of(region: &str) -> IpAddr {
    REGIONS
        .iter()
        .find(|r| r.0 == region)
        .map(|r| r.2.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn region_of(address: IpAddr) -> &'static str {
    REGIONS
        .iter()
        .find(|r| r.2.parse::<IpAddr>().ok() == Some(address))
        .map(|r| r.0)
        .unwrap_or("?")
}

/// Three health servers, a catalogue pointing at them, and the demo database.
struct Fixture {
    dir: TempDir,
    health: Vec<(&'static str, HealthServer)>,
}

impl Fixture {
    async fn new() -> Result<Fixture> {
        let dir = TempDir::new("router")?;
        let mut health = Vec::new();
        for (name, _, _) in REGIONS {
            health.push((name, HealthServer::start().await?));
        }
        let urls: Vec<(&str, String)> = health.iter().map(|(n, h)| (*n, h.url())).collect();
        write_catalogue(&dir.0.join("regions"), &urls)?;
        let status = std::process::Command::new(bin_path("geo-router")?)
            .args(["demo-geoip", "--out"])
            .arg(dir.0.join("geo.mmdb"))
            .status()?;
        anyhow::ensure!(status.success(), "demo-geoip failed");
        Ok(Fixture { dir, health })
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "regions = \"{}\"\ngeoip = \"{}\"\nzone = \"{ZONE}\"\ndns_listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nallow_debug_ip = true\n\
             rtt.report_key = \"{REPORT_KEY}\"\n{extra}\n",
            self.dir.0.join("regions").display(),
            self.dir.0.join("geo.mmdb").display(),
        )
    }

    fn start(&self, name: &str, extra: &str) -> Result<RouterProcess> {
        RouterProcess::start(&self.dir.0, name, &self.config(extra))
    }

    fn health(&mut self, region: &str) -> Option<&mut HealthServer> {
        self.health
            .iter_mut()
            .find(|(n, _)| *n == region)
            .map(|(_, h)| h)
    }
}

async fn ws_region(router: &RouterProcess, client: IpAddr) -> Result<&'static str> {
    let (rcode, addresses, _, _) = dns_query(router.dns, &format!("ws.{ZONE}"), Some((client, 24)))
        .await
        .context("dns query")?;
    anyhow::ensure!(rcode == ResponseCode::NoError, "rcode {rcode:?}");
    Ok(addresses.first().map_or("none", |a| region_of(*a)))
}

/// The RTT report token `/v1/route` hands this test (from 127.0.0.1).
async fn report_token(http: SocketAddr) -> Result<String> {
    let route = route_json(http, "", &[]).await?;
    route["rtt_report"]["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no rtt_report token in {route}"))
}

async fn route_json(http: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Value> {
    let (status, _, body) =
        http_request(http, "GET", &format!("/v1/route{query}"), headers, "").await?;
    anyhow::ensure!(status == 200, "status {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test]
async fn dns_and_http_route_every_demo_city_to_its_nearest_region() -> Result<()> {
    let fixture = Fixture::new().await?;
    let router = fixture.start("router", "ttl = 45")?;
    let mut agree = 0;
    let mut scopes = Vec::new();
    for city in CITIES {
        let expected = nearest((city.latitude, city.longitude));
        for n in [0u8, 7, 15] {
            let client = city.v4_address(n);
            let network = match client {
                IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) & !0xff)),
                other => other,
            };
            let (rcode, addresses, scope, ttl) =
                dns_query(router.dns, &format!("ws.{ZONE}"), Some((network, 24))).await?;
            assert_eq!(rcode, ResponseCode::NoError, "{}", city.name);
            assert_eq!(
                addresses,
                vec![address_of(expected)],
                "{} ({client}) should go to {expected}",
                city.name
            );
            assert_eq!(ttl, Some(45));
            // 16 /24s of one city merge at least into their /20.
            let scope = scope.context("ECS echoed")?;
            assert!(scope <= 20, "{} scope /{scope}", city.name);
            scopes.push(scope);
            // The HTTP API gives the same first choice, with the ws_url of that region.
            let route = route_json(router.http, &format!("?ip={client}"), &[]).await?;
            let first = &route["regions"][0];
            assert_eq!(first["name"], expected, "{route}");
            assert_eq!(first["reason"], "geo");
            if first["name"] == expected {
                agree += 1;
            }
        }
        // IPv6 too, by ECS on the city's /40.
        let (_, v6_answer, v6_scope, _) = dns_query(
            router.dns,
            &format!("ws.{ZONE}"),
            Some((city.v6_address(), 48)),
        )
        .await?;
        assert_eq!(
            v6_answer,
            vec![address_of(expected)],
            "{} over IPv6",
            city.name
        );
        assert!(v6_scope.is_some_and(|s| s <= 40), "{v6_scope:?}");
    }
    scopes.sort_unstable();
    println!(
        "DNS/HTTP agreement {agree}/{}; median IPv4 ECS scope /{}",
        CITIES.len() * 3,
        scopes[scopes.len() / 2]
    );

    // Direct region names, the apex, and the negative answers.
    let (rcode, addresses, _, _) =
        dns_query(router.dns, &format!("eu-central.{ZONE}"), None).await?;
    assert_eq!(
        (rcode, addresses),
        (ResponseCode::NoError, vec![address_of("eu-central")])
    );
    let (rcode, _, _, _) = dns_query(router.dns, &format!("nope.{ZONE}"), None).await?;
    assert_eq!(rcode, ResponseCode::NXDomain);
    let (rcode, _, _, _) = dns_query(router.dns, "example.org.", None).await?;
    assert_eq!(rcode, ResponseCode::Refused);
    // Without ECS the packet source (127.0.0.1, not in the database) routes: default order.
    let (rcode, addresses, scope, _) = dns_query(router.dns, &format!("ws.{ZONE}"), None).await?;
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(addresses.len(), 1);
    assert_eq!(scope, None, "no ECS asked, none echoed");

    // /v1/connect redirects to the best region's ws_url.
    let (status, head, _) = http_request(
        router.http,
        "GET",
        &format!("/v1/connect?ip={}", CITIES[5].v4_address(1)),
        &[],
        "",
    )
    .await?;
    assert_eq!(status, 307);
    assert!(
        head.to_ascii_lowercase()
            .contains("location: ws://127.0.1.2:7000/v1/ws"),
        "{head}"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_input_gets_clear_errors_and_the_router_keeps_serving() -> Result<()> {
    let fixture = Fixture::new().await?;
    let mut router = fixture.start("router", "")?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    // Garbage of many sizes: dropped or FORMERR, never a crash.
    for size in [0usize, 1, 11, 12, 13, 40, 512, 1500] {
        let packet: Vec<u8> = (0..size).map(|i| (i * 37 + size) as u8).collect();
        socket.send_to(&packet, router.dns).await?;
    }
    // A header claiming one question with no body: FORMERR.
    socket
        .send_to(
            &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0],
            router.dns,
        )
        .await?;
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut formerr = false;
    while Instant::now() < deadline && !formerr {
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
        {
            formerr = n >= 12 && buf[0..2] == [0x12, 0x34] && buf[3] & 0x0f == 1;
        }
    }
    assert!(formerr, "FORMERR for a truncated question");
    assert_eq!(
        ws_region(&router, CITIES[5].v4_address(0)).await?,
        "eu-central"
    );

    // HTTP: bad RTT reports, bad ?ip, admin without a token.
    let token = report_token(router.http).await?;
    for body in [
        "not json".to_owned(),
        format!("{{\"token\": \"{token}\", \"rtts\": []}}"),
        format!("{{\"token\": \"{token}\", \"rtts\": [{{\"region\": \"mars\", \"rtt_ms\": 10}}]}}"),
        format!("{{\"token\": \"{token}\", \"rtts\": [{{\"region\": \"eu-central\", \"rtt_ms\": -1}}]}}"),
        format!("{{\"token\": \"{token}\", \"rtts\": [{{\"region\": \"eu-central\", \"rtt_ms\": 10, \"extra\": 1}}]}}"),
    ] {
        let (status, _, reply) = http_request(router.http, "POST", "/v1/rtt", &[], &body).await?;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(reply.contains("bad_rtt_report"), "{reply}");
    }
    let (status, _, reply) = http_request(
        router.http,
        "POST",
        "/v1/rtt",
        &[],
        "{\"rtts\": [{\"region\": \"eu-central\", \"rtt_ms\": 10}]}",
    )
    .await?;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("bad_rtt_token"), "{reply}");
    let (status, _, _) = http_request(router.http, "GET", "/v1/route?ip=banana", &[], "").await?;
    assert_eq!(status, 400);
    let (status, _, reply) = http_request(
        router.http,
        "POST",
        "/v1/admin/regions/eu-central/drain",
        &[],
        "",
    )
    .await?;
    assert_eq!(status, 404, "not on the public listener: {reply}");
    assert!(reply.contains("admin_not_here"), "{reply}");
    let (status, _, _) = http_request(
        router.admin.context("admin listener")?,
        "POST",
        "/v1/admin/regions/eu-central/drain",
        &[],
        "",
    )
    .await?;
    assert_eq!(status, 403, "no admin tokens configured");
    let (status, body) = meridian_e2e::http_get(router.http, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(body.contains("meridian_router_answers_total"), "{body}");
    assert!(
        body.contains("meridian_router_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}"),
        "{body}"
    );
    assert!(body.contains("rcode=\"FORMERR\""), "{body}");
    assert!(
        !body.contains("meridian_router_dns_dropped_total 0"),
        "{body}"
    );

    // SIGTERM: a clean exit within the shutdown timeout.
    router.signal("TERM")?;
    let status = router.wait_exit(Duration::from_secs(6))?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test]
async fn measured_rtt_overrides_geography_for_the_reporting_network() -> Result<()> {
    let fixture = Fixture::new().await?;
    let router = fixture.start("router", "[policy]\nmin_rtt_samples = 3")?;
    // 127.0.0.1 is not in the database: default order, alphabetical (ap-southeast first).
    let before = route_json(router.http, "", &[]).await?;
    assert_eq!(before["regions"][0]["reason"], "default");
    let token = report_token(router.http).await?;
    for _ in 0..3 {
        let (status, _, body) = http_request(
            router.http,
            "POST",
            "/v1/rtt",
            &[("Content-Type", "application/json")],
            &format!(r#"{{"token": "{token}", "rtts": [{{"region": "us-east", "rtt_ms": 12.5}}, {{"region": "ap-southeast", "rtt_ms": 180}}]}}"#),
        )
        .await?;
        assert_eq!(status, 204, "{body}");
    }
    let after = route_json(router.http, "", &[]).await?;
    assert_eq!(after["regions"][0]["name"], "us-east", "{after}");
    assert_eq!(after["regions"][0]["reason"], "rtt");
    assert_eq!(after["regions"][0]["estimated_rtt_ms"], 12.5);
    Ok(())
}

#[tokio::test]
async fn a_dead_region_leaves_the_answers_within_the_bound_and_returns_after_rise() -> Result<()> {
    let mut fixture = Fixture::new().await?;
    let router = fixture.start("router", "")?;
    let berlin = CITIES[5].v4_address(0);
    assert!(
        eventually(Duration::from_secs(3), || async {
            ws_region(&router, berlin).await.ok() == Some("eu-central")
        })
        .await
    );
    // Let every region be probed once, so this is a real up → down transition.
    let probed = eventually(Duration::from_secs(5), || async {
        meridian_e2e::http_get(router.http, "/metrics")
            .await
            .is_ok_and(|(_, body)| {
                REGIONS.iter().all(|(name, ..)| {
                    body.lines().any(|l| {
                        l.starts_with("meridian_router_health_checks_total{")
                            && l.contains(&format!("region=\"{name}\""))
                            && l.contains("result=\"ok\"")
                    })
                })
            })
    })
    .await;
    assert!(probed, "every region probed healthy once");

    let health = fixture.health("eu-central").context("health server")?;
    let addr = health.addr;
    health.stop();
    let died = Instant::now();
    let moved = eventually(Duration::from_secs(5), || async {
        matches!(ws_region(&router, berlin).await, Ok(r) if r != "eu-central")
    })
    .await;
    let took = died.elapsed();
    assert!(
        moved,
        "Berlin still answered eu-central 5 s after its death"
    );
    // Documented bound: interval × fall + timeout = 2.8 s with the defaults.
    assert!(took <= Duration::from_millis(2800 + 300), "took {took:?}");
    println!("answers left the dead region after {took:?}");
    let regions = route_json(router.http, &format!("?ip={berlin}"), &[]).await?;
    assert_eq!(regions["regions"][0]["name"], "us-east");
    assert_eq!(regions["regions"][0]["reason"], "failover");

    // Back: the same port answers again; rise = 3 successes at 1 s intervals.
    let revived = HealthServer::start_on(addr).await?;
    let back_at = Instant::now();
    let back = eventually(Duration::from_secs(6), || async {
        ws_region(&router, berlin).await.ok() == Some("eu-central")
    })
    .await;
    let took = back_at.elapsed();
    assert!(back, "eu-central did not come back");
    assert!(
        took >= Duration::from_millis(1500),
        "came back after {took:?}: rise ignored"
    );
    println!("answers returned {took:?} after the region recovered");
    drop(revived);
    Ok(())
}

#[tokio::test]
async fn a_drain_on_one_router_reaches_the_other_within_a_second() -> Result<()> {
    let fixture = Fixture::new().await?;
    let redis = RedisServer::start()?;
    let shared = format!(
        "[controls]\nredis_url = \"{}\"\naudit_file = \"{}\"\n[[controls.admin_tokens]]\nactor = \"sre-alice\"\ntoken = \"{ADMIN}\"\n",
        redis.url(),
        fixture.dir.0.join("audit.jsonl").display()
    );
    let one = fixture.start(
        "one",
        &format!("instance = \"router-1\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n{shared}"),
    )?;
    let two = fixture.start("two", &format!("instance = \"router-2\"\n{shared}"))?;
    let berlin = CITIES[5].v4_address(0);
    for router in [&one, &two] {
        assert!(
            eventually(Duration::from_secs(3), || async {
                ws_region(router, berlin).await.ok() == Some("eu-central")
            })
            .await
        );
    }

    let auth = format!("Bearer {ADMIN}");
    let (one_admin, two_admin) = (
        one.admin.context("admin listener")?,
        two.admin.context("admin listener")?,
    );
    let (status, _, body) = http_request(
        one_admin,
        "POST",
        "/v1/admin/regions/eu-central/drain",
        &[("Authorization", &auth)],
        r#"{"note": "e2e drill", "drill": true}"#,
    )
    .await?;
    let drained_at = Instant::now();
    assert_eq!(status, 200, "{body}");
    let moved = eventually(Duration::from_secs(1), || async {
        matches!(ws_region(&two, berlin).await, Ok(r) if r != "eu-central")
    })
    .await;
    let took = drained_at.elapsed();
    assert!(
        moved,
        "router 2 still answers eu-central {took:?} after the drain"
    );
    println!("drain reached the second router after {took:?}");
    let route = route_json(two.http, &format!("?ip={berlin}"), &[]).await?;
    assert_eq!(route["regions"][0]["reason"], "drain", "{route}");
    let (_, metrics) = meridian_e2e::http_get(two.http, "/metrics").await?;
    assert!(
        metrics.contains("meridian_drill_in_progress 1"),
        "{metrics}"
    );

    // The safety rule: drain the rest and the last one is refused, on either router.
    let post = |router: SocketAddr, path: &'static str, token: String| async move {
        http_request(router, "POST", path, &[("Authorization", &token)], "").await
    };
    let (status, _, _) = post(two_admin, "/v1/admin/regions/us-east/drain", auth.clone()).await?;
    assert_eq!(status, 200);
    let (status, _, body) = post(
        one_admin,
        "/v1/admin/regions/ap-southeast/drain",
        auth.clone(),
    )
    .await?;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("unsafe"), "{body}");
    // Bad tokens and unknown regions and actions.
    let (status, _, _) = post(
        one_admin,
        "/v1/admin/regions/eu-central/undrain",
        "Bearer wrong-token-wrong-token".into(),
    )
    .await?;
    assert_eq!(status, 401);
    let (status, _, _) = post(one_admin, "/v1/admin/regions/mars/drain", auth.clone()).await?;
    assert_eq!(status, 404);
    let (status, _, _) = post(
        one_admin,
        "/v1/admin/regions/eu-central/explode",
        auth.clone(),
    )
    .await?;
    assert_eq!(status, 404);

    // Undrain: back on both.
    let (status, _, _) = post(
        two_admin,
        "/v1/admin/regions/eu-central/undrain",
        auth.clone(),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(1), || async {
            ws_region(&one, berlin).await.ok() == Some("eu-central")
        })
        .await
    );

    // The audit log: who, what, when, from both instances, newest first.
    let (status, _, body) = http_request(
        one_admin,
        "GET",
        "/v1/admin/audit?limit=10",
        &[("Authorization", &auth)],
        "",
    )
    .await?;
    assert_eq!(status, 200);
    let audit: Value = serde_json::from_str(&body)?;
    let entries = audit["audit"].as_array().context("audit list")?;
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["region"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["instance"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("eu-central".into(), "undrain".into(), "router-2".into()),
            ("us-east".into(), "drain".into(), "router-2".into()),
            ("eu-central".into(), "drain".into(), "router-1".into()),
        ]
    );
    assert!(entries
        .iter()
        .all(|e| e["actor"] == "sre-alice" && e["at_ms"].as_u64() > Some(0)));
    let file = std::fs::read_to_string(fixture.dir.0.join("audit.jsonl"))?;
    assert_eq!(file.lines().count(), 3, "{file}");

    // X-Forwarded-For is believed from trusted proxies only (router 1 trusts loopback).
    let xff = [("X-Forwarded-For", "103.40.0.9")]; // Sydney
    let trusted = route_json(one.http, "", &xff).await?;
    assert_eq!(trusted["regions"][0]["name"], "ap-southeast", "{trusted}");
    let untrusted = route_json(two.http, "", &xff).await?;
    assert_eq!(untrusted["client"]["ip"], "127.0.0.1", "{untrusted}");
    Ok(())
}

#[tokio::test]
async fn a_new_database_is_picked_up_and_a_corrupt_one_is_refused() -> Result<()> {
    let fixture = Fixture::new().await?;
    let router = fixture.start("router", "geoip_reload_ms = 200")?;
    let berlin = CITIES[5].v4_address(0);
    assert_eq!(ws_region(&router, berlin).await?, "eu-central");
    let path = fixture.dir.0.join("geo.mmdb");
    replace(&path, b"this is not a MaxMind database")?;
    assert!(
        eventually(Duration::from_secs(3), || async {
            meridian_e2e::http_get(router.http, "/metrics")
                .await
                .is_ok_and(|(_, body)| body.contains("result=\"rejected\""))
        })
        .await,
        "the corrupt file was not reported"
    );
    assert_eq!(
        ws_region(&router, berlin).await?,
        "eu-central",
        "old database still serves"
    );

    // A valid database that puts "Berlin" in Sydney.
    let mut writer = mmdb_writer::MmdbWriter::new("Test-City");
    writer.insert(
        (berlin, 16),
        mmdb_writer::MmdbValue::city_record(-33.8688, 151.2093, Some("AU"), Some("OC")),
    )?;
    replace(&path, &writer.to_bytes()?)?;
    assert!(
        eventually(Duration::from_secs(3), || async {
            ws_region(&router, berlin).await.ok() == Some("ap-southeast")
        })
        .await,
        "the new database was not picked up"
    );
    Ok(())
}

/// Replaces a file atomically (write beside, rename over).
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
