//! Cross-region races and faults found by the hardening round (issue 20): real
//! `redis-server`, `region-node` and `interregion-relay` processes per region, the impairment
//! proxy between the relays (80 ms emulated RTT). Loopback only; every wait is bounded.
//!
//! - a message published right after a remote join was acknowledged reaches the joiner;
//! - a region whose Redis restarts empty gets every remote member and state key back;
//! - a dead region's users leave `presence` within 5 s, while `left` waits for the grace;
//! - direct messages sent while a link is down arrive after it heals;
//! - a frozen (SIGSTOP) active relay: the standby survives, the frozen one steps down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use meridian_e2e::mesh::{MeshTiming, TestMesh};
use meridian_e2e::{ok, token, Client};
use serde_json::{json, Value};

const US: &str = "us-east";
const EU: &str = "eu-central";
const AP: &str = "ap-southeast";
const LONG: Duration = Duration::from_secs(15);

async fn connect(mesh: &TestMesh, region: &str, user: &str) -> Result<Client> {
    let (c, _) =
        Client::hello(&mesh.region(region)?.node.ws_url(), &token(user), json!([])).await?;
    Ok(c)
}

async fn join(c: &mut Client, room: &str) -> Result<Value> {
    ok(c.request(json!({"op": "join", "room": room})).await?)
}

async fn members(c: &mut Client, room: &str) -> Result<BTreeSet<String>> {
    let r = ok(c.request(json!({"op": "members", "room": room})).await?)?;
    Ok(r["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user"].as_str().map(str::to_owned))
        .collect())
}

async fn state(c: &mut Client, room: &str) -> Result<BTreeSet<(String, String)>> {
    let r = ok(c.request(json!({"op": "state_get", "room": room})).await?)?;
    Ok(r["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_owned(),
                e["value"].to_string(),
            )
        })
        .collect())
}

async fn online(c: &mut Client, user: &str) -> Result<bool> {
    let r = ok(c
        .request(json!({"op": "presence", "users": [user]}))
        .await?)?;
    Ok(r["users"][0]["online"].as_bool().unwrap_or(false))
}

/// Issue 20 item 5: Bob joins in us-east; the moment his `join` is acknowledged, Alice
/// publishes in eu-central. Before the fix the origin started forwarding the room from the
/// moment it learnt of us-east's interest (a WAN one-way trip later), and 3 of 5 such messages
/// never reached Bob. Every round uses a new room, so every round is a first follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_published_right_after_a_remote_join_reaches_the_joiner() -> Result<()> {
    const ROUNDS: u64 = 50;
    let mesh = TestMesh::start(&[US, EU], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    let mut alice = connect(&mesh, EU, "alice").await?;
    let mut bob = connect(&mesh, US, "bob").await?;
    let mut lost = Vec::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let room = format!("race-{round}");
        join(&mut alice, &room).await?;
        join(&mut bob, &room).await?;
        // 0 ms after Bob's ok.
        ok(alice
            .request(json!({"op": "publish", "room": room, "data": {"n": round}}))
            .await?)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = false;
        while !got && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match bob.event_within("message", left).await {
                Ok(e) => got = e["room"] == room.as_str() && e["data"]["n"] == round,
                Err(_) => break,
            }
        }
        if !got {
            lost.push(round);
        }
        // Keep the connections' memberships small.
        ok(alice.request(json!({"op": "leave", "room": room})).await?)?;
        ok(bob.request(json!({"op": "leave", "room": room})).await?)?;
    }
    eprintln!(
        "join race: {ROUNDS} rounds at 0 ms in {:.1} s, lost {} ({lost:?})",
        started.elapsed().as_secs_f64(),
        lost.len()
    );
    ensure!(
        lost.is_empty(),
        "{} of {ROUNDS} messages published right after the remote join never reached the joiner: rounds {lost:?}",
        lost.len()
    );
    Ok(())
}

/// Issue 20 item 7: us-east's Redis is killed and comes back empty on the same port, several
/// times. Its member list of the room must list both ap-southeast members again and every
/// state key must be back, within the bound of docs/relay.md ("Redis restarted empty"),
/// counted from the moment the empty server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_redis_restarts_empty_gets_every_remote_member_and_state_key_back(
) -> Result<()> {
    const ROOM: &str = "stage";
    const ROUNDS: usize = 3;
    const BOUND: Duration = Duration::from_secs(8);
    let mut mesh = TestMesh::start(&[US, AP], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    let mut ap1 = connect(&mesh, AP, "ap-one").await?;
    let mut ap2 = connect(&mesh, AP, "ap-two").await?;
    join(&mut ap1, ROOM).await?;
    join(&mut ap2, ROOM).await?;
    ok(ap1
        .request(json!({"op": "state_set", "room": ROOM, "key": "layout", "value": {"grid": 2}}))
        .await?)?;
    let mut us1 = connect(&mesh, US, "us-one").await?;
    join(&mut us1, ROOM).await?;
    ok(us1
        .request(json!({"op": "state_set", "room": ROOM, "key": "topic", "value": "drills"}))
        .await?)?;
    let want_members: BTreeSet<String> = ["ap-one", "ap-two", "us-one"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let want_state: BTreeSet<(String, String)> = [
        ("layout".to_owned(), json!({"grid": 2}).to_string()),
        ("topic".to_owned(), json!("drills").to_string()),
    ]
    .into();
    // Converged before the fault.
    let deadline = Instant::now() + LONG;
    loop {
        if members(&mut us1, ROOM).await? == want_members
            && state(&mut us1, ROOM).await? == want_state
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "never converged before the fault"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(us1);
    let mut took = Vec::new();
    for round in 0..ROUNDS {
        let us = mesh.region_mut(US)?;
        us.kill_redis()?;
        // The fault: us-east's Redis stays down for 3 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        us.restart_redis_empty()?;
        let back = Instant::now();
        // The us-east member comes back (its old connection may have been closed when the
        // node lost its lease with the data): a new connection, and the join again.
        let url = mesh.region(US)?.node.ws_url();
        let mut us1 = loop {
            if let Ok((mut c, _)) = Client::hello(&url, &token("us-one"), json!([])).await {
                if join(&mut c, ROOM).await.is_ok() {
                    break c;
                }
            }
            ensure!(
                back.elapsed() < BOUND,
                "round {round}: cannot rejoin us-east"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            let m = members(&mut us1, ROOM).await?;
            let s = state(&mut us1, ROOM).await?;
            if m == want_members && s == want_state {
                break;
            }
            if back.elapsed() > BOUND {
                bail!("round {round}: {BOUND:?} after us-east's Redis came back empty it has members {m:?} and state {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        took.push(back.elapsed());
        drop(us1);
    }
    eprintln!("redis restart empty: converged after {took:?} (bound {BOUND:?})");
    Ok(())
}

/// Issue 20 item 10: when a region dies, its users must be hidden from `presence` elsewhere
/// within 5 s, while their membership stays until the grace period declares the region down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_regions_users_leave_presence_within_5_s_and_membership_waits_for_the_grace(
) -> Result<()> {
    const ROOM: &str = "watch";
    // The default link timers (keep-alive 1 s, idle timeout 4 s: a lost link is declared
    // within 5 s) and presence lease (4 s).
    let timing = MeshTiming {
        grace_ms: 12_000,
        keep_alive_ms: 1_000,
        idle_timeout_ms: 4_000,
        presence_ttl_ms: 4_000,
        ..MeshTiming::default()
    };
    let mut mesh = TestMesh::start(&[US, EU], 80, 1, timing).await?;
    mesh.wait_links(LONG).await?;
    let mut eve = connect(&mesh, EU, "eve").await?;
    join(&mut eve, ROOM).await?;
    let mut sam = connect(&mesh, US, "sam").await?;
    join(&mut sam, ROOM).await?;
    let deadline = Instant::now() + LONG;
    while !(online(&mut sam, "eve").await? && members(&mut sam, ROOM).await?.contains("eve")) {
        ensure!(Instant::now() < deadline, "eve never visible from us-east");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.region_mut(EU)?.kill_all()?;
    let died = Instant::now();
    while online(&mut sam, "eve").await? {
        ensure!(
            died.elapsed() < Duration::from_secs(5),
            "eve still online 5 s after her region died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hidden = died.elapsed();
    ensure!(
        members(&mut sam, ROOM).await?.contains("eve"),
        "eve left the room before the grace period"
    );
    let left = sam.event_within("left", LONG).await?;
    let gone = died.elapsed();
    ensure!(
        left["user"] == "eve" && left["reason"] == "region_down",
        "{left}"
    );
    ensure!(
        gone >= Duration::from_secs(12),
        "region_down after {gone:?}"
    );
    eprintln!(
        "presence: dead region's user offline after {:.2} s; left region_down after {:.1} s",
        hidden.as_secs_f64(),
        gone.as_secs_f64()
    );
    Ok(())
}

/// Issue 20 item 10: a direct message sent while the link to the recipient's region is down
/// is held by the relay and delivered, in order, when the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_sent_while_a_link_is_down_arrive_after_it_heals() -> Result<()> {
    const ROOM: &str = "call";
    // Eve stays visible to presence well past the link's loss (2.5 s here), so `send` is
    // answered by the relay (not `user_offline`) while the link is down.
    let timing = MeshTiming {
        presence_ttl_ms: 10_000,
        ..MeshTiming::default()
    };
    let mesh = TestMesh::start(&[US, EU], 80, 1, timing).await?;
    mesh.wait_links(LONG).await?;
    let mut eve = connect(&mesh, EU, "eve").await?;
    join(&mut eve, ROOM).await?;
    let mut sam = connect(&mesh, US, "sam").await?;
    join(&mut sam, ROOM).await?;
    let deadline = Instant::now() + LONG;
    while !online(&mut sam, "eve").await? {
        ensure!(Instant::now() < deadline, "eve never online from us-east");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let send = |i: u64| json!({"op": "send", "to": "eve", "data": {"kind": "ice", "i": i}});
    ok(sam.request(send(0)).await?)?;
    assert_eq!(eve.event_within("direct", LONG).await?["data"]["i"], 0);

    mesh.partition(US, EU, true)?;
    // Wait until the us-east relay has seen the link go down, then send.
    let relay = &mesh.region(US)?.relays[0];
    let deadline = Instant::now() + LONG;
    loop {
        let m = relay.metrics().await?;
        if m.lines()
            .any(|l| l.starts_with("meridian_relay_link_up{") && l.ends_with(" 0"))
        {
            break;
        }
        ensure!(Instant::now() < deadline, "link never went down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..=5 {
        // Eve is hidden from presence `presence_ttl` after the link went quiet; these are
        // sent before that, so the relay takes (and holds) them.
        let r = sam.request(send(i)).await?;
        ensure!(r["type"] == "ok", "send {i} while the link is down: {r}");
    }
    mesh.partition(US, EU, false)?;
    let mut got = Vec::new();
    for _ in 1..=5 {
        got.push(eve.event_within("direct", LONG).await?["data"]["i"].as_u64());
    }
    assert_eq!(got, (1..=5).map(Some).collect::<Vec<_>>());
    Ok(())
}

/// Issue 20, "also found": SIGSTOP of the active relay. The standby takes the lease but the
/// frozen relay still holds the region's QUIC port: the standby must keep trying (not exit),
/// the frozen relay must step down when it wakes, and the standby then binds and runs the
/// links. Only the active relay answers `/readyz` 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_relay_steps_down_on_waking_and_the_standby_takes_over() -> Result<()> {
    let mut mesh = TestMesh::start(&[US, EU], 80, 2, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    {
        let us = mesh.region(US)?;
        ensure!(us.relays[0].active && !us.relays[1].active);
        ensure!(
            us.relays[0].readyz().await? == 200,
            "active relay not ready"
        );
        ensure!(
            us.relays[1].readyz().await? == 503,
            "a standby relay must not be ready"
        );
    }
    mesh.region(US)?.relays[0].signal("STOP")?;
    // Lease 1.5 s, renew 0.3 s: the standby holds the lease after ~2 s; keep it frozen well
    // past that, so the standby meets the taken port many times.
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        mesh.region_mut(US)?.relays[1].running(),
        "the standby exited while the frozen relay held the port"
    );
    ensure!(
        mesh.region(US)?.relays[1].readyz().await? == 503,
        "not ready while it cannot bind the region's QUIC port"
    );
    mesh.region(US)?.relays[0].signal("CONT")?;
    let woke = Instant::now();
    let status = mesh.region_mut(US)?.relays[0].wait_exit(Duration::from_secs(10))?;
    eprintln!(
        "frozen relay stepped down {:.2} s after waking ({status})",
        woke.elapsed().as_secs_f64()
    );
    {
        let us = mesh.region_mut(US)?;
        us.relays[0].active = false;
        us.relays[1].wait_state(Duration::from_secs(10), true)?;
        ensure!(
            us.relays[1].readyz().await? == 200,
            "new active relay not ready"
        );
    }
    mesh.wait_links(LONG).await?;
    // Replication goes on through the new relay.
    let mut eve = connect(&mesh, EU, "eve").await?;
    join(&mut eve, "after").await?;
    let mut sam = connect(&mesh, US, "sam").await?;
    join(&mut sam, "after").await?;
    ok(sam
        .request(json!({"op": "publish", "room": "after", "data": {"n": 1}}))
        .await?)?;
    let m = eve.event_within("message", LONG).await?;
    ensure!(m["data"]["n"] == 1, "{m}");
    Ok(())
}

/// Issue 20 item 10: the relay's replica store follows a Sentinel failover like the nodes'
/// store: after `SENTINEL FAILOVER` (the old primary stays up, demoted), its writes land on the
/// new primary and its feed hears the new primary's channels, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_replica_store_follows_a_sentinel_failover() -> Result<()> {
    use meridian_e2e::{redis_info, SentinelGroup, MASTER_NAME};
    use region_state::replica::{Feed, ReplicaConfig, ReplicaStore};
    use region_state::{RedisEndpoint, SentinelEndpoint, INTEREST_CHANNEL};
    const BOUND: Duration = Duration::from_secs(10);

    let group = SentinelGroup::start(1)?;
    let store = ReplicaStore::connect(ReplicaConfig {
        endpoint: RedisEndpoint::Sentinel(SentinelEndpoint {
            sentinels: group.sentinel_urls(),
            master_name: MASTER_NAME.into(),
            db: 0,
            username: None,
            password: None,
            tls: false,
        }),
        region: US.into(),
        history_len: 100,
        history_ttl: Duration::from_secs(600),
        idempotency_window: Duration::from_secs(300),
    })
    .await?;
    let (tx, mut feed) = tokio::sync::mpsc::channel(256);
    let _feed_task = store.start_feed(tx);
    ensure!(
        store
            .hold_active("relay-a", Duration::from_secs(30))
            .await?
    );
    let old = group.current_primary_port()?;
    group.force_failover()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        if let Ok(p) = group.current_primary_port() {
            if p != old && redis_info(p, "replication")?.contains("role:master") {
                break p;
            }
        }
        ensure!(Instant::now() < deadline, "no failover within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let switched = Instant::now();
    // Writes: a key nobody wrote before the failover must appear on the new primary.
    let client = redis::Client::open(format!("redis://127.0.0.1:{new}/"))?;
    let mut direct = client.get_multiplexed_async_connection().await?;
    loop {
        let _ = store.renew_remote_region(EU, Duration::from_secs(30)).await;
        let on_new: Option<String> = redis::cmd("GET")
            .arg(format!("mn:{{rl-{EU}}}:lease"))
            .query_async(&mut direct)
            .await?;
        if on_new.is_some() {
            break;
        }
        ensure!(
            switched.elapsed() < BOUND,
            "the replica store still does not write to the new primary {BOUND:?} after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes_after = switched.elapsed();
    // The feed: an interest announcement published on the new primary arrives.
    loop {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(INTEREST_CHANNEL)
            .arg("1 mr:{lobby}:ev")
            .query_async(&mut direct)
            .await?;
        let heard = tokio::time::timeout(Duration::from_millis(200), async {
            while let Some(item) = feed.recv().await {
                if matches!(item, Feed::Interest { ref room, .. } if room.as_str() == "lobby") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if heard {
            break;
        }
        ensure!(
            switched.elapsed() < BOUND,
            "the relay feed does not hear the new primary {BOUND:?} after the failover"
        );
    }
    eprintln!(
        "sentinel failover: relay store writes on the new primary {:.2} s after the switch, feed {:.2} s",
        writes_after.as_secs_f64(),
        switched.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Issue 20, "also found": a region's Redis (with AOF, as `meridian up` runs it) is killed
/// while another region publishes into a shared room, and comes back with its data. The
/// messages published meanwhile could not be applied there; the relays must re-send them
/// from the watermarks the region still has. Before, the failed applies asked for a snapshot
/// "as of now" (the watermark could not be read) and nothing asked again once Redis was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_a_regions_redis_was_down_are_resent_when_it_is_back() -> Result<()>
{
    const ROOM: &str = "stage";
    const BOUND: Duration = Duration::from_secs(10);
    let mut mesh = TestMesh::start(&[US, AP], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    let mut us1 = connect(&mesh, US, "us-one").await?;
    join(&mut us1, ROOM).await?;
    let mut ap1 = connect(&mesh, AP, "ap-one").await?;
    join(&mut ap1, ROOM).await?;
    let publish = |n: u64| json!({"op": "publish", "room": ROOM, "data": {"n": n}});
    // us-east's Redis persists from now on (append-only file, fsync every second).
    let port = mesh.region(US)?.redis.port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let (_, dir): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query_async(&mut admin)
        .await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("yes")
        .query_async(&mut admin)
        .await?;
    let deadline = Instant::now() + LONG;
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut admin)
            .await?;
        if info.contains("aof_enabled:1") && info.contains("aof_rewrite_in_progress:0") {
            break;
        }
        ensure!(Instant::now() < deadline, "AOF never switched on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 1..=5 {
        ok(ap1.request(publish(n)).await?)?;
    }
    for _ in 1..=5 {
        us1.event_within("message", LONG).await?;
    }
    // Past the fsync of the last applied event (fsync every second; the relay's own writes
    // after the delivery, such as its watermarks, are not observable from here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(admin);
    mesh.region_mut(US)?.kill_redis()?;
    for n in 100..110 {
        ok(ap1.request(publish(n)).await?)?;
    }
    // The fault: us-east's Redis stays down for 2 s while messages are published.
    tokio::time::sleep(Duration::from_secs(2)).await;
    mesh.region_mut(US)?
        .restart_redis_from_aof(std::path::Path::new(&dir))?;
    let back = Instant::now();
    let mut admin = client.get_multiplexed_async_connection().await?;
    let want: BTreeSet<u64> = (100..110).collect();
    loop {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("mr:{{{ROOM}}}:hist"))
            .arg("-")
            .arg("+")
            .query_async(&mut admin)
            .await?;
        let got: BTreeSet<u64> = entries
            .ids
            .iter()
            .filter_map(|e| match e.map.get("e") {
                Some(redis::Value::BulkString(b)) => serde_json::from_slice::<Value>(b).ok(),
                _ => None,
            })
            .filter(|f| f["type"] == "message" && f["from"] == "ap-one")
            .filter_map(|f| f["data"]["n"].as_u64())
            .filter(|n| *n >= 100)
            .collect();
        if got == want {
            break;
        }
        ensure!(
            back.elapsed() < BOUND,
            "{BOUND:?} after us-east's Redis came back, its history has {got:?} of the messages published while it was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "redis down with AOF: the 10 messages published meanwhile re-sent {:.2} s after it was back",
        back.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A client re-homed into a region where the room has no members yet resumes with its version
/// vector and gets every message it missed, even those published well before it arrived (more
/// than the relays' join-skew allowance): the node records the resumer's positions before the
/// join, and the relay that starts following the room asks the origin to replay from there
/// (before, the replay started at the first local join less 500 ms, and the messages of the
/// seconds the client was away were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumer_rehomed_into_a_region_without_members_gets_everything_it_missed() -> Result<()> {
    const ROOM: &str = "rehome";
    let mesh = TestMesh::start(&[US, EU], 80, 1, MeshTiming::default()).await?;
    mesh.wait_links(LONG).await?;
    let mut alice = connect(&mesh, EU, "alice").await?;
    let mut bob = connect(&mesh, EU, "bob").await?;
    join(&mut alice, ROOM).await?;
    let joined = join(&mut bob, ROOM).await?;
    let epoch = joined["epoch"].as_str().unwrap_or_default().to_owned();
    let publish = |n: u64| json!({"op": "publish", "room": ROOM, "data": {"n": n}});
    for n in 1..=10 {
        ok(alice.request(publish(n)).await?)?;
    }
    // Bob reads up to message 10 in eu-central: local events, positioned in eu-central's seq.
    let mut seq = joined["seq"].as_u64().unwrap_or(0);
    loop {
        let e = bob.event_within("message", LONG).await?;
        seq = seq.max(e["seq"].as_u64().unwrap_or(0));
        if e["data"]["n"] == 10 {
            break;
        }
    }
    drop(bob);
    // Published while Bob is away, long before he joins anywhere else.
    for n in 11..=20 {
        ok(alice.request(publish(n)).await?)?;
    }
    // The property needs the time to pass: these messages are older than the relays' 500 ms
    // join-skew allowance when Bob arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Bob re-homes to us-east, where nobody is in the room, with his vector.
    let resume = json!([{"room": ROOM, "epoch": epoch, "seq": seq,
        "origins": [{"region": EU, "epoch": epoch, "seq": seq}]}]);
    let (mut bob, hello) =
        Client::hello(&mesh.region(US)?.node.ws_url(), &token("bob"), resume).await?;
    let status = hello["resumed"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(status == "recovered", "resume in us-east: {hello}");
    for n in 21..=30 {
        ok(alice.request(publish(n)).await?)?;
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + LONG;
    while got.last() != Some(&30) && Instant::now() < deadline {
        if let Ok(e) = bob
            .event_within("message", Duration::from_millis(500))
            .await
        {
            got.push(e["data"]["n"].as_u64().unwrap_or(0));
        }
    }
    let want: Vec<u64> = (11..=30).collect();
    ensure!(
        got == want,
        "bob, re-homed into us-east, got {got:?}; expected 11..=30 once each, in order"
    );
    Ok(())
}
