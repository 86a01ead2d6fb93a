//! A session's failure gives back everything it holds (in-process node, memory store).

use std::sync::Arc;
use std::time::Duration;

use super::FAULT_KEY;
use crate::config::NodeConfig;
use futures_util::{SinkExt, StreamExt};
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::{RoomId, UserId};
use region_state::{MemoryRegion, NodeId, StateStore};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "session-test-secret-0123";

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = Claims {
        sub: UserId::new(user).unwrap(),
        exp,
        rooms: vec![RoomGrant {
            pattern: "*".into(),
            publish: true,
        }],
        nbf: None,
        iat: None,
        dm: false,
    };
    issue(SECRET.as_bytes(), &claims).unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `req` and returns the next text frame, or `None` when the connection ended.
async fn ask(ws: &mut Ws, req: serde_json::Value) -> Option<serde_json::Value> {
    ws.send(WsMessage::Text(req.to_string().into()))
        .await
        .ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return None,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("no answer to {req} within 5 s"),
        }
    }
}

async fn open_gauge(addr: std::net::SocketAddr) -> i64 {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find(|l| l.starts_with("meridian_node_connections{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// A session that fails (here: a panic injected on one `state_get` key) gives back its
/// admission slot and its memberships. Before the guards, 20 such failures with
/// `max_connections = 20` left the gauge at 20 and every later user shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_session_gives_back_its_slot_and_rooms() {
    let mut config = NodeConfig::dev("test", SECRET);
    config.limits.max_connections = 20;
    let (tx, rx) = mpsc::channel(4096);
    let store: Arc<dyn StateStore> =
        Arc::new(MemoryRegion::new().store("test", NodeId::random(), config.store_limits(), tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running =
        crate::node::start_with_store(config, store.clone(), rx, listener, shutdown.clone())
            .await
            .unwrap();
    let url = format!("ws://{}/v1/ws", running.addr);
    let room = RoomId::new("poisoned").unwrap();
    for i in 0..30 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let hello = ask(
            &mut ws,
            json!({"id": 1, "op": "hello", "token": token(&format!("u{i}"))}),
        )
        .await
        .unwrap();
        assert_eq!(hello["type"], "ok", "reader {i}: {hello}");
        let joined = ask(&mut ws, json!({"id": 2, "op": "join", "room": "poisoned"}))
            .await
            .unwrap();
        assert_eq!(joined["type"], "ok", "{joined}");
        let read = ask(
            &mut ws,
            json!({"id": 3, "op": "state_get", "room": "poisoned", "key": FAULT_KEY}),
        )
        .await;
        assert!(
            read.is_none(),
            "the injected fault ends the session: {read:?}"
        );
    }
    // Every slot and membership comes back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gauge = open_gauge(running.addr).await;
        let members = store.members(&room, None, 100).await.unwrap().members;
        if gauge == 0 && members.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge {gauge}, members {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a new user gets in.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let hello = ask(
        &mut ws,
        json!({"id": 1, "op": "hello", "token": token("late")}),
    )
    .await
    .unwrap();
    assert_eq!(hello["type"], "ok", "{hello}");
    shutdown.cancel();
}
