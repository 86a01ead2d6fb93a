//! The replication half against a real `redis-server`: the apply script's dedupe, gap
//! detection and last-writer-wins merges, region loss, interest withdrawal, and the refusal
//! of forwarded or malformed events. (The full mesh over QUIC is in
//! `tests/tests/mesh.rs`.)

use std::time::Duration;

use interregion_relay::replicate::core::{CoreOptions, Input, Output, ReplicationCore};
use interregion_relay::replicate::ReplicationOptions;
use meridian_protocol::relay::{self, EventKind, Frame, RoomEvent, Snapshot};
use meridian_protocol::{
    Hlc, JsonText, LeftReason, RoomEventFrame, RoomEventKind, RoomId, StateRecord, UserId,
};
use redis::AsyncCommands;
use region_state::replica::{epoch_code, Applied, ReplicaConfig, ReplicaStore};
use region_state::testing::RedisServer;

const EPOCH: &str = "k3v9x0qa";

async fn store(redis: &RedisServer, region: &str) -> ReplicaStore {
    ReplicaStore::connect(ReplicaConfig {
        endpoint: region_state::RedisEndpoint::url(redis.url()),
        region: region.into(),
        history_len: 100,
        history_ttl: Duration::from_secs(600),
        idempotency_window: Duration::from_secs(300),
    })
    .await
    .unwrap()
}

fn user(u: &str) -> UserId {
    UserId::new(u).unwrap()
}

fn stamp(ms: u64) -> Hlc {
    Hlc {
        wall_ms: 1_700_000_000_000 + ms,
        logical: 0,
    }
}

fn event(room: &RoomId, seq: u64, prev: u64, kind: EventKind) -> RoomEvent {
    RoomEvent {
        room: room.clone(),
        origin_region: "eu".into(),
        origin_epoch: epoch_code(EPOCH),
        origin_seq: seq,
        hlc: stamp(seq),
        prev_seq: prev,
        kind,
    }
}

fn message(n: u64) -> EventKind {
    EventKind::Event(RoomEventKind::Message {
        from: user("bob"),
        data: JsonText::new(format!("{{\"n\":{n}}}")).unwrap(),
        idempotency: None,
    })
}

async fn members(redis: &RedisServer, room: &RoomId) -> Vec<(String, String)> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut reg: Vec<(String, String)> = c
        .hgetall::<_, std::collections::HashMap<String, String>>(format!("mr:{{{room}}}:reg"))
        .await
        .unwrap()
        .into_iter()
        .collect();
    reg.sort();
    reg
}

#[tokio::test]
async fn apply_dedupes_detects_gaps_and_merges_by_last_writer() {
    let redis = RedisServer::start().unwrap();
    let ap = store(&redis, "ap").await;
    let room = RoomId::new("stage").unwrap();

    // Without a snapshot first there is no watermark: a gap.
    let early = ap.apply(&event(&room, 3, 2, message(0))).await.unwrap();
    assert_eq!(early, Applied::Gap);
    let snapshot = EventKind::Snapshot(Snapshot {
        members: vec![(user("bob"), stamp(1))],
        state: vec![StateRecord {
            key: "topic".into(),
            value: Some(JsonText::new("\"a\"").unwrap()),
            hlc: stamp(2),
            region: "eu".into(),
            by: user("bob"),
        }],
    });
    assert_eq!(
        ap.apply(&event(&room, 5, 0, snapshot)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(
        members(&redis, &room).await,
        vec![("bob".into(), "eu".into())]
    );
    // In order: applied; again: duplicate; a skipped predecessor: gap, nothing written.
    assert_eq!(
        ap.apply(&event(&room, 7, 5, message(7))).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(
        ap.apply(&event(&room, 7, 5, message(7))).await.unwrap(),
        Applied::Duplicate
    );
    assert_eq!(
        ap.apply(&event(&room, 9, 8, message(9))).await.unwrap(),
        Applied::Gap
    );
    let batch = ap.read_local(&room, 0, 100).await.unwrap();
    let messages: Vec<_> = batch
        .entries
        .iter()
        .map(|e| RoomEventFrame::decode(&e.frame).unwrap())
        .filter(|e| matches!(e.kind, RoomEventKind::Message { .. }))
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0].origin.as_ref().map(|o| o.region.as_str()),
        Some("eu"),
        "{:?}",
        messages[0]
    );
    assert!(
        batch.entries.iter().all(|e| e.origin.is_some()),
        "replicated entries are tagged"
    );
    assert_eq!(
        ap.watermarks("eu", std::slice::from_ref(&room))
            .await
            .unwrap(),
        vec![Some((EPOCH.to_owned(), 7))]
    );

    // Last writer wins on a state key: an older write from the origin is superseded.
    let older = RoomEvent {
        hlc: stamp(1),
        ..event(
            &room,
            8,
            7,
            EventKind::Event(RoomEventKind::StateSet {
                key: "topic".into(),
                value: JsonText::new("\"stale\"").unwrap(),
                by: user("bob"),
            }),
        )
    };
    assert_eq!(ap.apply(&older).await.unwrap(), Applied::Superseded);
    let newer = event(
        &room,
        10,
        8,
        EventKind::Event(RoomEventKind::StateDelete {
            key: "topic".into(),
            by: user("bob"),
        }),
    );
    assert_eq!(ap.apply(&newer).await.unwrap(), Applied::Applied);
    let snap = ap.snapshot(&room).await.unwrap();
    let topic = snap.state.iter().find(|r| r.key == "topic").unwrap();
    assert!(topic.value.is_none(), "deleted, kept as a tombstone");

    // The origin's own member leaves.
    assert_eq!(
        ap.apply(&event(
            &room,
            11,
            10,
            EventKind::Event(RoomEventKind::Left {
                user: user("bob"),
                reason: LeftReason::Leave,
            })
        ))
        .await
        .unwrap(),
        Applied::Applied
    );
    assert!(members(&redis, &room).await.is_empty());
}

#[tokio::test]
async fn a_region_declared_down_loses_its_members_but_not_rehomed_ones() {
    let redis = RedisServer::start().unwrap();
    let ap = store(&redis, "ap").await;
    let room = RoomId::new("lobby").unwrap();
    let snapshot = EventKind::Snapshot(Snapshot {
        members: vec![(user("bob"), stamp(1)), (user("carol"), stamp(1))],
        state: Vec::new(),
    });
    ap.apply(&event(&room, 4, 0, snapshot)).await.unwrap();
    // carol holds a connection here (as the join script records it).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = c
        .hset(format!("mr:{{{room}}}:cc"), "carol", 1)
        .await
        .unwrap();
    assert_eq!(ap.region_down(&room, "eu").await.unwrap(), 1);
    assert_eq!(
        members(&redis, &room).await,
        vec![("carol".into(), "ap".into())]
    );
    let batch = ap.read_local(&room, 0, 100).await.unwrap();
    let last: Vec<String> = batch
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.frame).into_owned())
        .collect();
    assert!(
        last.iter().any(|f| f.contains("\"type\":\"left\"")
            && f.contains("\"user\":\"bob\"")
            && f.contains("\"reason\":\"region_down\"")),
        "{last:?}"
    );
    assert!(
        !last
            .iter()
            .any(|f| f.contains("\"type\":\"left\"") && f.contains("\"user\":\"carol\"")),
        "{last:?}"
    );
    // The watermark stays: when the region is back it resumes after it.
    assert_eq!(
        ap.watermarks("eu", std::slice::from_ref(&room))
            .await
            .unwrap(),
        vec![Some((EPOCH.to_owned(), 4))]
    );
    // With carol's connection gone, withdrawing the interest purges the replica silently.
    let _: () = c.del(format!("mr:{{{room}}}:cc")).await.unwrap();
    let _: () = c.hdel(format!("mr:{{{room}}}:reg"), "carol").await.unwrap();
    ap.apply(&event(
        &room,
        5,
        0,
        EventKind::Snapshot(Snapshot {
            members: vec![(user("dave"), stamp(9))],
            state: Vec::new(),
        }),
    ))
    .await
    .unwrap();
    assert_eq!(ap.purge_remote(&room).await.unwrap(), Some(1));
    assert!(members(&redis, &room).await.is_empty());
}

#[tokio::test]
async fn the_sink_refuses_forwarded_and_malformed_events() {
    let redis = RedisServer::start().unwrap();
    let ap = store(&redis, "ap").await;
    let room = RoomId::new("stage").unwrap();
    // The core decides, the driver executes its `Apply` on the store (as here).
    let core = std::sync::Mutex::new(ReplicationCore::new(
        "ap",
        &["eu".into(), "us".into()],
        CoreOptions::from(&ReplicationOptions::default()),
        Duration::ZERO,
    ));
    let receive = |peer: &'static str, event: RoomEvent| {
        let outputs = core.lock().unwrap().handle(
            Duration::from_secs(1),
            Input::PeerFrame {
                peer: peer.into(),
                frame: Frame::RoomEvent(event),
            },
        );
        let ap = ap.clone();
        async move {
            let mut malformed = false;
            for output in outputs {
                match output {
                    Output::Apply { event, .. } => {
                        ap.apply(&event).await.unwrap();
                    }
                    Output::Malformed { .. } => malformed = true,
                    other => panic!("unexpected {other:?}"),
                }
            }
            malformed
        }
    };
    let frame = |origin: &str, kind: EventKind| RoomEvent {
        room: room.clone(),
        origin_region: origin.into(),
        origin_epoch: epoch_code(EPOCH),
        origin_seq: 3,
        prev_seq: 0,
        hlc: Hlc::default(),
        kind,
    };
    let snapshot = EventKind::Snapshot(Snapshot {
        members: vec![(user("bob"), Hlc::default())],
        state: Vec::new(),
    });
    // us-peer sending an event that originated in eu: never applied.
    assert!(receive("us", frame("eu", snapshot.clone())).await);
    assert!(ap
        .read_local(&room, 0, 10)
        .await
        .unwrap()
        .entries
        .is_empty());
    // Invalid JSON in a message body: refused (the frame carrying it does not decode, so no
    // such event reaches the sink).
    let message = frame(
        "eu",
        EventKind::Event(RoomEventKind::Message {
            from: user("bob"),
            data: JsonText::new("{\"json\":1}").unwrap(),
            idempotency: None,
        }),
    );
    let mut bytes = relay::encode(&Frame::RoomEvent(message), 1 << 20).unwrap()[4..].to_vec();
    let at = bytes
        .windows(10)
        .position(|w| w == b"{\"json\":1}")
        .unwrap();
    bytes[at..at + 10].copy_from_slice(b"{not json\"");
    if let Ok(Frame::RoomEvent(e)) = relay::decode(&bytes) {
        receive("eu", e).await;
        panic!("a relay frame with invalid JSON decoded");
    }
    assert!(ap
        .read_local(&room, 0, 10)
        .await
        .unwrap()
        .entries
        .is_empty());
    // The real thing is applied.
    assert!(!receive("eu", frame("eu", snapshot)).await);
    assert_eq!(ap.read_local(&room, 0, 10).await.unwrap().entries.len(), 1);
    assert_eq!(
        members(&redis, &room).await,
        vec![("bob".into(), "eu".into())]
    );
}

#[tokio::test]
async fn a_publish_retried_in_another_region_is_applied_once() {
    let redis = RedisServer::start().unwrap();
    let ap = store(&redis, "ap").await;
    let room = RoomId::new("stage").unwrap();
    let snapshot = EventKind::Snapshot(Snapshot {
        members: Vec::new(),
        state: Vec::new(),
    });
    ap.apply(&event(&room, 1, 0, snapshot.clone()))
        .await
        .unwrap();
    let keyed = |n: u64| {
        EventKind::Event(RoomEventKind::Message {
            from: user("bob"),
            data: JsonText::new(format!("{{\"n\":{n}}}")).unwrap(),
            idempotency: Some("bob|k1".into()),
        })
    };
    // The original from eu-central is applied and remembered by its idempotency id.
    assert_eq!(
        ap.apply(&event(&room, 2, 1, keyed(1))).await.unwrap(),
        Applied::Applied
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let seq: Option<u64> = c.get(format!("mr:{{{room}}}:idem:bob|k1")).await.unwrap();
    assert!(seq.is_some(), "a retry of the publish here finds it");
    // The client's retry, published in us-east and replicated from there: not again.
    let mut retry = event(&room, 7, 0, snapshot);
    retry.origin_region = "us".into();
    ap.apply(&retry).await.unwrap();
    let mut retry = event(&room, 8, 7, keyed(1));
    retry.origin_region = "us".into();
    assert_eq!(ap.apply(&retry).await.unwrap(), Applied::Superseded);
    let messages = ap
        .read_local(&room, 0, 100)
        .await
        .unwrap()
        .entries
        .iter()
        .filter(|e| String::from_utf8_lossy(&e.frame).contains("\"type\":\"message\""))
        .count();
    assert_eq!(messages, 1);
}

/// The join-time resume point: the position just before the first history entry stamped at
/// or after a moment, so a new follower gets everything appended since its members joined.
#[tokio::test]
async fn the_position_before_a_moment_covers_everything_appended_since() {
    let redis = RedisServer::start().unwrap();
    let ap = store(&redis, "ap").await;
    let room = RoomId::new("stage").unwrap();
    let snapshot = EventKind::Snapshot(Snapshot {
        members: vec![(user("bob"), stamp(1))],
        state: vec![],
    });
    assert_eq!(
        ap.apply(&event(&room, 5, 0, snapshot)).await.unwrap(),
        Applied::Applied
    );
    for (seq, prev) in [(7, 5), (8, 7)] {
        assert_eq!(
            ap.apply(&event(&room, seq, prev, message(seq)))
                .await
                .unwrap(),
            Applied::Applied
        );
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(30)).await;
    for (seq, prev) in [(10, 8), (11, 10)] {
        assert_eq!(
            ap.apply(&event(&room, seq, prev, message(seq)))
                .await
                .unwrap(),
            Applied::Applied
        );
    }
    let history = ap.read_local(&room, 0, 100).await.unwrap();
    let seq_of = |n: u64| {
        history
            .entries
            .iter()
            .find(|e| {
                std::str::from_utf8(&e.frame)
                    .unwrap()
                    .contains(&format!("{{\"n\":{n}}}"))
            })
            .map(|e| e.seq)
            .unwrap()
    };
    let (epoch, at) = ap.position_before(&room, cut).await.unwrap();
    assert_eq!(epoch, history.epoch);
    assert_eq!(at, seq_of(8), "the last entry before the cut");
    assert_eq!(
        seq_of(10),
        at + 1,
        "replaying after it starts with the first one after"
    );
    // Before everything: from the start of the history; after everything: nothing to replay.
    let (_, first) = ap.position_before(&room, 1).await.unwrap();
    assert_eq!(first, history.oldest.unwrap() - 1);
    let (_, last) = ap.position_before(&room, u64::MAX).await.unwrap();
    assert_eq!(last, history.seq);
    // No history at all: the current position.
    let empty = RoomId::new("empty").unwrap();
    assert_eq!(ap.position_before(&empty, cut).await.unwrap().1, 0);
}
