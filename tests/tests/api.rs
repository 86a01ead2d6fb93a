//! End-to-end tests of the server API (`docs/server-api.md`): real redis-server and
//! region-node processes, HTTP+JSON on the node's `api.listen`, clients over WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use meridian_e2e::mesh::{MeshTiming, TestMesh};
use meridian_e2e::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-0123456789abcdef";
const READER: &str = "read-only-key-0123456789";

/// `[api]` with an admin key and a read-only key.
fn api_toml(extra_keys: &str) -> String {
    format!(
        "[api]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4096\n{extra_keys}\
         [[api.keys]]\nname = \"backend\"\nsecret = \"{ADMIN}\"\nscopes = [\"admin\"]\n\
         [[api.keys]]\nname = \"dashboard\"\nsecret = \"{READER}\"\nscopes = [\"read\"]\n"
    )
}

fn api_addr(node: &NodeProcess) -> Result<SocketAddr> {
    node.api_addr
        .ok_or_else(|| anyhow!("the node has no API address"))
}

/// POSTs `body` to `/api/v1/<method>` with `key`; returns (status, JSON body).
async fn call_raw(addr: SocketAddr, key: &str, method: &str, body: &str) -> Result<(u16, Value)> {
    let auth = format!("Bearer {key}");
    let (status, _, text) = http_request(
        addr,
        "POST",
        &format!("/api/v1/{method}"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await?;
    let value = serde_json::from_str(&text).map_err(|e| anyhow!("{status} {text:?}: {e}"))?;
    Ok((status, value))
}

/// A call that must succeed: its result.
async fn call(addr: SocketAddr, method: &str, body: Value) -> Result<Value> {
    let (status, value) = call_raw(addr, ADMIN, method, &body.to_string()).await?;
    anyhow::ensure!(status == 200, "{method} {body}: {status} {value}");
    Ok(value)
}

/// A call that must fail with `status` and `code`: its message.
async fn refused(
    addr: SocketAddr,
    key: &str,
    method: &str,
    body: &str,
    status: u16,
    code: &str,
) -> Result<String> {
    let (got, value) = call_raw(addr, key, method, body).await?;
    assert_eq!(
        (got, value["error"]["code"].as_str()),
        (status, Some(code)),
        "{method} {body}: {value}"
    );
    let message = value["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error says why: {value}");
    Ok(message.to_owned())
}

/// Every method against a region of two nodes: the API on node 1, the user on node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_end_to_end() -> Result<()> {
    let redis = RedisServer::start()?;
    let n1 = NodeProcess::start("test-region", &redis.url(), &api_toml(""))?;
    let n2 = NodeProcess::start("test-region", &redis.url(), "")?;
    let api = api_addr(&n1)?;
    let (mut alice, _) = Client::hello(&n2.ws_url(), &token("alice"), json!([])).await?;
    ok(alice.request(json!({"op": "join", "room": "r1"})).await?)?;
    ok(alice.request(json!({"op": "join", "room": "r2"})).await?)?;

    // publish: a room event from the key's `from`, through the same path as a client's.
    let p = call(
        api,
        "publish",
        json!({"room": "r1", "data": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await?;
    assert_eq!(
        (p["room"].as_str(), p["duplicate"].as_bool()),
        (Some("r1"), Some(false))
    );
    let m = alice.event("message").await?;
    assert_eq!(
        (m["from"].as_str(), m["data"]["n"].as_i64()),
        (Some("server"), Some(1))
    );
    assert_eq!(m["seq"], p["seq"]);
    // The same idempotency key again: the first publish's seq, nothing sent.
    let again = call(
        api,
        "publish",
        json!({"room": "r1", "data": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await?;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].as_bool()),
        (p["seq"].clone(), Some(true))
    );

    // broadcast: one publish per room.
    let b = call(
        api,
        "broadcast",
        json!({"rooms": ["r1", "r2"], "data": "hi"}),
    )
    .await?;
    assert_eq!(b["results"].as_array().map(Vec::len), Some(2));
    let got = alice
        .drain_events("message", Duration::from_millis(300))
        .await?;
    let rooms: Vec<_> = got
        .iter()
        .filter(|e| e["data"] == "hi")
        .map(|e| e["room"].clone())
        .collect();
    assert_eq!(rooms, vec![json!("r1"), json!("r2")], "{got:?}");

    // send: a direct message to every connection of the user, on whichever node.
    let s = call(api, "send", json!({"to": "alice", "data": {"dm": true}})).await?;
    assert_eq!(s["delivered"], true);
    let d = alice.event("direct").await?;
    assert_eq!(
        (d["from"].as_str(), d["data"]["dm"].as_bool()),
        (Some("server"), Some(true))
    );
    let s = call(api, "send", json!({"to": "nobody", "data": 1})).await?;
    assert_eq!(s["delivered"], false);

    // members and presence.
    let members = call(api, "members", json!({"room": "r1"})).await?;
    assert_eq!(members["members"][0]["user"], "alice", "{members}");
    let presence = call(api, "presence", json!({"users": ["alice", "nobody"]})).await?;
    assert_eq!(
        presence["users"].as_array().map(Vec::len),
        Some(2),
        "{presence}"
    );
    assert_ne!(presence["users"][0], presence["users"][1], "{presence}");
    // An empty list (found by schemathesis: the store cannot take it).
    let none = call(api, "presence", json!({"users": []})).await?;
    assert_eq!(none["users"], json!([]));

    // room state with compare-and-set.
    let set = call(
        api,
        "state_set",
        json!({"room": "r1", "key": "topic", "value": "a", "if_version": 0}),
    )
    .await?;
    assert_eq!(set["version"], 1);
    let changed = alice.event("state_changed").await?;
    assert_eq!(
        (changed["by"].as_str(), changed["value"].as_str()),
        (Some("server"), Some("a"))
    );
    refused(
        api,
        ADMIN,
        "state_set",
        r#"{"room":"r1","key":"topic","value":"b","if_version":0}"#,
        409,
        "version_conflict",
    )
    .await?;
    let get = call(api, "state_get", json!({"room": "r1", "key": "topic"})).await?;
    assert_eq!(
        (
            get["entries"][0]["value"].as_str(),
            get["entries"][0]["version"].as_u64()
        ),
        (Some("a"), Some(1))
    );
    refused(
        api,
        ADMIN,
        "state_delete",
        r#"{"room":"r1","key":"topic","if_version":7}"#,
        409,
        "version_conflict",
    )
    .await?;
    let del = call(
        api,
        "state_delete",
        json!({"room": "r1", "key": "topic", "if_version": 1}),
    )
    .await?;
    assert_eq!(del["deleted"], true);
    let get = call(api, "state_get", json!({"room": "r1"})).await?;
    assert_eq!(get["entries"], json!([]));

    // history: the room's events in order, the API's publish among them.
    let h = call(api, "history", json!({"room": "r1"})).await?;
    assert_eq!(h["lost"], false, "{h}");
    let events = h["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "message" && e["data"]["n"] == 1),
        "{h}"
    );
    let since = events.last().map(|e| e["seq"].clone()).unwrap_or_default();
    let tail = call(
        api,
        "history",
        json!({"room": "r1", "epoch": h["epoch"], "since": since}),
    )
    .await?;
    assert_eq!(tail["events"], json!([]), "{tail}");

    // info: this region, both nodes.
    let info = call(api, "info", json!({})).await?;
    assert_eq!(info["region"], "test-region");
    assert!(
        info["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{info}"
    );

    // batch: several calls, one reply each, in order; a failure does not stop the others.
    let batch = call(api, "batch", json!({"calls": [
        {"method": "publish", "params": {"room": "r2", "data": 2}},
        {"method": "nope"},
        {"method": "state_set", "params": {"room": "r2", "key": "k", "value": 1, "if_version": 5}},
        {"method": "batch", "params": {"calls": []}},
        {"method": "info"},
    ]})).await?;
    let replies = batch["replies"].as_array().cloned().unwrap_or_default();
    assert_eq!(replies.len(), 5, "{batch}");
    assert_eq!(replies[0]["result"]["room"], "r2");
    assert_eq!(replies[1]["error"]["code"], "not_found");
    assert_eq!(replies[2]["error"]["code"], "version_conflict");
    assert_eq!(replies[3]["error"]["code"], "bad_request");
    assert_eq!(replies[4]["result"]["region"], "test-region");
    let m = alice.event("message").await?;
    assert_eq!(
        (m["room"].as_str(), m["data"].as_i64()),
        (Some("r2"), Some(2))
    );

    // Every call is counted by method and status.
    let (_, metrics) = n1.http_get("/metrics").await?;
    assert!(
        metrics.contains("meridian_node_api_calls_total{region=\"test-region\",method=\"publish\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("method=\"state_set\",status=\"409\""),
        "{metrics}"
    );
    Ok(())
}

/// `disconnect` closes every connection of the user, on whichever node of the region holds
/// them, with the backend's reason in an `error` event; the user's presence goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_every_connection_with_the_reason() -> Result<()> {
    let redis = RedisServer::start()?;
    let n1 = NodeProcess::start("test-region", &redis.url(), &api_toml(""))?;
    let n2 = NodeProcess::start("test-region", &redis.url(), "")?;
    let api = api_addr(&n1)?;
    let (mut a1, _) = Client::hello(&n1.ws_url(), &token("alice"), json!([])).await?;
    let (mut a2, _) = Client::hello(&n2.ws_url(), &token("alice"), json!([])).await?;
    let (mut bob, _) = Client::hello(&n2.ws_url(), &token("bob"), json!([])).await?;
    // A read-only key may not disconnect anyone.
    refused(
        api,
        READER,
        "disconnect",
        r#"{"user":"alice"}"#,
        403,
        "forbidden",
    )
    .await?;
    let long = "x".repeat(300);
    refused(
        api,
        ADMIN,
        "disconnect",
        &json!({"user": "alice", "reason": long}).to_string(),
        400,
        "bad_request",
    )
    .await?;
    let d = call(
        api,
        "disconnect",
        json!({"user": "alice", "reason": "account suspended"}),
    )
    .await?;
    assert_eq!(d["disconnected"], true);
    for c in [&mut a1, &mut a2] {
        let e = c.event("error").await?;
        assert_eq!(e["code"], "forbidden");
        assert_eq!(
            e["message"],
            "disconnected by the server: account suspended"
        );
        assert_eq!(c.closed_within(Duration::from_secs(5)).await?, 1008);
    }
    let gone = eventually(Duration::from_secs(5), || async {
        call(api, "presence", json!({"users": ["alice"]}))
            .await
            .is_ok_and(|p| p["users"][0]["online"] == false)
    })
    .await;
    assert!(gone, "alice is offline once her connections closed");
    // Bob was not touched; a user with no connection is reported as such.
    ok(bob.request(json!({"op": "ping"})).await?)?;
    let none = call(api, "disconnect", json!({"user": "nobody"})).await?;
    assert_eq!(none["disconnected"], false);
    Ok(())
}

/// Bad keys, wrong scopes, malformed and oversized bodies: a JSON error with a code, a
/// message and the right status; the client port does not serve the API; the OpenAPI document
/// served is the committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_clear_errors() -> Result<()> {
    let redis = RedisServer::start()?;
    let node = NodeProcess::start("test-region", &redis.url(), &api_toml(""))?;
    let api = api_addr(&node)?;
    let publish = r#"{"room":"r","data":1}"#;

    // No key, a wrong key, a malformed header.
    let (status, _, body) = http_request(api, "POST", "/api/v1/publish", &[], publish).await?;
    assert_eq!(status, 401, "{body}");
    let e: Value = serde_json::from_str(&body)?;
    assert_eq!(e["error"]["code"], "unauthorized");
    refused(
        api,
        "not-a-key-0123456789abcdef",
        "publish",
        publish,
        401,
        "unauthorized",
    )
    .await?;
    let (status, _, _) = http_request(
        api,
        "POST",
        "/api/v1/publish",
        &[("authorization", ADMIN)],
        publish,
    )
    .await?;
    assert_eq!(status, 401, "a key without `Bearer `");
    // A read-only key cannot publish or write state, but can read.
    let m = refused(api, READER, "publish", publish, 403, "forbidden").await?;
    assert!(m.contains("publish"), "{m}");
    refused(
        api,
        READER,
        "state_set",
        r#"{"room":"r","key":"k","value":1}"#,
        403,
        "forbidden",
    )
    .await?;
    let (status, _) = call_raw(api, READER, "members", r#"{"room":"r"}"#).await?;
    assert_eq!(status, 200);
    // Malformed bodies: not JSON, not an object, a missing field, an unknown field, a bad id,
    // data breaking the JSON rules, a key too long, a huge if_version.
    for body in [
        "{",
        "[1]",
        r#"{"room":"r"}"#,
        r#"{"room":"r","data":1,"extra":true}"#,
        r#"{"room":"bad room","data":1}"#,
        r#"{"room":"r","data":"\ud800"}"#,
    ] {
        refused(api, ADMIN, "publish", body, 400, "bad_request").await?;
    }
    let long = "k".repeat(200);
    refused(
        api,
        ADMIN,
        "state_set",
        &format!(r#"{{"room":"r","key":"{long}","value":1}}"#),
        400,
        "bad_request",
    )
    .await?;
    refused(
        api,
        ADMIN,
        "state_delete",
        r#"{"room":"r","key":"k","if_version":18446744073709551615}"#,
        400,
        "bad_request",
    )
    .await?;
    // Oversized: the body (4 KiB here), and lists.
    let big = format!(r#"{{"room":"r","data":"{}"}}"#, "x".repeat(8192));
    let m = refused(api, ADMIN, "publish", &big, 413, "too_large").await?;
    assert!(m.contains("4096"), "{m}");
    let users: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    refused(
        api,
        ADMIN,
        "presence",
        &json!({"users": users}).to_string(),
        413,
        "too_large",
    )
    .await?;
    // Unknown method, unknown path, wrong HTTP method.
    refused(api, ADMIN, "frobnicate", "{}", 404, "not_found").await?;
    let auth = format!("Bearer {ADMIN}");
    let (status, _, body) = http_request(
        api,
        "GET",
        "/api/v1/publish",
        &[("authorization", &auth)],
        "",
    )
    .await?;
    assert_eq!(status, 405, "{body}");
    let (status, _, body) = http_request(api, "GET", "/elsewhere", &[], "").await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    // The client port has no API.
    let (status, _, _) = http_request(
        node.addr,
        "POST",
        "/api/v1/publish",
        &[("authorization", &auth)],
        publish,
    )
    .await?;
    assert_eq!(status, 404);

    // The served OpenAPI document is the committed one.
    let (status, _, served) = http_request(api, "GET", "/api/v1/openapi.json", &[], "").await?;
    assert_eq!(status, 200);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/server-api.openapi.json"
    ))?;
    assert_eq!(served, committed);
    Ok(())
}

/// A key in `api.keys_file` is rotated by rewriting the file: no restart, effective within
/// the poll period (1 s) — checked here within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_file_rotation_needs_no_restart() -> Result<()> {
    let dir = TempDir::new("api-keys")?;
    let file = dir.0.join("keys.toml");
    let old = "old-rotating-key-0123456789";
    let new = "new-rotating-key-0123456789";
    let keys = |secret: &str| {
        format!("[[keys]]\nname = \"rotating\"\nsecret = \"{secret}\"\nscopes = [\"read\"]\n")
    };
    std::fs::write(&file, keys(old))?;
    let redis = RedisServer::start()?;
    let extra = api_toml(&format!("keys_file = \"{}\"\n", file.display()));
    let node = NodeProcess::start("test-region", &redis.url(), &extra)?;
    let api = api_addr(&node)?;
    assert_eq!(call_raw(api, old, "info", "{}").await?.0, 200);
    assert_eq!(call_raw(api, new, "info", "{}").await?.0, 401);
    std::fs::write(&file, keys(new))?;
    let rotated = eventually(Duration::from_secs(5), || async {
        matches!(
            (
                call_raw(api, new, "info", "{}").await,
                call_raw(api, old, "info", "{}").await
            ),
            (Ok((200, _)), Ok((401, _)))
        )
    })
    .await;
    assert!(
        rotated,
        "the new key works and the old one is refused within 5 s"
    );
    // The config's keys are not affected by the file.
    assert_eq!(call_raw(api, ADMIN, "info", "{}").await?.0, 200);
    Ok(())
}

/// A publish from the API in region A is a room event of A that the relays replicate: a
/// member in region B gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_one_region_reaches_a_member_in_another() -> Result<()> {
    let timing = MeshTiming {
        node_extra: api_toml(""),
        ..MeshTiming::default()
    };
    let mesh = TestMesh::start(&["us-east", "eu-central"], 20, 1, timing).await?;
    mesh.wait_links(Duration::from_secs(10)).await?;
    let east = mesh.region("us-east")?;
    let eu = mesh.region("eu-central")?;
    let (mut bob, _) = Client::hello(&eu.node.ws_url(), &token("bob"), json!([])).await?;
    ok(bob.request(json!({"op": "join", "room": "x-room"})).await?)?;
    let api = api_addr(&east.node)?;
    // The relay follows the room in us-east once bob's interest arrives: publish until one
    // reaches bob (each publish is a new event; the first may precede the interest).
    let mut got = None;
    for i in 0..40 {
        call(api, "publish", json!({"room": "x-room", "data": {"i": i}})).await?;
        if let Ok(m) = bob
            .event_within("message", Duration::from_millis(250))
            .await
        {
            got = Some(m);
            break;
        }
    }
    let m = got.ok_or_else(|| anyhow!("no API publish from us-east reached eu-central"))?;
    assert_eq!(m["from"], "server");
    assert_eq!(m["origin"]["region"], "us-east", "{m}");
    Ok(())
}

/// The Rust client's `ServerApi`, as a backend would use it: typed calls, the node's errors
/// as `ServerApiError::Api`, a batch with one failing call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_server_api_client_speaks_the_api() -> Result<()> {
    use meridian_client::protocol::{RoomId, UserId};
    use meridian_client::server::{ServerApi, ServerApiError};

    let redis = RedisServer::start()?;
    let node = NodeProcess::start("test-region", &redis.url(), &api_toml(""))?;
    let base = format!("http://{}", api_addr(&node)?);
    let api = ServerApi::new(&base, ADMIN)?;
    let (mut alice, _) = Client::hello(&node.ws_url(), &token("alice"), json!([])).await?;
    ok(alice
        .request(json!({"op": "join", "room": "lobby"}))
        .await?)?;
    let lobby = RoomId::new("lobby")?;

    let first = api.publish(&lobby, &json!({"n": 1}), Some("once")).await?;
    let again = api.publish(&lobby, &json!({"n": 1}), Some("once")).await?;
    assert_eq!(
        (first.duplicate, again.duplicate, again.seq),
        (false, true, first.seq)
    );
    let m = alice.event("message").await?;
    assert_eq!(m["data"]["n"].as_i64(), Some(1));

    let members = api.members(&lobby, None, None).await?;
    assert_eq!(members.members.len(), 1, "{members:?}");
    let set = api
        .state_set(&lobby, "topic", &json!("hi"), Some(0))
        .await?;
    let conflict = api
        .state_set(&lobby, "topic", &json!("again"), Some(0))
        .await;
    assert!(
        matches!(&conflict, Err(ServerApiError::Api { status: 409, code, .. }) if code == "version_conflict"),
        "{conflict:?} after {set:?}"
    );
    let history = api.history(&lobby, None).await?;
    assert!(!history.lost && !history.events.is_empty(), "{history:?}");
    let info = api.info().await?;
    assert_eq!(info.region, "test-region");
    let sent = api.send(&UserId::new("alice")?, &json!({"hi": 1})).await?;
    assert!(sent.delivered);

    let replies = api
        .batch(&[
            ("members", json!({"room": "lobby"})),
            ("members", json!({"room": "lobby", "nope": 1})),
        ])
        .await?;
    assert!(replies[0].is_ok(), "{replies:?}");
    assert!(
        matches!(&replies[1], Err(ServerApiError::Api { code, .. }) if code == "bad_request"),
        "{replies:?}"
    );

    let reader = ServerApi::new(&base, READER)?;
    let refused = reader.publish(&lobby, &json!({}), None).await;
    assert!(
        matches!(&refused, Err(ServerApiError::Api { status: 403, code, .. }) if code == "forbidden"),
        "{refused:?}"
    );
    let stranger = ServerApi::new(&base, "not-a-key-0123456789abcdef")?;
    let refused = stranger.info().await;
    assert!(
        matches!(&refused, Err(e @ ServerApiError::Api { status: 401, .. }) if !e.is_retryable()),
        "{refused:?}"
    );
    Ok(())
}
