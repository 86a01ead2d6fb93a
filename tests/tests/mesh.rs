//! End-to-end tests of cross-region replication: real `redis-server`, `region-node` and
//! `interregion-relay` processes per region, the impairment proxy between the relays (80 ms
//! emulated RTT), and a `geo-router` for the reference flow. Loopback only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meridian_e2e::mesh::{MeshTiming, TestMesh};
use meridian_e2e::{bin_path, http_request, ok, token, Client, RouterProcess};
use serde_json::{json, Value};

const AP: &str = "ap-southeast";
const EU: &str = "eu-central";
const ROOM: &str = "stage";
const LONG: Duration = Duration::from_secs(10);

/// A client that keeps its cross-region version vector: per origin region, the last of that
/// region's own events it received (events with `origin` count for their origin, the others
/// for the region it is connected to), seeded from the join reply's `origins`.
struct User {
    name: String,
    client: Client,
    region: String,
    epoch: String,
    seq: u64,
    vector: BTreeMap<String, (String, u64)>,
    /// Room messages received: (sender, n).
    messages: Vec<(String, u64)>,
}

impl User {
    async fn connect(name: &str, url: &str) -> Result<User> {
        let (client, hello) = Client::hello(url, &token(name), json!([])).await?;
        Ok(User {
            name: name.into(),
            client,
            region: hello["region"].as_str().unwrap_or_default().to_owned(),
            epoch: String::new(),
            seq: 0,
            vector: BTreeMap::new(),
            messages: Vec::new(),
        })
    }

    fn seed(&mut self, result: &Value) {
        self.epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
        self.seq = result["seq"].as_u64().unwrap_or(0);
        self.vector
            .insert(self.region.clone(), (self.epoch.clone(), self.seq));
        for o in result["origins"].as_array().into_iter().flatten() {
            let region = o["region"].as_str().unwrap_or_default().to_owned();
            let pos = (
                o["epoch"].as_str().unwrap_or_default().to_owned(),
                o["seq"].as_u64().unwrap_or(0),
            );
            self.vector.entry(region).or_insert(pos);
        }
    }

    async fn join(&mut self, room: &str) -> Result<()> {
        let r = ok(self
            .client
            .request(json!({"op": "join", "room": room}))
            .await?)?;
        self.seed(&r);
        Ok(())
    }

    /// Records what a room event tells about positions and messages.
    fn saw(&mut self, e: &Value) {
        if let Some(seq) = e["seq"].as_u64() {
            self.seq = self.seq.max(seq);
        }
        let (region, pos) = match e.get("origin") {
            Some(o) => (
                o["region"].as_str().unwrap_or_default().to_owned(),
                (
                    o["epoch"].as_str().unwrap_or_default().to_owned(),
                    o["seq"].as_u64().unwrap_or(0),
                ),
            ),
            None => (
                self.region.clone(),
                (
                    e["epoch"].as_str().unwrap_or_default().to_owned(),
                    e["seq"].as_u64().unwrap_or(0),
                ),
            ),
        };
        let slot = self.vector.entry(region).or_insert(pos.clone());
        if slot.0 != pos.0 || slot.1 < pos.1 {
            *slot = pos;
        }
        if e["type"] == "message" {
            self.messages.push((
                e["from"].as_str().unwrap_or_default().to_owned(),
                e["data"]["n"].as_u64().unwrap_or(u64::MAX),
            ));
        }
    }

    async fn publish(&mut self, n: u64) -> Result<()> {
        let key = format!("{}-{n}", self.name);
        ok(self
            .client
            .request(
                json!({"op": "publish", "room": ROOM, "data": {"n": n}, "idempotency_key": key}),
            )
            .await?)?;
        Ok(())
    }

    /// Reads events for `wait`, recording them; returns them.
    async fn pump(&mut self, wait: Duration) -> Result<Vec<Value>> {
        let mut seen = Vec::new();
        for kind in ["joined", "left", "message", "state_changed"] {
            // Queued events first (kept by request()).
            seen.extend(self.client.drain_events(kind, Duration::ZERO).await?);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self
                .client
                .event_within("message", left.min(Duration::from_millis(200)))
                .await
            {
                Ok(e) => seen.push(e),
                Err(_) => {
                    for kind in ["joined", "left", "state_changed"] {
                        seen.extend(self.client.drain_events(kind, Duration::ZERO).await?);
                    }
                }
            }
        }
        for kind in ["joined", "left", "state_changed"] {
            seen.extend(self.client.drain_events(kind, Duration::ZERO).await?);
        }
        seen.sort_by_key(|e| e["seq"].as_u64().unwrap_or(0));
        for e in &seen {
            self.saw(e);
        }
        Ok(seen)
    }

    /// Reads until `done(self)` holds or `within` passes.
    async fn until(&mut self, within: Duration, done: impl Fn(&User) -> bool) -> Result<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done(self) {
                return Ok(true);
            }
            self.pump(Duration::from_millis(200)).await?;
        }
        Ok(done(self))
    }

    fn got_from(&self, sender: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .messages
            .iter()
            .filter(|(s, _)| s == sender)
            .map(|(_, n)| *n)
            .collect();
        v.sort_unstable();
        v
    }

    fn resume_point(&self, room: &str) -> Value {
        let origins: Vec<Value> = self
            .vector
            .iter()
            .map(|(r, (e, s))| json!({"region": r, "epoch": e, "seq": s}))
            .collect();
        json!({"room": room, "epoch": self.epoch, "seq": self.seq, "origins": origins})
    }
}

async fn member_regions(user: &mut User) -> Result<BTreeMap<String, String>> {
    let r = ok(user
        .client
        .request(json!({"op": "members", "room": ROOM}))
        .await?)?;
    Ok(r["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["user"].as_str().unwrap_or_default().to_owned(),
                m["region"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

async fn state_of(c: &mut Client) -> Result<Vec<(String, String)>> {
    let r = ok(c.request(json!({"op": "state_get", "room": ROOM})).await?)?;
    let mut entries: Vec<(String, String)> = r["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_owned(),
                e["value"].to_string(),
            )
        })
        .collect();
    entries.sort();
    Ok(entries)
}

fn exactly(range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    range.collect()
}

/// A user in each region, both in ROOM, each having seen the other's `joined`.
async fn two_users(mesh: &TestMesh) -> Result<(User, User)> {
    let mut b = User::connect("bob", &mesh.region(EU)?.node.ws_url()).await?;
    b.join(ROOM).await?;
    let mut a = User::connect("alice", &mesh.region(AP)?.node.ws_url()).await?;
    a.join(ROOM).await?;
    ensure!(
        a.until(LONG, |u| u.vector.contains_key(EU)).await?,
        "alice never saw eu-central's share of the room"
    );
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_flow_across_regions_through_the_router() -> Result<()> {
    let mesh = TestMesh::start(&[AP, EU], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;

    // The router sends a Singapore address to ap-southeast and a Frankfurt one to eu-central.
    let geo = mesh.dir.0.join("geo.mmdb");
    let status = std::process::Command::new(bin_path("geo-router")?)
        .args(["demo-geoip", "--out"])
        .arg(&geo)
        .status()?;
    ensure!(status.success(), "demo-geoip failed");
    let router = RouterProcess::start(
        &mesh.dir.0,
        "router",
        &format!(
            "regions = \"{}\"\ngeoip = \"{}\"\nzone = \"mesh.test.\"\ndns_listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\nallow_debug_ip = true\n",
            mesh.catalogue().display(),
            geo.display()
        ),
    )?;
    let route = |ip: &'static str| {
        let http = router.http;
        async move {
            let (status, _, body) =
                http_request(http, "GET", &format!("/v1/route?ip={ip}"), &[], "").await?;
            ensure!(status == 200, "route {status}: {body}");
            let v: Value = serde_json::from_str(&body)?;
            let first = &v["regions"][0];
            Ok::<_, anyhow::Error>((
                first["name"].as_str().unwrap_or_default().to_owned(),
                first["ws_url"].as_str().unwrap_or_default().to_owned(),
            ))
        }
    };
    let (a_region, a_url) = route("103.20.1.7").await?; // Singapore
    let (b_region, b_url) = route("81.20.1.7").await?; // Berlin / Frankfurt
    assert_eq!(a_region, AP);
    assert_eq!(b_region, EU);

    // B logs in and joins R; A joins R; each receives the other's `joined`.
    let mut b = User::connect("bob", &b_url).await?;
    assert_eq!(b.region, EU);
    b.join(ROOM).await?;
    let mut a = User::connect("alice", &a_url).await?;
    assert_eq!(a.region, AP);
    a.join(ROOM).await?;
    let a_saw_b = a
        .client
        .event_within("joined", LONG)
        .await
        .context("alice: bob's joined")?;
    assert_eq!(
        (a_saw_b["user"].as_str(), a_saw_b["region"].as_str()),
        (Some("bob"), Some(EU))
    );
    assert_eq!(a_saw_b["origin"]["region"], EU, "{a_saw_b}");
    let b_saw_a = b
        .client
        .event_within("joined", LONG)
        .await
        .context("bob: alice's joined")?;
    assert_eq!(
        (b_saw_a["user"].as_str(), b_saw_a["region"].as_str()),
        (Some("alice"), Some(AP))
    );
    a.saw(&a_saw_b);
    b.saw(&b_saw_a);
    // Both see both members, with their regions, from their own region's Redis.
    let want: BTreeMap<String, String> =
        [("alice".into(), AP.into()), ("bob".into(), EU.into())].into();
    assert_eq!(member_regions(&mut a).await?, want);
    assert_eq!(member_regions(&mut b).await?, want);

    // Messages both ways, exactly once.
    for n in 1..=20 {
        a.publish(n).await?;
        b.publish(100 + n).await?;
    }
    assert!(a.until(LONG, |u| u.got_from("bob").len() >= 20).await?);
    assert!(b.until(LONG, |u| u.got_from("alice").len() >= 20).await?);
    a.pump(Duration::from_millis(500)).await?;
    b.pump(Duration::from_millis(500)).await?;
    assert_eq!(b.got_from("alice"), exactly(1..=20));
    assert_eq!(a.got_from("bob"), exactly(101..=120));
    assert_eq!(a.got_from("alice"), exactly(1..=20), "own messages once");

    // Offer / answer / ICE across the regions, in order.
    let signal = |to: &str, kind: &str, i: u64| json!({"op": "send", "to": to, "data": {"kind": kind, "i": i}});
    ok(a.client.request(signal("bob", "offer", 0)).await?)?;
    let offer = b.client.event_within("direct", LONG).await?;
    assert_eq!(
        (offer["from"].as_str(), offer["data"]["kind"].as_str()),
        (Some("alice"), Some("offer"))
    );
    ok(b.client.request(signal("alice", "answer", 0)).await?)?;
    let answer = a.client.event_within("direct", LONG).await?;
    assert_eq!(
        (answer["from"].as_str(), answer["data"]["kind"].as_str()),
        (Some("bob"), Some("answer"))
    );
    for i in 1..=5 {
        ok(a.client.request(signal("bob", "ice", i)).await?)?;
    }
    let mut ice = Vec::new();
    for _ in 1..=5 {
        ice.push(b.client.event_within("direct", LONG).await?["data"]["i"].as_u64());
    }
    assert_eq!(ice, (1..=5).map(Some).collect::<Vec<_>>());
    // Presence crosses regions too.
    let p = ok(a
        .client
        .request(json!({"op": "presence", "users": ["bob"]}))
        .await?)?;
    assert_eq!(p["users"][0]["online"], true, "{p}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_without_loss_or_duplicates() -> Result<()> {
    let timing = MeshTiming {
        grace_ms: 30_000,
        ..MeshTiming::default()
    };
    let mesh = TestMesh::start(&[AP, EU], 80, 1, timing).await?;
    mesh.wait_links(LONG).await?;
    let (mut a, mut b) = two_users(&mesh).await?;
    assert!(b.until(LONG, |u| u.vector.contains_key(AP)).await?);
    a.publish(1).await?;
    b.publish(101).await?;
    assert!(a.until(LONG, |u| u.got_from("bob") == [101]).await?);
    assert!(b.until(LONG, |u| u.got_from("alice") == [1]).await?);

    // Partition long enough for both relays to see the link die; publish on both sides.
    mesh.partition(AP, EU, true)?;
    let start = Instant::now();
    let mut n = 2;
    while start.elapsed() < Duration::from_secs(4) {
        a.publish(n).await?;
        b.publish(100 + n).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = n - 1;
    a.pump(Duration::ZERO).await?;
    assert!(
        a.got_from("bob").len() < (last as usize),
        "the partition held: bob's later messages did not reach alice"
    );
    mesh.partition(AP, EU, false)?;
    let healed = Instant::now();
    assert!(
        a.until(Duration::from_secs(20), |u| u.got_from("bob").len()
            >= last as usize)
            .await?,
        "alice got {:?}",
        a.got_from("bob")
    );
    assert!(
        b.until(Duration::from_secs(20), |u| u.got_from("alice").len()
            >= last as usize)
            .await?
    );
    eprintln!("both sides caught up {:?} after the heal", healed.elapsed());
    a.pump(Duration::from_secs(1)).await?;
    b.pump(Duration::from_millis(200)).await?;
    assert_eq!(
        a.got_from("bob"),
        exactly(101..=100 + last),
        "no loss, no duplicate"
    );
    assert_eq!(
        b.got_from("alice"),
        exactly(1..=last),
        "no loss, no duplicate"
    );
    let want: BTreeMap<String, String> =
        [("alice".into(), AP.into()), ("bob".into(), EU.into())].into();
    assert_eq!(member_regions(&mut a).await?, want);
    assert_eq!(member_regions(&mut b).await?, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_grace_period_loses_no_message() -> Result<()> {
    let timing = MeshTiming {
        grace_ms: 2_000,
        ..MeshTiming::default()
    };
    let mesh = TestMesh::start(&[AP, EU], 80, 1, timing).await?;
    mesh.wait_links(LONG).await?;
    let (mut a, mut b) = two_users(&mesh).await?;
    assert!(b.until(LONG, |u| u.vector.contains_key(AP)).await?);
    mesh.partition(AP, EU, true)?;
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < Duration::from_secs(7) {
        a.publish(n).await?;
        b.publish(100 + n).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = n - 1;
    // Both sides declared the other down meanwhile.
    let gone = a
        .client
        .drain_events("left", Duration::from_millis(100))
        .await?;
    assert!(
        gone.iter()
            .any(|e| e["user"] == "bob" && e["reason"] == "region_down"),
        "{gone:?}"
    );
    mesh.partition(AP, EU, false)?;
    assert!(
        a.until(Duration::from_secs(20), |u| u.got_from("bob").len()
            >= last as usize)
            .await?
    );
    assert!(
        b.until(Duration::from_secs(20), |u| u.got_from("alice").len()
            >= last as usize)
            .await?
    );
    a.pump(Duration::from_secs(1)).await?;
    b.pump(Duration::from_millis(200)).await?;
    assert_eq!(
        a.got_from("bob"),
        exactly(101..=100 + last),
        "no loss, no duplicate"
    );
    assert_eq!(
        b.got_from("alice"),
        exactly(1..=last),
        "no loss, no duplicate"
    );
    // The snapshot on reconnect brought the members back.
    let want: BTreeMap<String, String> =
        [("alice".into(), AP.into()), ("bob".into(), EU.into())].into();
    assert_eq!(member_regions(&mut a).await?, want);
    assert_eq!(member_regions(&mut b).await?, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_is_reported_down_and_its_rehomed_user_resumes() -> Result<()> {
    let timing = MeshTiming {
        grace_ms: 3_000,
        ..MeshTiming::default()
    };
    let mut mesh = TestMesh::start(&[AP, EU], 80, 1, timing).await?;
    mesh.wait_links(LONG).await?;
    let (mut a, mut b) = two_users(&mesh).await?;
    let mut c = User::connect("carol", &mesh.region(EU)?.node.ws_url()).await?;
    c.join(ROOM).await?;
    assert!(
        a.until(LONG, |u| u.vector.get(EU).is_some_and(|p| p.1 >= 2))
            .await?
    );
    // Messages from alice that carol gets in eu-central.
    for n in 1..=5 {
        a.publish(n).await?;
    }
    assert!(c.until(LONG, |u| u.got_from("alice").len() >= 5).await?);
    b.pump(Duration::ZERO).await?;

    // eu-central dies: every process of it.
    mesh.region_mut(EU)?.kill_all()?;
    let killed = Instant::now();
    drop(b);
    // alice goes on publishing while carol re-homes.
    for n in 6..=8 {
        a.publish(n).await?;
    }
    let point = c.resume_point(ROOM);
    let (client, hello) = Client::hello(
        &mesh.region(AP)?.node.ws_url(),
        &token("carol"),
        json!([point]),
    )
    .await?;
    let resumed = &hello["resumed"][0];
    assert_eq!(resumed["status"], "recovered", "{hello}");
    c.client = client;
    c.region = AP.into();
    c.epoch = resumed["epoch"].as_str().unwrap_or_default().to_owned();
    c.seq = resumed["seq"].as_u64().unwrap_or(0);
    assert!(c.until(LONG, |u| u.got_from("alice").len() >= 8).await?);
    c.pump(Duration::from_millis(300)).await?;
    assert_eq!(
        c.got_from("alice"),
        exactly(1..=8),
        "resumed without loss or duplicate"
    );

    // After the grace period, alice sees bob leave with region_down; never carol.
    let mut lefts = Vec::new();
    let mut waited = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for e in a
            .client
            .drain_events("left", Duration::from_millis(200))
            .await?
        {
            lefts.push(e);
        }
        if lefts.iter().any(|e| e["user"] == "bob") {
            waited.push(killed.elapsed());
            break;
        }
    }
    let bob_left = lefts
        .iter()
        .find(|e| e["user"] == "bob")
        .context("alice never saw bob leave")?;
    assert_eq!(bob_left["reason"], "region_down", "{bob_left}");
    eprintln!(
        "region_down {:?} after the region was killed (grace 3 s, link timeout 2 s)",
        waited
    );
    // Give a late, wrong `left` for carol the time to show up.
    lefts.extend(
        a.client
            .drain_events("left", Duration::from_secs(1))
            .await?,
    );
    assert!(
        !lefts.iter().any(|e| e["user"] == "carol"),
        "a re-homed user is not reported as gone: {lefts:?}"
    );
    let members = member_regions(&mut a).await?;
    assert_eq!(
        members,
        [("alice".into(), AP.into()), ("carol".into(), AP.into())].into()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_relay_takes_over_and_replication_goes_on() -> Result<()> {
    let mut mesh = TestMesh::start(&[AP, EU], 80, 2, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    {
        let ap = mesh.region(AP)?;
        assert!(
            ap.relays[0].active && !ap.relays[1].active,
            "one active, one standby"
        );
        let standby = ap.relays[1].metrics().await?;
        assert!(standby.contains("meridian_relay_active 0"), "{standby}");
    }
    let (mut a, mut b) = two_users(&mesh).await?;
    assert!(b.until(LONG, |u| u.vector.contains_key(AP)).await?);
    a.publish(1).await?;
    assert!(b.until(LONG, |u| u.got_from("alice") == [1]).await?);

    // kill -9 the active relay of ap-southeast; publish meanwhile.
    let killed = Instant::now();
    mesh.region(AP)?.relays[0].signal("KILL")?;
    mesh.region_mut(AP)?.relays[0].active = false;
    for n in 2..=6 {
        a.publish(n).await?;
        b.publish(100 + n).await?;
    }
    let ap = mesh.region_mut(AP)?;
    ap.relays[1].wait_state(Duration::from_secs(10), true)?;
    let took_over = killed.elapsed();
    mesh.wait_links(LONG).await?;
    eprintln!(
        "standby active {took_over:?} after the kill, links up {:?} after it",
        killed.elapsed()
    );
    for n in 7..=10 {
        a.publish(n).await?;
        b.publish(100 + n).await?;
    }
    assert!(b.until(LONG, |u| u.got_from("alice").len() >= 10).await?);
    assert!(a.until(LONG, |u| u.got_from("bob").len() >= 9).await?);
    a.pump(Duration::from_millis(500)).await?;
    b.pump(Duration::from_millis(200)).await?;
    assert_eq!(b.got_from("alice"), exactly(1..=10));
    assert_eq!(a.got_from("bob"), exactly(102..=110));
    let seen: BTreeSet<u64> = b.got_from("alice").into_iter().collect();
    assert_eq!(seen.len(), 10, "no duplicate after the takeover");
    // Nothing was even sent twice: the new relay resumed from eu-central's watermarks.
    let eu_metrics = mesh.region(EU)?.relays[0].metrics().await?;
    assert_eq!(
        metric(
            &eu_metrics,
            "meridian_relay_applied_total",
            &["peer=\"ap-southeast\"", "outcome=\"duplicate\""]
        ),
        0.0,
        "{eu_metrics}"
    );
    Ok(())
}

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_gets_a_room_only_while_it_has_members_there() -> Result<()> {
    let mesh = TestMesh::start(&[AP, EU], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    let followed = |region: &'static str, peer: &'static str| {
        let mesh = &mesh;
        async move {
            let text = mesh.region(region)?.relays[0].metrics().await?;
            Ok::<f64, anyhow::Error>(metric(
                &text,
                "meridian_relay_followed_rooms",
                &[&format!("peer=\"{peer}\"")],
            ))
        }
    };
    // Only ap-southeast has members: eu-central follows nothing from it.
    let mut a = User::connect("alice", &mesh.region(AP)?.node.ws_url()).await?;
    a.join(ROOM).await?;
    for n in 1..=5 {
        a.publish(n).await?;
    }
    // Negative check: eu-central must not start following within a second of the publishes
    // (an interest announcement would reach it well within that).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        followed(AP, EU).await?,
        0.0,
        "eu-central has no interest in the room"
    );
    let eu = mesh.region(EU)?.relays[0].metrics().await?;
    assert_eq!(
        metric(
            &eu,
            "meridian_relay_applied_total",
            &["peer=\"ap-southeast\"", "outcome=\"applied\""]
        ),
        0.0,
        "no event of the room reached eu-central: {eu}"
    );
    // A member in eu-central: now it follows; after it leaves, the interest is withdrawn
    // (linger 2 s in the tests).
    let mut b = User::connect("bob", &mesh.region(EU)?.node.ws_url()).await?;
    b.join(ROOM).await?;
    let deadline = Instant::now() + LONG;
    while followed(AP, EU).await? != 1.0 {
        ensure!(
            Instant::now() < deadline,
            "eu-central never followed the room"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(b.client
        .request(json!({"op": "leave", "room": ROOM}))
        .await?)?;
    let left_at = Instant::now();
    while followed(AP, EU).await? != 0.0 {
        ensure!(
            left_at.elapsed() < Duration::from_secs(10),
            "the interest was never withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "interest withdrawn {:?} after the last member left",
        left_at.elapsed()
    );
    assert!(
        left_at.elapsed() >= Duration::from_millis(1900),
        "hysteresis: not before the linger"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_state_converges_across_regions() -> Result<()> {
    let mesh = TestMesh::start(&[AP, EU], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    let (mut a, mut b) = two_users(&mesh).await?;
    assert!(b.until(LONG, |u| u.vector.contains_key(AP)).await?);
    // Concurrent writes of one key on both sides, and a delete: both end with one value.
    let set = |v: &str| json!({"op": "state_set", "room": ROOM, "key": "topic", "value": v});
    ok(a.client.request(set("from-ap")).await?)?;
    ok(b.client.request(set("from-eu")).await?)?;
    ok(a.client
        .request(json!({"op": "state_set", "room": ROOM, "key": "gone", "value": 1}))
        .await?)?;
    // bob deletes the key once its write reached eu-central.
    let deadline = Instant::now() + LONG;
    loop {
        let e = b.client.event_within("state_changed", LONG).await?;
        if e["key"] == "gone" {
            break;
        }
        ensure!(Instant::now() < deadline, "alice's write never reached bob");
    }
    ok(b.client
        .request(json!({"op": "state_delete", "room": ROOM, "key": "gone"}))
        .await?)?;
    let deadline = Instant::now() + LONG;
    loop {
        let (x, y) = (
            state_of(&mut a.client).await?,
            state_of(&mut b.client).await?,
        );
        if x == y && x.iter().any(|(k, _)| k == "topic") && !x.iter().any(|(k, _)| k == "gone") {
            eprintln!("converged on {x:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("state did not converge: ap {x:?} vs eu {y:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
