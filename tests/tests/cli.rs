//! End-to-end tests of the `meridian` command: `meridian up --auto-ports` as a child process
//! (3 regions of the dev catalogue, each with Redis, 2 nodes behind HAProxy and 2 relays, and a
//! geo-router with the synthetic GeoIP database), the reference flow through its DNS and HTTP
//! routing, `meridian drill --mode kill` and `--mode drain` on a small workload, and SIGTERM
//! leaving no process of the mesh behind. Loopback only; every child is killed on drop.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meridian_e2e::up::{alive, processes_under, Up};
use meridian_e2e::{bin_path, dns_query, http_get, ok, Client};
use serde_json::{json, Value};

/// SIGTERM to `up`: it exits cleanly and no process of the mesh remains, neither one of the
/// pids in endpoints.json (`up` rewrites them after a region restart) nor any other process
/// using the state directory.
fn stop_and_check_no_orphans(up: &mut Up) -> Result<()> {
    up.endpoints = serde_json::from_str(&std::fs::read_to_string(
        up.state_dir().join("endpoints.json"),
    )?)?;
    let pids = up.mesh_pids();
    ensure!(pids.len() >= 19, "endpoints.json lists {} pids", pids.len());
    ensure!(
        pids.iter().all(|p| alive(*p)),
        "a mesh process is not running: {pids:?}"
    );
    let running = processes_under(&up.state_dir()).len();
    ensure!(running >= 19, "only {running} processes use the state dir");
    let started = Instant::now();
    let status = up.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "meridian up exited with {status}");
    eprintln!("meridian up stopped {:?} after SIGTERM", started.elapsed());
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    ensure!(
        left.is_empty(),
        "mesh processes left after SIGTERM: {left:?}"
    );
    let strays = processes_under(&up.state_dir());
    ensure!(
        strays.is_empty(),
        "processes still using the state dir: {strays:?}"
    );
    Ok(())
}

/// The region the router's HTTP API ranks first for `ip`, and its ws_url.
async fn route(up: &Up, ip: &str) -> Result<(String, String)> {
    let (status, body) = http_get(up.router_http()?, &format!("/v1/route?ip={ip}")).await?;
    ensure!(status == 200, "/v1/route?ip={ip}: {status} {body}");
    let v: Value = serde_json::from_str(&body)?;
    let first = &v["regions"][0];
    Ok((
        first["name"].as_str().unwrap_or_default().to_owned(),
        first["ws_url"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// The ingress addresses of `region` as the router publishes them in DNS.
async fn region_addresses(up: &Up, region: &str) -> Result<BTreeSet<IpAddr>> {
    let (_, body) = http_get(up.router_http()?, "/v1/regions").await?;
    let v: Value = serde_json::from_str(&body)?;
    let r = v["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == region)
        .with_context(|| format!("no {region} in /v1/regions: {body}"))?;
    Ok(r["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_routes_two_users_into_one_room_and_stops_without_orphans() -> Result<()> {
    let mut up = Up::start("cli-up", &["--relay-grace", "3s"])?;
    let zone = up.endpoints["zone"].as_str().unwrap_or("mesh.localhost.");
    let qname = format!("ws.{}.", zone.trim_end_matches('.'));

    // DNS with ECS and HTTP agree: Singapore → ap-southeast, Berlin → eu-central.
    let cases = [
        ("alice", "103.20.1.7", "ap-southeast"),
        ("bob", "81.20.1.7", "eu-central"),
    ];
    let mut users = Vec::new();
    for (user, ip, want) in cases {
        let (region, ws_url) = route(&up, ip).await?;
        assert_eq!(region, want, "HTTP route for {ip}");
        let network: IpAddr = ip
            .rsplit_once('.')
            .map(|(n, _)| format!("{n}.0"))
            .unwrap_or_default()
            .parse()?;
        let (_, answers, scope, _) =
            dns_query(up.router_dns()?, &qname, Some((network, 24))).await?;
        let expected = region_addresses(&up, want).await?;
        assert!(
            !answers.is_empty() && answers.iter().all(|a| expected.contains(a)),
            "DNS for {ip}: {answers:?}, {want} has {expected:?}"
        );
        assert!(scope.is_some(), "DNS answer for {ip} has an ECS scope");
        let token = up.endpoints["tokens"][user]
            .as_str()
            .context("token")?
            .to_owned();
        users.push((user, ws_url, token, want));
    }

    // Bob (Berlin, eu-central) joins first, then Alice (Singapore, ap-southeast).
    let (bob_user, bob_url, bob_token, bob_region) = users[1].clone();
    let (alice_user, alice_url, alice_token, alice_region) = users[0].clone();
    let (mut bob, hello) = Client::hello(&bob_url, &bob_token, json!([])).await?;
    assert_eq!(hello["region"], bob_region);
    ok(bob.request(json!({"op": "join", "room": "lobby"})).await?)?;
    let (mut alice, hello) = Client::hello(&alice_url, &alice_token, json!([])).await?;
    assert_eq!(hello["region"], alice_region);
    ok(alice
        .request(json!({"op": "join", "room": "lobby"}))
        .await?)?;
    let joined = bob.event_within("joined", Duration::from_secs(15)).await?;
    assert_eq!(joined["user"], alice_user, "{joined}");
    assert_eq!(joined["region"], alice_region, "{joined}");

    // Messages both ways.
    ok(alice
        .request(
            json!({"op": "publish", "room": "lobby", "data": {"text": "hello from Singapore"}}),
        )
        .await?)?;
    let m = bob.event_within("message", Duration::from_secs(10)).await?;
    assert_eq!(
        (m["from"].clone(), m["data"]["text"].clone()),
        (json!(alice_user), json!("hello from Singapore")),
        "{m}"
    );
    assert_eq!(m["origin"]["region"], alice_region, "{m}");
    ok(bob
        .request(json!({"op": "publish", "room": "lobby", "data": {"text": "hello from Berlin"}}))
        .await?)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = alice
            .event_within("message", Duration::from_secs(10))
            .await?;
        if m["from"] == bob_user {
            break m;
        }
        ensure!(Instant::now() < deadline, "alice never got bob's message");
    };
    assert_eq!(m["data"]["text"], "hello from Berlin", "{m}");
    assert_eq!(m["origin"]["region"], bob_region, "{m}");
    // Both regions list both users.
    for c in [&mut alice, &mut bob] {
        let r = ok(c.request(json!({"op": "members", "room": "lobby"})).await?)?;
        let users: BTreeSet<&str> = r["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["user"].as_str())
            .collect();
        assert_eq!(users, BTreeSet::from(["alice", "bob"]), "{r}");
    }
    drop((alice, bob));

    stop_and_check_no_orphans(&mut up)
}

/// Runs `meridian drill` against `up`; returns the JSON report.
fn drill(up: &Up, region: &str, mode: &str) -> Result<Value> {
    let report = up.dir.0.join(format!("drill-{mode}.json"));
    let out = up.dir.0.join(format!("drill-{mode}.txt"));
    let mut child = Command::new(bin_path("meridian")?)
        .args(["drill", "--region", region, "--mode", mode])
        .args(["--clients", "12", "--rooms", "3", "--duration", "12s"])
        .arg("--state-dir")
        .arg(up.state_dir())
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&out)?,
        ))
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "drill {mode} still running after 120 s: {}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!(
        "--- meridian drill --mode {mode} ({:?}) ---\n{text}",
        started.elapsed()
    );
    ensure!(status.success(), "drill {mode} exited with {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    Ok(v)
}

fn check_drill(r: &Value, mode: &str) -> Result<()> {
    ensure!(r["passed"] == true, "{mode}: SLOs: {}", r["slos"]);
    let rooms = &r["messages"]["rooms_total"];
    ensure!(
        rooms["published"].as_u64() > Some(50),
        "{mode}: too few messages: {rooms}"
    );
    ensure!(
        rooms["lost"] == 0 && rooms["duplicated"] == 0,
        "{mode}: {rooms}"
    );
    ensure!(
        r["membership"]["ghosts"] == 0,
        "{mode}: {}",
        r["membership"]
    );
    ensure!(
        r["membership"]["missing"] == 0,
        "{mode}: {}",
        r["membership"]
    );
    let rehome = &r["rehome"];
    ensure!(
        rehome["affected"].as_u64() > Some(0) && rehome["resumed"] == rehome["affected"],
        "{mode}: {rehome}"
    );
    ensure!(
        r["route_away"]["s"].as_f64().is_some(),
        "{mode}: {}",
        r["route_away"]
    );
    let probes = &r["restore"]["probes"][r["region"].as_str().unwrap_or_default()];
    ensure!(
        probes.as_u64() > Some(0),
        "{mode}: traffic did not return: {}",
        r["restore"]
    );
    eprintln!(
        "{mode}: route-away {}s; re-home p50 {} p99 {} max {}; lost {} duplicated {} ghosts {}",
        r["route_away"]["s"],
        rehome["since_disruption"]["p50_s"],
        rehome["since_disruption"]["p99_s"],
        rehome["since_disruption"]["max_s"],
        rooms["lost"],
        rooms["duplicated"],
        r["membership"]["ghosts"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_kill_and_drain_lose_nothing_and_leave_no_ghosts() -> Result<()> {
    let mut up = Up::start("cli-drill", &["--relay-grace", "3s"])?;
    let kill = tokio::task::block_in_place(|| drill(&up, "us-east", "kill"))?;
    check_drill(&kill, "kill")?;
    let drain = tokio::task::block_in_place(|| drill(&up, "eu-central", "drain"))?;
    check_drill(&drain, "drain")?;
    // The restarted regions are new processes: none may outlive `up` either.
    tokio::task::block_in_place(|| stop_and_check_no_orphans(&mut up))
}
