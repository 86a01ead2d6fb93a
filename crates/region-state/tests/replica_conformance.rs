//! Runs the replica conformance suite (the apply rules) against the Lua scripts in a real
//! redis-server; the Rust model runs the same suite in its unit tests.

use std::time::Duration;

use region_state::replica::{conformance::run_all, ReplicaConfig, ReplicaStore};
use region_state::testing::RedisServer;

#[tokio::test]
async fn redis_replica_conforms() {
    let redis = RedisServer::start().expect("redis-server");
    let store = ReplicaStore::connect(ReplicaConfig {
        endpoint: region_state::RedisEndpoint::url(redis.url()),
        region: "ap".into(),
        history_len: 100,
        history_ttl: Duration::from_secs(600),
        idempotency_window: Duration::from_secs(300),
    })
    .await
    .expect("connect");
    run_all(&store).await;
}
