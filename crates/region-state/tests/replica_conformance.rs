//! Runs the replica conformance suite (the apply rules) against the Lua scripts in a real
//! redis-server; the Rust model runs the same suite in its unit tests.

use std::time::Duration;

use region_state::replica::{conformance::run_all, ReplicaConfig, ReplicaStore};
use region_state::testing::RedisServer;

async fn connect(redis: &RedisServer) -> ReplicaStore {
    ReplicaStore::connect(ReplicaConfig {
        endpoint: region_state::RedisEndpoint::url(redis.url()),
        region: "ap".into(),
        history_len: 100,
        history_ttl: Duration::from_secs(600),
        idempotency_window: Duration::from_secs(300),
    })
    .await
    .expect("connect")
}

#[tokio::test]
async fn redis_replica_conforms() {
    let redis = RedisServer::start().expect("redis-server");
    let store = connect(&redis).await;
    run_all(&store).await;
}

/// After a Redis restart the script cache is empty: a batch of applies loads the script and
/// runs, every event once.
#[tokio::test]
async fn a_batch_of_applies_survives_an_empty_script_cache() {
    use meridian_protocol::relay::{epoch_code, EventKind, RoomEvent, Snapshot};
    use meridian_protocol::{Hlc, JsonText, RoomEventKind, RoomId, UserId};
    use region_state::replica::Applied;

    let redis = RedisServer::start().expect("redis-server");
    let store = connect(&redis).await;
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("script flush");
    let room = RoomId::new("noscript").expect("room");
    let hlc = Hlc {
        wall_ms: 1_700_000_000_000,
        logical: 0,
    };
    let event = |seq: u64, prev: u64, kind: EventKind| RoomEvent {
        room: room.clone(),
        origin_region: "eu".into(),
        origin_epoch: epoch_code("k3v9x0qa"),
        origin_seq: seq,
        prev_seq: prev,
        hlc,
        kind,
    };
    let bob = UserId::new("bob").expect("user");
    let batch = [
        event(
            1,
            0,
            EventKind::Snapshot(Snapshot {
                members: vec![(bob.clone(), hlc)],
                state: Vec::new(),
            }),
        ),
        event(
            2,
            1,
            EventKind::Event(RoomEventKind::Message {
                from: bob,
                data: JsonText::new("{}").expect("json"),
                idempotency: None,
            }),
        ),
    ];
    assert_eq!(
        store
            .apply_batch(&batch)
            .await
            .expect("batch after SCRIPT FLUSH"),
        vec![Applied::Applied, Applied::Applied]
    );
    assert_eq!(
        store.apply_batch(&batch).await.expect("again"),
        vec![Applied::Duplicate, Applied::Duplicate]
    );
}
