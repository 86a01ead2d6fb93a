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
        let config = RedisStoreConfig {
            url: self.0.url(),
            region: "redis-region".into(),
            node: NodeId::random(),
            limits,
        };
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
    let config = RedisStoreConfig {
        url: format!("redis://127.0.0.1:{port}/"),
        region: "r".into(),
        node: NodeId::random(),
        limits: StoreLimits::default(),
    };
    let err = RedisStore::connect(config, tx).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
