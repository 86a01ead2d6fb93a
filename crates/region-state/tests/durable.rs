//! Durable mode against real servers: a publish is acknowledged only once a replica has it.

use std::time::{Duration, Instant};

use meridian_protocol::{RoomEventFrame, RoomId, UserId};
use region_state::testing::RedisServer;
use region_state::{
    Durability, NodeId, RedisStore, RedisStoreConfig, StateStore, StoreError, StoreLimits,
};
use tokio::sync::mpsc;

async fn store(url: &str, timeout_ms: u64) -> RedisStore {
    let (tx, rx) = mpsc::channel(64);
    // Keep the receiver alive for the test's duration; nothing is subscribed.
    std::mem::forget(rx);
    let mut config = RedisStoreConfig::standalone(
        url,
        "durable-region",
        NodeId::random(),
        StoreLimits::default(),
    );
    config.durable = Some(Durability {
        replicas: 1,
        timeout: Duration::from_millis(timeout_ms),
    });
    RedisStore::connect(config, tx).await.unwrap()
}

fn replica_online(primary_port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{primary_port}/")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    redis::cmd("INFO")
        .arg("replication")
        .query::<String>(&mut conn)
        .is_ok_and(|i| i.contains("state=online"))
}

#[tokio::test]
async fn durable_publish_waits_for_a_replica() {
    // No 5 s diskless-sync delay before the replica's first sync.
    let primary = RedisServer::start_with_args(&["--repl-diskless-sync-delay", "0"]).unwrap();
    let room = RoomId::new("durable").unwrap();
    let alice = UserId::new("alice").unwrap();
    let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
    let frame = RoomEventFrame::message(&room, &alice, &data);

    // No replica: the publish is applied but not acknowledged.
    let s = store(&primary.url(), 200).await;
    let started = Instant::now();
    let err = s
        .publish(&room, &frame, Some((&alice, "k1")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotDurable {
                acked: 0,
                wanted: 1
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(started.elapsed() >= Duration::from_millis(190));

    // With a replica, the retry (same key) is answered from the first attempt, confirmed.
    let port = primary.port().to_string();
    let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Online as the primary sees it (after the replica's first ACK), not just linked.
    while !replica_online(primary.port()) {
        assert!(Instant::now() < deadline, "replica did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Retries with the same key, as a client would: right after a full sync the first WAIT
    // may still time out.
    let retry = loop {
        match s.publish(&room, &frame, Some((&alice, "k1"))).await {
            Ok(p) => break p,
            Err(StoreError::NotDurable { .. }) if Instant::now() < deadline => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(retry.duplicate);
    assert_eq!(retry.seq, 1);
    let fresh = s.publish(&room, &frame, None).await.unwrap();
    assert_eq!((fresh.seq, fresh.duplicate), (2, false));
    // The replica has both events (it was confirmed, so a failover now would keep them).
    let mut conn = redis::Client::open(replica.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg("mr:{durable}:hist")
        .query(&mut conn)
        .unwrap();
    assert_eq!(len, 2);
}
