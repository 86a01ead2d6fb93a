//! Input and abuse hardening of the region node (issue #20): the one JSON rule for client
//! values, a stored value that must not kill its readers or lock a node, nothing invalid
//! relayed to subscribers, direct messages scoped and budgeted, connections that end at their
//! token's `exp`, tokens from the future, scoped presence, a per-user publish budget across
//! connections and nodes, and array requests. Real `redis-server` and `region-node` processes;
//! raw frames over real WebSockets.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use meridian_e2e::{
    error_code, ok, token, token_with, token_with_dm, Client, NodeProcess, RedisServer, SECRET,
};
use meridian_protocol::json_rules;
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::UserId;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const REGION: &str = "test-region";

/// A WebSocket that hands back frames as the raw text the node sent, so a test can parse them
/// strictly (and read frames that serde_json's recursion limit would refuse).
struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Every text frame received, in order.
    frames: Vec<String>,
    closed: Option<(u16, String)>,
}

impl Raw {
    async fn connect(url: &str) -> Result<Self> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await??;
        Ok(Self {
            ws,
            next_id: 0,
            frames: Vec::new(),
            closed: None,
        })
    }

    async fn hello(url: &str, token: &str) -> Result<Self> {
        let mut c = Self::connect(url).await?;
        let r = c.request(json!({"op": "hello", "token": token})).await?;
        if !r.contains("\"type\":\"ok\"") {
            bail!("hello refused: {r}");
        }
        Ok(c)
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::Text(text.to_owned().into())).await?;
        Ok(())
    }

    /// The next text frame within `wait`: `Ok(None)` on timeout, `Err` once closed.
    async fn next_text(&mut self, wait: Duration) -> Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("connection closed ({:?})", self.closed),
                Ok(Some(Err(e))) => bail!("connection failed: {e} ({:?})", self.closed),
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.frames.push(t.to_string());
                    return Ok(Some(t.to_string()));
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.closed = Some(
                        f.map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends a raw request frame and returns the raw text of the reply that carries `id`.
    async fn request_raw(&mut self, id: u64, text: &str) -> Result<String> {
        self.send(text).await?;
        let marker = format!("\"id\":{id},");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.next_text(left).await? else {
                bail!("no reply to {id}")
            };
            let is_reply =
                frame.starts_with("{\"type\":\"ok\"") || frame.starts_with("{\"type\":\"error\"");
            if is_reply && frame.contains(&marker) {
                return Ok(frame);
            }
        }
    }

    /// Sends `req` with a fresh id and returns the raw reply.
    async fn request(&mut self, mut req: Value) -> Result<String> {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        self.request_raw(id, &req.to_string()).await
    }

    /// Waits for the close frame; returns (code, reason).
    async fn closed_within(&mut self, wait: Duration) -> Result<(u16, String)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(c) = &self.closed {
                return Ok(c.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("still open after {wait:?}");
            }
            if self.next_text(left).await.is_err() {
                return self
                    .closed
                    .clone()
                    .ok_or_else(|| anyhow!("closed without a close frame"));
            }
        }
    }
}

/// Whether a frame is JSON that every strict parser reads: the node's own rule (RFC 8259, no
/// lone surrogates, finite numbers) at a generous depth, and serde_json's parser.
fn assert_strict_json(frame: &str) {
    assert_eq!(
        json_rules::check_with_depth(frame, 40),
        Ok(()),
        "invalid JSON sent to a client: {}",
        &frame[..frame.len().min(200)]
    );
    assert!(
        serde_json::from_str::<Value>(frame).is_ok(),
        "serde_json cannot read a frame: {}",
        &frame[..frame.len().min(200)]
    );
}

fn reply_code(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The node's `meridian_node_connections` gauge.
async fn open_connections(node: &NodeProcess) -> Result<i64> {
    let (_, body) = node.http_get("/metrics").await?;
    body.lines()
        .find(|l| l.starts_with("meridian_node_connections{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no connections gauge in /metrics"))
}

/// Item 1: a value nested 129 levels is refused before it is stored; a deep value already in
/// the store (written by an older node) does not kill its readers; 30 readers against
/// `max_connections = 20` leave the gauge at 0 and a new user gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_values_are_refused_and_cannot_lock_a_node() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "[limits]\nmax_connections = 20")?;
    let url = node.ws_url();
    let mut writer = Raw::hello(&url, &token("writer")).await?;
    writer
        .request(json!({"op": "join", "room": "poison"}))
        .await?;
    let deep = nested(129);
    let set = writer
        .request_raw(
            90,
            &format!(r#"{{"id":90,"op":"state_set","room":"poison","key":"k","value":{deep}}}"#),
        )
        .await?;
    assert_eq!(reply_code(&set), "bad_request", "{set}");
    assert!(set.contains("deeper than 32"), "names the rule: {set}");
    let publish = writer
        .request_raw(
            91,
            &format!(r#"{{"id":91,"op":"publish","room":"poison","data":{deep}}}"#),
        )
        .await?;
    assert_eq!(reply_code(&publish), "bad_request", "{publish}");
    // 32 levels is the limit, and allowed.
    let fine = writer
        .request_raw(
            92,
            &format!(
                r#"{{"id":92,"op":"state_set","room":"poison","key":"ok","value":{}}}"#,
                nested(32)
            ),
        )
        .await?;
    assert!(fine.contains("\"type\":\"ok\""), "{fine}");
    drop(writer);

    // A deep value stored before this rule existed.
    let client = redis::Client::open(redis.url())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    redis::pipe()
        .hset("mr:{poison}:st", "old", &deep)
        .hset("mr:{poison}:sv", "old", 1)
        .query_async::<()>(&mut con)
        .await?;

    for i in 0..30 {
        let mut reader = Raw::hello(&url, &token(&format!("reader{i}"))).await?;
        reader
            .request(json!({"op": "join", "room": "poison"}))
            .await?;
        let got = reader
            .request(json!({"op": "state_get", "room": "poison"}))
            .await?;
        assert!(got.contains("\"entries\""), "reader {i}: {got}");
        let got = reader
            .request(json!({"op": "state_get", "room": "poison", "key": "old"}))
            .await?;
        assert!(got.contains("\"type\":\"ok\""), "reader {i}: {got}");
        let pong = reader.request(json!({"op": "ping"})).await?;
        assert!(pong.contains("pong"), "reader {i} still served: {pong}");
    }
    let drained = meridian_e2e::eventually(Duration::from_secs(5), || async {
        open_connections(&node).await.ok() == Some(0)
    })
    .await;
    assert!(drained, "gauge at {:?}", open_connections(&node).await);
    let (mut late, _) = Client::hello(&url, &token("late"), json!([])).await?;
    ok(late.request(json!({"op": "ping"})).await?)?;
    Ok(())
}

/// Item 2: `Infinity`, `NaN`, a lone surrogate, a number beyond a double, a 40 KB deeply
/// nested value are refused with `bad_request` naming the rule, for `publish`, `send` and
/// `state_set`; a subscriber in the room receives only strictly valid JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_refused_and_subscribers_get_only_valid_json() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let url = node.ws_url();
    let mut sub = Raw::hello(&url, &token("sub")).await?;
    sub.request(json!({"op": "join", "room": "r"})).await?;
    let mut publisher = Raw::hello(&url, &token("pub")).await?;
    publisher
        .request(json!({"op": "join", "room": "r"}))
        .await?;
    let deep40k = nested(20_000);
    let cases: [(&str, &str); 8] = [
        ("Infinity", "NaN, Infinity"),
        ("-Infinity", "NaN, Infinity"),
        ("NaN", "NaN, Infinity"),
        (r#""\ud800""#, "surrogate"),
        (r#"{"sdp":"a\udfffb"}"#, "surrogate"),
        ("1e999", "finite"),
        (&deep40k, "deeper than 32"),
        ("[1,]", "not RFC 8259"),
    ];
    let mut id = 100;
    for (value, rule) in cases {
        for frame in [
            format!(r#"{{"id":{id},"op":"publish","room":"r","data":{value}}}"#),
            format!(
                r#"{{"id":{},"op":"send","to":"sub","data":{value}}}"#,
                id + 1
            ),
            format!(
                r#"{{"id":{},"op":"state_set","room":"r","key":"k","value":{value}}}"#,
                id + 2
            ),
        ] {
            publisher.send(&frame).await?;
            // Refused before the id could be read (serde refuses `NaN`) or with it.
            let reply = loop {
                let f = publisher
                    .next_text(Duration::from_secs(5))
                    .await?
                    .ok_or_else(|| anyhow!("no reply to {}", &frame[..frame.len().min(80)]))?;
                if f.contains("\"type\":\"error\"") || f.contains("\"type\":\"ok\"") {
                    break f;
                }
            };
            assert_eq!(reply_code(&reply), "bad_request", "{reply}");
            assert!(reply.contains(rule), "{rule}: {reply}");
            assert_strict_json(&reply);
        }
        id += 3;
    }
    // A valid message after all of that arrives, and is the only message the subscriber gets.
    publisher
        .request(json!({"op": "publish", "room": "r", "data": {"marker": "\u{e9}\u{1F600}"}}))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sub.frames.iter().any(|f| f.contains("marker")) {
        let left = deadline.saturating_duration_since(Instant::now());
        if sub.next_text(left).await?.is_none() {
            bail!("the valid message never arrived");
        }
    }
    // Anything else in flight arrives within a moment.
    while sub.next_text(Duration::from_millis(300)).await?.is_some() {}
    for frame in &sub.frames {
        assert_strict_json(frame);
    }
    let messages = sub
        .frames
        .iter()
        .filter(|f| f.contains("\"type\":\"message\""))
        .count();
    let directs = sub
        .frames
        .iter()
        .filter(|f| f.contains("\"type\":\"direct\""))
        .count();
    let states = sub
        .frames
        .iter()
        .filter(|f| f.contains("\"type\":\"state_changed\""))
        .count();
    assert_eq!((messages, directs, states), (1, 0, 0), "{:?}", sub.frames);
    Ok(())
}

/// Item 4: 20 attacker connections flood 60 KB direct messages at a victim: the victim stays
/// connected and served, the attackers get `rate_limited`. Without a shared room (and without
/// the `dm` claim) a sender gets `forbidden`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_floods_are_refused_and_the_victim_stays() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let url = node.ws_url();
    let (mut victim, _) = Client::hello(
        &url,
        &token_with("victim", 3600, &[("*", true)], SECRET),
        json!([]),
    )
    .await?;
    ok(victim
        .request(json!({"op": "join", "room": "home"}))
        .await?)?;

    // The rule: no shared room, no `dm` claim → forbidden; a shared room → allowed.
    let (mut stranger, _) = Client::hello(
        &url,
        &token_with("stranger", 3600, &[("*", true)], SECRET),
        json!([]),
    )
    .await?;
    let refused = stranger
        .request(json!({"op": "send", "to": "victim", "data": "hi"}))
        .await?;
    assert_eq!(error_code(&refused), "forbidden", "{refused}");
    ok(stranger
        .request(json!({"op": "join", "room": "elsewhere"}))
        .await?)?;
    let refused = stranger
        .request(json!({"op": "send", "to": "victim", "data": "hi"}))
        .await?;
    assert_eq!(error_code(&refused), "forbidden", "{refused}");
    ok(stranger
        .request(json!({"op": "join", "room": "home"}))
        .await?)?;
    ok(stranger
        .request(json!({"op": "send", "to": "victim", "data": "hi"}))
        .await?)?;
    assert_eq!(victim.event("direct").await?["data"], "hi");

    // The flood: 20 connections (token claim `dm`, so the scope rule lets them through and
    // the budgets are what stops them), 5 messages of 60 KB each.
    let blob = "x".repeat(60 * 1024);
    let mut attackers = Vec::new();
    for i in 0..20 {
        let t = token_with_dm(&format!("attacker{i}"), 3600, &[("*", true)], SECRET);
        attackers.push(Client::hello(&url, &t, json!([])).await?.0);
    }
    let mut tasks = Vec::new();
    for mut a in attackers {
        let blob = blob.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..5 {
                let r = a
                    .request(json!({"op": "send", "to": "victim", "data": blob}))
                    .await?;
                codes.push(if r["type"] == "ok" {
                    "ok".to_owned()
                } else {
                    error_code(&r)
                });
            }
            Ok::<_, anyhow::Error>((a, codes))
        }));
    }
    let mut codes = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (a, c) = t.await??;
        codes.extend(c);
        keep.push(a);
    }
    let delivered = codes.iter().filter(|c| *c == "ok").count();
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert_eq!(delivered + limited, 100, "{codes:?}");
    assert!(limited >= 80, "the flood is refused: {delivered} delivered");
    // The victim was never dropped: it still answers, and gets what was accepted.
    ok(victim.request(json!({"op": "ping"})).await?)?;
    let got = victim
        .drain_events("direct", Duration::from_secs(2))
        .await?;
    assert_eq!(got.len(), delivered, "accepted messages are delivered");
    assert!(
        victim.closed.is_none(),
        "victim closed: {:?}",
        victim.closed
    );
    ok(victim.request(json!({"op": "ping"})).await?)?;
    Ok(())
}

/// One sender's direct messages are budgeted across its connections (20 per second by
/// default): 60 messages from two connections within a moment → the rest get `rate_limited`
/// naming the sender's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_direct_messages_are_budgeted_across_connections() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let url = node.ws_url();
    let (mut peer, _) = Client::hello(&url, &token("peer"), json!([])).await?;
    ok(peer.request(json!({"op": "join", "room": "call"})).await?)?;
    let t = token_with("chatty", 3600, &[("*", true)], SECRET);
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = Client::hello(&url, &t, json!([])).await?;
        ok(c.request(json!({"op": "join", "room": "call"})).await?)?;
        conns.push(c);
    }
    let started = Instant::now();
    let (mut accepted, mut limited) = (0, 0);
    for i in 0..60 {
        let r = conns[i % 2]
            .request(json!({"op": "send", "to": "peer", "data": {"candidate": i}}))
            .await?;
        if r["type"] == "ok" {
            accepted += 1;
        } else {
            assert_eq!(error_code(&r), "rate_limited", "{r}");
            assert!(
                r["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("this user may send"),
                "{r}"
            );
            limited += 1;
        }
    }
    let windows = started.elapsed().as_secs() + 2;
    assert!(
        (20..=20 * windows).contains(&accepted),
        "{accepted} accepted in at most {windows} windows"
    );
    assert_eq!(accepted + limited, 60);
    assert!(limited > 0);
    Ok(())
}

/// A connection ends at its token's `exp`: an `error` event `token_expired`, then close 1008
/// with reason `token_expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_token_expires() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let mut c = Raw::hello(
        &node.ws_url(),
        &token_with("brief", 2, &[("*", true)], SECRET),
    )
    .await?;
    let pong = c.request(json!({"op": "ping"})).await?;
    assert!(pong.contains("pong"));
    let (code, reason) = c.closed_within(Duration::from_secs(6)).await?;
    assert_eq!((code, reason.as_str()), (1008, "token_expired"));
    assert!(
        c.frames
            .iter()
            .any(|f| f.contains("\"code\":\"token_expired\"")),
        "{:?}",
        c.frames
    );
    Ok(())
}

/// Tokens whose `nbf` or `iat` lie beyond the 60 s leeway are refused; within it, accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_future_are_refused() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let mint = |nbf: Option<u64>, iat: Option<u64>| -> Result<String> {
        let claims = Claims {
            sub: UserId::new("future")?,
            exp: now_secs() + 3600,
            rooms: vec![RoomGrant {
                pattern: "*".into(),
                publish: true,
            }],
            nbf,
            iat,
            dm: false,
        };
        Ok(issue(SECRET.as_bytes(), &claims)?)
    };
    let later = now_secs() + 600;
    for t in [mint(Some(later), None)?, mint(None, Some(later))?] {
        let mut c = Client::connect(&node.ws_url()).await?;
        let r = c.request(json!({"op": "hello", "token": t})).await?;
        assert_eq!(error_code(&r), "token_invalid", "{r}");
        assert!(
            r["message"].as_str().unwrap_or("").contains("future"),
            "{r}"
        );
    }
    let soon = now_secs() + 20;
    Client::hello(&node.ws_url(), &mint(Some(soon), Some(soon))?, json!([])).await?;
    Ok(())
}

/// `presence` answers only for users who share a room with the asker; everyone else appears
/// offline. The asker always sees itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_scoped_to_shared_rooms() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let url = node.ws_url();
    let plain = |u: &str| token_with(u, 3600, &[("*", true)], SECRET);
    let (mut friend, _) = Client::hello(&url, &plain("friend"), json!([])).await?;
    let (mut stranger, _) = Client::hello(&url, &plain("stranger"), json!([])).await?;
    let (mut asker, _) = Client::hello(&url, &plain("asker"), json!([])).await?;
    ok(friend
        .request(json!({"op": "join", "room": "shared"}))
        .await?)?;
    ok(stranger
        .request(json!({"op": "join", "room": "theirs"}))
        .await?)?;
    ok(asker
        .request(json!({"op": "join", "room": "shared"}))
        .await?)?;
    let r = ok(asker
        .request(json!({"op": "presence", "users": ["friend", "stranger", "asker", "nobody"]}))
        .await?)?;
    let online: Vec<(String, bool)> = r["users"]
        .as_array()
        .ok_or_else(|| anyhow!("{r}"))?
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap_or("").to_owned(),
                e["online"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(
        online,
        vec![
            ("friend".into(), true),
            ("stranger".into(), false),
            ("asker".into(), true),
            ("nobody".into(), false)
        ]
    );
    let stranger_entry = &r["users"][1];
    assert_eq!(stranger_entry["connections"], 0);
    assert_eq!(stranger_entry["regions"], json!([]));
    // Leaving the shared room hides the friend too.
    ok(asker
        .request(json!({"op": "leave", "room": "shared"}))
        .await?)?;
    let r = ok(asker
        .request(json!({"op": "presence", "users": ["friend"]}))
        .await?)?;
    assert_eq!(r["users"][0]["online"], false, "{r}");
    // A token with the claim `dm` (may contact anyone) sees everyone.
    let (mut operator, _) = Client::hello(
        &url,
        &token_with_dm("operator", 3600, &[("*", true)], SECRET),
        json!([]),
    )
    .await?;
    let r = ok(operator
        .request(json!({"op": "presence", "users": ["stranger"]}))
        .await?)?;
    assert_eq!(r["users"][0]["online"], true, "{r}");
    Ok(())
}

/// One user's publishes are budgeted across all its connections on every node of the region:
/// 20 connections of one token (10 on each of two nodes) get at most the budget through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_publish_budget_spans_connections_and_nodes() -> Result<()> {
    let redis = RedisServer::start()?;
    let limits = "[limits]\nrequests_per_second = 1000.0\nrequest_burst = 1000.0\nuser_publishes_per_second = 40";
    let n1 = NodeProcess::start(REGION, &redis.url(), limits)?;
    let n2 = NodeProcess::start(REGION, &redis.url(), limits)?;
    let t = token("spammer");
    let mut conns = Vec::new();
    for i in 0..20 {
        let url = if i % 2 == 0 { n1.ws_url() } else { n2.ws_url() };
        let (mut c, _) = Client::hello(&url, &t, json!([])).await?;
        ok(c.request(json!({"op": "join", "room": "flood"})).await?)?;
        conns.push(c);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in conns {
        tasks.push(tokio::spawn(async move {
            let frames: Vec<String> = (0..20)
                .map(|i| {
                    json!({"id": 1000 + i, "op": "publish", "room": "flood", "data": i}).to_string()
                })
                .collect();
            c.send_pipelined(frames).await?;
            c.replies(20).await
        }));
    }
    let mut accepted = 0;
    let mut limited = 0;
    for t in tasks {
        for r in t.await?? {
            match r["type"].as_str() {
                Some("ok") => accepted += 1,
                _ if error_code(&r) == "rate_limited" => limited += 1,
                _ => bail!("unexpected reply {r}"),
            }
        }
    }
    let windows = started.elapsed().as_secs() + 2;
    assert_eq!(accepted + limited, 400);
    assert!(
        accepted <= 40 * windows as usize && accepted >= 40,
        "{accepted} accepted over at most {windows} one-second windows"
    );
    assert!(limited >= 400 - 40 * windows as usize, "{limited} limited");
    Ok(())
}

/// A request is a JSON object: an array (which serde used to map onto the fields in order)
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_request_is_refused() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start(REGION, &redis.url(), "")?;
    let mut c = Raw::hello(&node.ws_url(), &token("arrays")).await?;
    c.send(r#"[7,"ping",null,null,null,null,null,null,null,null,null,null,null,null]"#)
        .await?;
    let reply = c
        .next_text(Duration::from_secs(5))
        .await?
        .ok_or_else(|| anyhow!("no reply"))?;
    assert_eq!(reply_code(&reply), "bad_request", "{reply}");
    assert!(reply.contains("JSON object"), "{reply}");
    Ok(())
}
