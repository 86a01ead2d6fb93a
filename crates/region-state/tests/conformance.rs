//! Runs the conformance suite against the in-memory store and against a real redis-server.

use async_trait::async_trait;
use region_state::conformance::{run_all, Harness};
use region_state::testing::RedisServer;
use region_state::{
    Inbound, MemoryRegion, NodeId, RedisStore, RedisStoreConfig, StateStore, StoreLimits,
};
use tokio::sync::mpsc;

struct Memory(MemoryRegion);

#[async_trait]
impl Harness for Memory {
    async fn node(&self, limits: StoreLimits) -> (Box<dyn StateStore>, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(4096);
        (
            Box::new(self.0.store("mem-region", NodeId::random(), limits, tx)),
            rx,
        )
    }
}

struct Redis(RedisServer);

#[async_trait]
impl Harness for Redis {
    async fn node(&self, limits: StoreLimits) -> (Box<dyn StateStore>, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(4096);
        let config =
            RedisStoreConfig::standalone(&self.0.url(), "redis-region", NodeId::random(), limits);
        (Box::new(RedisStore::connect(config, tx).await.unwrap()), rx)
    }
}

#[tokio::test]
async fn memory_store_conforms() {
    run_all(&Memory(MemoryRegion::new())).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    // The server is killed when the harness drops at the end of the test.
    let h = Redis(RedisServer::start().expect("redis-server"));
    run_all(&h).await;
}

#[tokio::test]
async fn redis_store_reports_unreachable_server() {
    let (tx, _rx) = mpsc::channel(1);
    let port = region_state::testing::free_port().unwrap();
    let config = RedisStoreConfig::standalone(
        &format!("redis://127.0.0.1:{port}/"),
        "r",
        NodeId::random(),
        StoreLimits::default(),
    );
    let err = RedisStore::connect(config, tx).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn redis_store_sums_the_region_load_over_live_nodes() {
    let server = RedisServer::start().expect("redis-server");
    let limits = StoreLimits {
        lease_ttl: std::time::Duration::from_millis(500),
        ..StoreLimits::default()
    };
    let mut stores = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = mpsc::channel(64);
        let config = RedisStoreConfig::standalone(
            &server.url(),
            "load-region",
            NodeId::random(),
            limits.clone(),
        );
        let store = RedisStore::connect(config, tx).await.unwrap();
        store.renew_lease().await.unwrap();
        stores.push((store, rx));
    }
    stores[0].0.region_load(10).await.unwrap();
    stores[1].0.region_load(20).await.unwrap();
    let load = stores[2].0.region_load(5).await.unwrap();
    assert_eq!((load.connections, load.nodes), (35, 3));
    // A node whose lease lapsed stops counting, and its figure is forgotten.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    stores[2].0.renew_lease().await.unwrap();
    stores[1].0.renew_lease().await.unwrap();
    let load = stores[2].0.region_load(5).await.unwrap();
    assert_eq!((load.connections, load.nodes), (25, 2));
    // A node that leaves cleanly takes its figure with it.
    stores[1].0.release_lease().await.unwrap();
    let load = stores[2].0.region_load(6).await.unwrap();
    assert_eq!((load.connections, load.nodes), (6, 1));
}

/// A batch of publishes that cannot reach Redis fails, within a bound, with one retryable
/// error for the whole batch (the node answers each of its publishes with `unavailable`).
#[tokio::test]
async fn redis_publish_batch_without_redis_fails_retryably() {
    use meridian_protocol::{RoomEventFrame, RoomId, UserId};
    use region_state::PublishItem;
    let server = RedisServer::start().expect("redis-server");
    let (tx, _rx) = mpsc::channel(64);
    let config =
        RedisStoreConfig::standalone(&server.url(), "r", NodeId::random(), StoreLimits::default());
    let store = RedisStore::connect(config, tx).await.unwrap();
    let room = RoomId::new("batch-outage").unwrap();
    let user = UserId::new("u").unwrap();
    let data: Vec<Box<serde_json::value::RawValue>> = (1..=3)
        .map(|i| serde_json::value::RawValue::from_string(i.to_string()).unwrap())
        .collect();
    let frames: Vec<RoomEventFrame> = data
        .iter()
        .map(|d| RoomEventFrame::message(&room, &user, d))
        .collect();
    let items: Vec<PublishItem<'_>> = frames
        .iter()
        .map(|frame| PublishItem {
            frame,
            idempotency: None,
        })
        .collect();
    drop(server);
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        store.publish_many(&room, &items),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
