//! End-to-end tests of one region: a real redis-server and two region-node processes.

use std::time::{Duration, Instant};

use anyhow::Result;
use meridian_e2e::*;
use serde_json::{json, Value};

struct Region {
    redis: RedisServer,
    n1: NodeProcess,
    n2: NodeProcess,
}

fn region() -> Result<Region> {
    region_with("")
}

fn region_with(extra: &str) -> Result<Region> {
    let redis = RedisServer::start()?;
    let n1 = NodeProcess::start("test-region", &redis.url(), extra)?;
    let n2 = NodeProcess::start("test-region", &redis.url(), extra)?;
    Ok(Region { redis, n1, n2 })
}

async fn join(c: &mut Client, room: &str) -> Result<Value> {
    ok(c.request(json!({"op": "join", "room": room})).await?)
}

/// 1. A on node 1 and B on node 2 meet in room R; each sees the other's `joined`; messages
///    cross nodes exactly once with sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_flow_across_two_nodes() -> Result<()> {
    let r = region()?;
    let (mut a, _) = Client::hello(&r.n1.ws_url(), &token("alice"), json!([])).await?;
    let (mut b, hello_b) = Client::hello(&r.n2.ws_url(), &token("bob"), json!([])).await?;
    assert_eq!(hello_b["user"], "bob");
    assert_eq!(hello_b["region"], "test-region");
    // /readyz reports the region's load over both nodes (for the geo-router's health checks).
    // Each node records its count when it renews its lease (every 500 ms here).
    let reported = eventually(Duration::from_secs(3), || async {
        let Ok((200, body)) = r.n1.http_get("/readyz").await else {
            return false;
        };
        let ready: Value = serde_json::from_str(&body).unwrap_or_default();
        (ready["connections"].as_u64(), ready["nodes"].as_u64()) == (Some(2), Some(2))
    })
    .await;
    assert!(reported, "readyz reports 2 connections over 2 nodes");

    join(&mut b, "room-r").await?;
    let ja = join(&mut a, "room-r").await?;
    assert_eq!(ja["first"], true);
    let joined = b.event("joined").await?;
    assert_eq!(
        (joined["user"].as_str(), joined["room"].as_str()),
        (Some("alice"), Some("room-r"))
    );
    // A joined after B: A learns of B from `members` (and B's `joined` came before A's join).
    let members = ok(a
        .request(json!({"op": "members", "room": "room-r"}))
        .await?)?;
    let mut names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["alice", "bob"]);
    assert!(members["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["region"] == "test-region"));

    let pa = ok(a
        .request(json!({"op": "publish", "room": "room-r", "data": {"text": "hi bob"}}))
        .await?)?;
    let seq_a = pa["seq"].as_u64().unwrap();
    let m = b.event("message").await?;
    assert_eq!(
        (
            m["from"].as_str(),
            m["data"]["text"].as_str(),
            m["seq"].as_u64()
        ),
        (Some("alice"), Some("hi bob"), Some(seq_a))
    );
    let pb = ok(b
        .request(json!({"op": "publish", "room": "room-r", "data": {"text": "hi alice"}}))
        .await?)?;
    assert!(pb["seq"].as_u64().unwrap() > seq_a);
    let mut got_a = Vec::new();
    for e in a
        .drain_events("message", Duration::from_millis(500))
        .await?
    {
        if e["from"] == "bob" {
            got_a.push(e);
        }
    }
    assert_eq!(got_a.len(), 1, "exactly once: {got_a:?}");
    assert_eq!(got_a[0]["data"]["text"], "hi alice");
    let dup_b: Vec<Value> = b
        .drain_events("message", Duration::from_millis(300))
        .await?
        .into_iter()
        .filter(|e| e["from"] == "alice")
        .collect();
    assert!(dup_b.is_empty(), "no duplicate for B: {dup_b:?}");

    // Second tab of A: no new `joined`; closing one tab sends no `left`.
    let (mut a2, _) = Client::hello(&r.n2.ws_url(), &token("alice"), json!([])).await?;
    assert_eq!(join(&mut a2, "room-r").await?["first"], false);
    drop(a2);
    let lefts = b.drain_events("left", Duration::from_millis(700)).await?;
    assert!(
        lefts.is_empty(),
        "a second tab closing is not a leave: {lefts:?}"
    );
    ok(a.request(json!({"op": "leave", "room": "room-r"})).await?)?;
    let left = b.event("left").await?;
    assert_eq!(
        (left["user"].as_str(), left["reason"].as_str()),
        (Some("alice"), Some("leave"))
    );

    // Presence and room state across nodes.
    let p = ok(b
        .request(json!({"op": "presence", "users": ["alice", "nobody"]}))
        .await?)?;
    assert_eq!(p["users"][0]["online"], true);
    assert_eq!(p["users"][1]["online"], false);
    ok(b.request(json!({"op": "state_set", "room": "room-r", "key": "topic", "value": "launch", "if_version": 0})).await?)?;
    join(&mut a, "room-r").await?;
    let st = ok(a
        .request(json!({"op": "state_get", "room": "room-r", "key": "topic"}))
        .await?)?;
    assert_eq!(
        (
            st["entries"][0]["value"].as_str(),
            st["entries"][0]["version"].as_u64()
        ),
        (Some("launch"), Some(1))
    );
    let conflict = a.request(json!({"op": "state_set", "room": "room-r", "key": "topic", "value": "x", "if_version": 0})).await?;
    assert_eq!(error_code(&conflict), "version_conflict");
    drop(r.redis);
    Ok(())
}

/// 2. Direct messages A→B and B→A across nodes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_cross_nodes_in_order() -> Result<()> {
    let r = region()?;
    let (mut a, _) = Client::hello(&r.n1.ws_url(), &token("alice"), json!([])).await?;
    let (mut b, _) = Client::hello(&r.n2.ws_url(), &token("bob"), json!([])).await?;
    let offer = json!({"kind": "offer", "sdp": "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\n"});
    ok(a.request(json!({"op": "send", "to": "bob", "data": offer}))
        .await?)?;
    for i in 0..5 {
        ok(a.request(json!({"op": "send", "to": "bob", "data": {"kind": "ice", "candidate": format!("candidate:{i} 1 udp 2122260223 127.0.0.1 5{i}000 typ host")}})).await?)?;
    }
    let first = b.event("direct").await?;
    assert_eq!(
        (first["from"].as_str(), first["data"]["kind"].as_str()),
        (Some("alice"), Some("offer"))
    );
    assert_eq!(first["data"]["sdp"], offer["sdp"]);
    for i in 0..5 {
        let ice = b.event("direct").await?;
        assert!(
            ice["data"]["candidate"]
                .as_str()
                .unwrap()
                .starts_with(&format!("candidate:{i} ")),
            "in order: {ice}"
        );
    }
    ok(
        b.request(json!({"op": "send", "to": "alice", "data": {"kind": "answer", "sdp": "v=0"}}))
            .await?,
    )?;
    ok(b.request(
        json!({"op": "send", "to": "alice", "data": {"kind": "ice", "candidate": "end"}}),
    )
    .await?)?;
    assert_eq!(a.event("direct").await?["data"]["kind"], "answer");
    assert_eq!(a.event("direct").await?["data"]["candidate"], "end");
    let offline = a
        .request(json!({"op": "send", "to": "carol", "data": 1}))
        .await?;
    assert_eq!(error_code(&offline), "user_offline");
    Ok(())
}

/// Requests pipelined in one write are answered in order, one reply each; publishes among
/// them are sequenced and delivered in the order sent (also across the node's batches, with
/// refused frames, idempotent repeats and other requests in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_and_sequenced_in_order() -> Result<()> {
    let r = region()?;
    let (mut a, _) = Client::hello(&r.n1.ws_url(), &token("alice"), json!([])).await?;
    let (mut b, _) = Client::hello(&r.n2.ws_url(), &token("bob"), json!([])).await?;
    join(&mut a, "pipe").await?;
    join(&mut b, "pipe").await?;
    let publish = |id: u64, room: &str, data: Value| {
        json!({"id": id, "op": "publish", "room": room, "data": data}).to_string()
    };
    let frames = vec![
        publish(1, "pipe", json!(1)),
        json!({"id": 2, "op": "publish", "room": "pipe", "data": 2, "idempotency_key": "k"})
            .to_string(),
        publish(3, "elsewhere", json!("not joined")),
        "{not json".to_owned(),
        json!({"id": 5, "op": "publish", "room": "pipe", "data": "again", "idempotency_key": "k"})
            .to_string(),
        json!({"id": 6, "op": "members", "room": "pipe"}).to_string(),
        publish(7, "pipe", json!(3)),
        json!({"id": 8, "op": "join", "room": "pipe-2"}).to_string(),
        publish(9, "pipe-2", json!("other room")),
        publish(10, "pipe", json!(4)),
    ];
    a.send_pipelined(frames).await?;
    let replies = a.replies(10).await?;
    let ids: Vec<Option<u64>> = replies.iter().map(|r| r["id"].as_u64()).collect();
    assert_eq!(
        ids,
        [1, 2, 3, 0, 5, 6, 7, 8, 9, 10].map(|i| (i > 0).then_some(i)),
        "one reply per frame, in order: {replies:?}"
    );
    assert_eq!(error_code(&replies[2]), "not_joined");
    assert_eq!(error_code(&replies[3]), "bad_request");
    let seq = |i: usize| replies[i]["result"]["seq"].as_u64().unwrap_or(0);
    assert_eq!(seq(1), seq(0) + 1);
    assert_eq!(replies[4]["result"]["duplicate"], true);
    assert_eq!(
        seq(4),
        seq(1),
        "the repeat answers the first use of its key"
    );
    assert_eq!(
        replies[5]["result"]["members"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(seq(6), seq(1) + 1);
    assert_eq!(replies[8]["result"]["room"], "pipe-2");
    assert_eq!(seq(9), seq(6) + 1);

    // More than one batch (64 frames) in one write, within the rate limit's burst of 100.
    let frames: Vec<String> = (0..80)
        .map(|i| publish(100 + i, "pipe", json!(10 + i)))
        .collect();
    a.send_pipelined(frames).await?;
    let replies = a.replies(80).await?;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply["id"].as_u64(), Some(100 + i as u64), "{reply}");
        assert_eq!(reply["result"]["seq"].as_u64(), Some(seq(9) + 1 + i as u64));
    }

    // Big frames: the node holds at most 64 KiB of them for one batch, and splits the rest.
    let big = "x".repeat(20 * 1024);
    let frames: Vec<String> = (0..5)
        .map(|i| publish(200 + i, "pipe", json!({"n": 90 + i, "pad": big})))
        .collect();
    a.send_pipelined(frames).await?;
    let replies = a.replies(5).await?;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply["id"].as_u64(), Some(200 + i as u64));
        assert_eq!(
            reply["result"]["seq"].as_u64(),
            Some(seq(9) + 81 + i as u64),
            "{reply}"
        );
    }

    let mut seen = Vec::new();
    while seen.len() < 89 {
        let e = b.event("message").await?;
        if e["room"] == "pipe" {
            let data = &e["data"];
            seen.push(data.as_u64().or(data["n"].as_u64()).unwrap_or(u64::MAX));
        }
    }
    let want: Vec<u64> = [1, 2, 3, 4].into_iter().chain(10..95).collect();
    assert_eq!(seen, want, "bob sees every publish once, in the order sent");
    Ok(())
}

/// 3. kill -9 of node 2: A gets `left {node_lost}` within lease + reap interval, B's presence is
///    gone; B resumes on node 1 and gets every message published meanwhile, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_is_reaped_and_resume_misses_nothing() -> Result<()> {
    let mut r = region()?;
    let (mut a, _) = Client::hello(&r.n1.ws_url(), &token("alice"), json!([])).await?;
    let (mut b, _) = Client::hello(&r.n2.ws_url(), &token("bob"), json!([])).await?;
    join(&mut a, "room-k").await?;
    let jb = join(&mut b, "room-k").await?;
    a.event("joined").await?;
    let p1 = ok(a
        .request(json!({"op": "publish", "room": "room-k", "data": 1}))
        .await?)?;
    let m1 = b.event("message").await?;
    assert_eq!(m1["seq"], p1["seq"]);
    let (epoch, last_seen) = (
        m1["epoch"].as_str().unwrap().to_owned(),
        m1["seq"].as_u64().unwrap(),
    );
    assert_eq!(jb["epoch"].as_str(), Some(epoch.as_str()));

    let killed_at = Instant::now();
    r.n2.signal("KILL")?;
    r.n2.wait_exit(Duration::from_secs(5))?;
    // Published while B is gone.
    let mut missed = Vec::new();
    for i in 2..=4 {
        missed.push(
            ok(
                a.request(json!({"op": "publish", "room": "room-k", "data": i}))
                    .await?,
            )?["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    let left = a.event_within("left", Duration::from_secs(6)).await?;
    let took = killed_at.elapsed();
    assert_eq!(
        (left["user"].as_str(), left["reason"].as_str()),
        (Some("bob"), Some("node_lost"))
    );
    // lease 1.5 s + reap interval 0.3 s (+ jitter, + scheduling).
    assert!(
        took < Duration::from_millis(1500 + 300 + 75 + 1500),
        "left after {took:?}"
    );
    eprintln!("node_lost observed {took:?} after kill -9 (lease 1500 ms, reap 300 ms)");
    let p = ok(a
        .request(json!({"op": "presence", "users": ["bob"]}))
        .await?)?;
    assert_eq!(p["users"][0]["online"], false);

    drop(b);
    let (mut b, hello) = Client::hello(
        &r.n1.ws_url(),
        &token("bob"),
        json!([{"room": "room-k", "epoch": epoch, "seq": last_seen}]),
    )
    .await?;
    assert_eq!(hello["resumed"][0]["status"], "recovered", "{hello}");
    let replayed = b
        .drain_events("message", Duration::from_millis(800))
        .await?;
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, missed, "every missed message, once, in order");
    let data: Vec<i64> = replayed
        .iter()
        .map(|m| m["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, vec![2, 3, 4]);
    // Live again after the resume.
    let p5 = ok(a
        .request(json!({"op": "publish", "room": "room-k", "data": 5}))
        .await?)?;
    let m5 = b.event("message").await?;
    assert_eq!(m5["seq"], p5["seq"]);
    assert_eq!(a.event("joined").await?["user"], "bob");

    // A resume from a position the history no longer covers says so.
    let (_c, lost) = Client::hello(
        &r.n1.ws_url(),
        &token("carol"),
        json!([{"room": "room-k", "epoch": "not-the-epoch", "seq": 1}]),
    )
    .await?;
    assert_eq!(lost["resumed"][0]["status"], "history_lost", "{lost}");
    Ok(())
}

/// 4. Bad input gets its error code; the connection (and everyone else) carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_codes() -> Result<()> {
    let r = region_with("[limits]\nmax_frame_bytes = 4096\nrequests_per_second = 5.0\nrequest_burst = 20.0\nmax_rooms_per_connection = 2")?;
    let url = r.n1.ws_url();
    // A bystander on the same node, in a room with a member on the other node.
    let (mut by, _) = Client::hello(&url, &token("bystander"), json!([])).await?;
    let (mut peer, _) = Client::hello(&r.n2.ws_url(), &token("peer"), json!([])).await?;
    join(&mut by, "calm").await?;
    join(&mut peer, "calm").await?;

    // Tokens: missing, forged, expired; each closes the connection with 1008.
    for (tok, code) in [
        (None, "token_missing"),
        (
            Some(token_with(
                "mallory",
                3600,
                &[("*", true)],
                "not-the-secret-at-all",
            )),
            "token_invalid",
        ),
        (Some("garbage".to_owned()), "token_invalid"),
        (
            Some(token_with("late", -10, &[("*", true)], SECRET)),
            "token_expired",
        ),
    ] {
        let mut c = Client::connect(&url).await?;
        let reply = c
            .request(match tok {
                Some(t) => json!({"op": "hello", "token": t}),
                None => json!({"op": "hello"}),
            })
            .await?;
        assert_eq!(error_code(&reply), code);
        assert_eq!(c.closed_within(Duration::from_secs(2)).await?, 1008);
    }
    // Requests before hello.
    let mut c = Client::connect(&url).await?;
    assert_eq!(
        error_code(&c.request(json!({"op": "join", "room": "calm"})).await?),
        "not_authenticated"
    );
    // Never saying hello: closed after hello_timeout_ms (1 s).
    let mut silent = Client::connect(&url).await?;
    assert_eq!(silent.closed_within(Duration::from_secs(3)).await?, 1008);

    let scoped = token_with(
        "scoped",
        3600,
        &[("lobby/*", true), ("stage", false)],
        SECRET,
    );
    let (mut s, _) = Client::hello(&url, &scoped, json!([])).await?;
    s.send_raw("{not json").await?;
    assert_eq!(error_code(&s.reply_for(None).await?), "bad_request");
    s.send_raw("[1,2]").await?;
    assert_eq!(error_code(&s.reply_for(None).await?), "bad_request");
    assert_eq!(
        error_code(&s.request(json!({"op": "teleport"})).await?),
        "unknown_op"
    );
    assert_eq!(
        error_code(&s.request(json!({"op": "join", "room": "bad room"})).await?),
        "invalid_id"
    );
    assert_eq!(
        error_code(&s.request(json!({"op": "join"})).await?),
        "bad_request"
    );
    let big = "x".repeat(5000);
    // Too large to be parsed, so the reply cannot echo the id.
    s.send_raw(json!({"id": 77, "op": "publish", "room": "lobby/1", "data": big}).to_string())
        .await?;
    assert_eq!(error_code(&s.reply_for(None).await?), "frame_too_large");
    assert_eq!(
        error_code(&s.request(json!({"op": "join", "room": "secret"})).await?),
        "forbidden"
    );
    assert_eq!(
        error_code(
            &s.request(json!({"op": "members", "room": "secret"}))
                .await?
        ),
        "forbidden"
    );
    assert_eq!(
        error_code(
            &s.request(json!({"op": "publish", "room": "lobby/1", "data": 1}))
                .await?
        ),
        "not_joined"
    );
    join(&mut s, "stage").await?;
    assert_eq!(
        error_code(
            &s.request(json!({"op": "publish", "room": "stage", "data": 1}))
                .await?
        ),
        "publish_forbidden"
    );
    assert_eq!(
        error_code(
            &s.request(json!({"op": "state_set", "room": "stage", "key": "k", "value": 1}))
                .await?
        ),
        "publish_forbidden"
    );
    join(&mut s, "lobby/1").await?;
    assert_eq!(
        error_code(&s.request(json!({"op": "join", "room": "lobby/2"})).await?),
        "too_many_rooms"
    );
    assert_eq!(
        error_code(&s.request(json!({"op": "hello", "token": scoped})).await?),
        "already_authenticated"
    );

    // Flood past the rate limit: 5/s with a burst of 20 (most of it spent above, bad frames included).
    let mut codes = Vec::new();
    for i in 0..30 {
        let reply = s
            .request(json!({"op": "publish", "room": "lobby/1", "data": i}))
            .await?;
        codes.push(if reply["type"] == "ok" {
            "ok".to_owned()
        } else {
            error_code(&reply)
        });
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(limited >= 15, "rate limit applies: {codes:?}");
    assert!(
        codes.iter().all(|c| c == "ok" || c == "rate_limited"),
        "{codes:?}"
    );
    // Every publish the flood got acknowledged was delivered exactly once (here: back to the
    // publisher, who is in the room); the refused ones never were.
    let acked: Vec<u64> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| *c == "ok")
        .map(|(i, _)| i as u64)
        .collect();
    let mut got: Vec<u64> = s
        .drain_events("message", Duration::from_millis(500))
        .await?
        .into_iter()
        .filter(|m| m["room"] == "lobby/1")
        .filter_map(|m| m["data"].as_u64())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got, acked,
        "acknowledged publishes delivered once, refused ones never"
    );

    // An oversized frame beyond the hard limit (4x) closes only that connection (1009).
    let mut huge = Client::hello(&url, &token("huge"), json!([])).await?.0;
    huge.send_raw(format!(
        "{{\"id\":1,\"op\":\"ping\",\"pad\":\"{}\"}}",
        "y".repeat(70_000)
    ))
    .await?;
    assert_eq!(huge.closed_within(Duration::from_secs(2)).await?, 1009);

    // The bystander and its peer never noticed.
    let p = ok(by
        .request(json!({"op": "publish", "room": "calm", "data": "still here"}))
        .await?)?;
    let m = peer.event("message").await?;
    assert_eq!(
        (m["data"].as_str(), m["seq"].as_u64()),
        (Some("still here"), p["seq"].as_u64())
    );
    assert_eq!(ok(by.request(json!({"op": "ping"})).await?)?["pong"], true);
    let metrics = r.n1.http_get("/metrics").await?.1;
    assert!(
        metrics
            .contains("meridian_node_errors_total{region=\"test-region\",code=\"rate_limited\"}"),
        "{metrics}"
    );
    Ok(())
}

/// A client that stops reading fills its bounded send queue: it is told `reconnect`
/// (`slow_consumer`) and dropped, and nobody else in the room loses anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_and_nobody_else_loses_anything() -> Result<()> {
    let r = region_with(
        "[limits]\nsend_queue = 64\nrequests_per_second = 100000.0\nrequest_burst = 100000.0",
    )?;
    let url = r.n1.ws_url();
    let (mut slow, _) = Client::hello(&url, &token("slow"), json!([])).await?;
    join(&mut slow, "busy").await?;
    let (mut fast, _) = Client::hello(&r.n2.ws_url(), &token("fast"), json!([])).await?;
    join(&mut fast, "busy").await?;
    let (mut publisher, _) = Client::hello(&url, &token("pub"), json!([])).await?;
    join(&mut publisher, "busy").await?;
    // ~16 MB of events: more than the slow client's socket buffers and queue can hide, while
    // a client that reads keeps up (socket buffers plus 64 queued events of slack).
    let pad = "x".repeat(4_000);
    let total = 4000u64;
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < total as usize && Instant::now() < deadline {
            if let Ok(e) = fast.event_within("message", Duration::from_secs(5)).await {
                if let Some(n) = e["data"]["n"].as_u64() {
                    seen.insert(n);
                }
            }
        }
        seen.len()
    });
    for n in 0..total {
        // One at a time: the publisher reads its acks (and its own events) as it goes.
        ok(publisher
            .request(json!({"op": "publish", "room": "busy", "data": {"n": n, "pad": pad}}))
            .await?)?;
    }
    let fast_got = reader.await?;
    assert_eq!(
        fast_got, total as usize,
        "the reading member got everything"
    );
    let dropped = eventually(Duration::from_secs(10), || async {
        r.n1.http_get("/metrics").await.is_ok_and(|(_, m)| {
            m.contains("meridian_node_slow_consumers_total{region=\"test-region\"} 1")
        })
    })
    .await;
    assert!(dropped, "the slow consumer was dropped");
    // Reading now, the slow client finds its connection closed after what its socket held
    // (with `reconnect {reason: slow_consumer}` when there was room left to say it).
    let code = slow.closed_within(Duration::from_secs(30)).await?;
    assert!(matches!(code, 1006 | 1008), "closed: {code}");
    if let Ok(r) = slow.event_within("reconnect", Duration::ZERO).await {
        assert_eq!(r["reason"], "slow_consumer", "{r}");
    }
    Ok(())
}

/// 5. SIGTERM: clients get `reconnect`, `/readyz` turns false, the process exits in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_deadline() -> Result<()> {
    let mut r = region()?;
    assert_eq!(r.n1.http_get("/healthz").await?.0, 200);
    assert_eq!(r.n1.http_get("/readyz").await?.0, 200);
    let mut clients = Vec::new();
    for i in 0..20 {
        let (mut c, _) = Client::hello(&r.n1.ws_url(), &token(&format!("u{i}")), json!([])).await?;
        join(&mut c, "drain-room").await?;
        clients.push(c);
    }
    let (mut watcher, _) = Client::hello(&r.n2.ws_url(), &token("watcher"), json!([])).await?;
    join(&mut watcher, "drain-room").await?;

    let started = Instant::now();
    r.n1.signal("TERM")?;
    let mut after = Vec::new();
    for c in &mut clients {
        let ev = c.event_within("reconnect", Duration::from_secs(2)).await?;
        assert_eq!(ev["reason"], "draining");
        let ms = ev["after_ms"].as_u64().unwrap();
        assert!(
            (50..=500).contains(&ms),
            "jitter within the configured range: {ms}"
        );
        after.push(ms);
    }
    after.sort();
    assert!(
        after.first() != after.last(),
        "reconnect delays are spread: {after:?}"
    );
    let ready = r.n1.http_get("/readyz").await;
    assert!(
        ready.map(|(s, _)| s == 503).unwrap_or(true),
        "not ready while draining"
    );
    // Half the clients obey and move to node 2; the rest are closed by the node.
    for c in clients.iter_mut().take(10) {
        c.send_raw(r#"{"id":99,"op":"ping"}"#).await?;
    }
    let clients_left: Vec<Client> = clients.drain(10..).collect();
    drop(clients);
    let status = r.n1.wait_exit(Duration::from_millis(4000 + 1000))?;
    let took = started.elapsed();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        took <= Duration::from_millis(4000 + 500),
        "exited after {took:?}"
    );
    eprintln!("drain: exit {took:?} after SIGTERM (deadline 4000 ms)");
    drop(clients_left);
    // Every drained member left the room, none is a ghost.
    let mut members = 0;
    let gone = eventually(Duration::from_secs(3), || {
        let url = r.n2.ws_url();
        async move {
            let Ok((mut c, _)) = Client::hello(&url, &token("auditor"), json!([])).await else {
                return false;
            };
            let Ok(reply) = c
                .request(json!({"op": "members", "room": "drain-room"}))
                .await
            else {
                return false;
            };
            reply["result"]["members"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
        }
    })
    .await;
    if !gone {
        let (mut c, _) = Client::hello(&r.n2.ws_url(), &token("auditor"), json!([])).await?;
        members = ok(c
            .request(json!({"op": "members", "room": "drain-room"}))
            .await?)?["members"]
            .as_array()
            .map_or(0, |m| m.len());
    }
    assert!(gone, "only the watcher remains, found {members}");
    let _ = watcher
        .drain_events("left", Duration::from_millis(100))
        .await?;
    Ok(())
}

/// A client that stops answering pings (a dead TCP peer) is closed after `ping_timeout_ms`, and
/// its membership ends with `left {reason: disconnect}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_client_is_detected_by_ping() -> Result<()> {
    let r = region_with("")?;
    // The node under test pings every 200 ms and gives up after 1 s of silence.
    let n3 = NodeProcess::start_with_timing(
        "test-region",
        &r.redis.url(),
        "",
        &[("ping_interval_ms", 200), ("ping_timeout_ms", 1000)],
    )?;
    let (mut watcher, _) = Client::hello(&r.n1.ws_url(), &token("watcher"), json!([])).await?;
    join(&mut watcher, "ping-room").await?;
    let (mut dead, _) = Client::hello(&n3.ws_url(), &token("dead"), json!([])).await?;
    join(&mut dead, "ping-room").await?;
    watcher.event("joined").await?;
    // `dead` is never polled again, so it never answers a ping.
    let started = Instant::now();
    let left = watcher.event_within("left", Duration::from_secs(4)).await?;
    assert_eq!(
        (left["user"].as_str(), left["reason"].as_str()),
        (Some("dead"), Some("disconnect"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    drop(dead);
    Ok(())
}

/// Redis unreachable past the lease TTL: `/readyz` turns false while `/healthz` stays true,
/// clients stay connected (no `lease_lost`: see `docs/redis-schema.md`, "Lease loss"), and
/// once Redis is back their requests work again and a resume on another node works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fences_the_node_and_readiness_follows() -> Result<()> {
    let r = region()?;
    let (mut a, _) = Client::hello(&r.n1.ws_url(), &token("alice"), json!([])).await?;
    let joined = join(&mut a, "outage").await?;
    assert_eq!(r.n1.http_get("/readyz").await?.0, 200);
    let pid = r.redis.pid().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
    };
    assert!(signal("-STOP")?.success());
    let paused_at = Instant::now();
    let unready = eventually(Duration::from_secs(5), || async {
        matches!(r.n1.http_get("/readyz").await, Ok((503, _)))
    })
    .await;
    let healthy = r.n1.http_get("/healthz").await?.0;
    // Past the lease TTL (1500 ms) and well beyond: no `reconnect`, the socket stays.
    let reconnect = a.event_within("reconnect", Duration::from_secs(4)).await;
    let kept_for = paused_at.elapsed();
    // Read while Redis is still paused: once it is back, the lease is renewed within 200 ms.
    let down = eventually(Duration::from_secs(3), || async {
        r.n1.http_get("/metrics").await.is_ok_and(|(_, body)| {
            body.contains("meridian_node_redis_up{region=\"test-region\"} 0")
        })
    })
    .await;
    assert!(signal("-CONT")?.success());
    assert!(unready, "/readyz follows Redis");
    assert!(down, "meridian_node_redis_up follows Redis");
    assert_eq!(healthy, 200, "/healthz does not depend on Redis");
    assert!(
        reconnect.is_err(),
        "clients are kept through a Redis stall: {reconnect:?}"
    );
    assert!(a.closed.is_none());
    eprintln!("client kept {kept_for:?} into the Redis stall (lease 1500 ms)");
    let ready = eventually(Duration::from_secs(10), || async {
        matches!(r.n1.http_get("/readyz").await, Ok((200, _)))
    })
    .await;
    assert!(ready, "/readyz recovers with Redis");
    ok(
        a.request(json!({"op": "publish", "room": "outage", "data": 1}))
            .await?,
    )?;
    let (_b, hello) = Client::hello(
        &r.n2.ws_url(),
        &token("alice"),
        json!([{"room": "outage", "epoch": joined["epoch"], "seq": joined["seq"]}]),
    )
    .await?;
    assert_eq!(hello["resumed"][0]["room"], "outage");
    assert_ne!(hello["resumed"][0]["status"], "error", "{hello}");
    Ok(())
}
