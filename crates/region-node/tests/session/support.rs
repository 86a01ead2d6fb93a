//! An in-process node on a fresh memory region, and tokens for it.

use std::sync::Arc;
use std::time::Duration;

use meridian_client::protocol::token::{issue, Claims, RoomGrant};
use meridian_client::protocol::UserId;
use meridian_client::{ClientError, Connection, Event};
use region_node::{NodeConfig, RunningNode};
use region_state::{MemoryRegion, NodeId, StateStore};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "session-test-secret-0123";
pub const REGION: &str = "test";

/// A node serving on `127.0.0.1:0`; cancelled (drained) when dropped.
pub struct TestNode {
    pub url: String,
    pub running: RunningNode,
    pub shutdown: CancellationToken,
    #[allow(dead_code)]
    pub store: Arc<dyn StateStore>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a node with the dev configuration changed by `tune`.
pub async fn start(tune: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let mut config = NodeConfig::dev(REGION, SECRET);
    tune(&mut config);
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let store: Arc<dyn StateStore> =
        Arc::new(MemoryRegion::new().store(REGION, NodeId::random(), config.store_limits(), tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let running =
        region_node::start_with_store(config, store.clone(), rx, listener, shutdown.clone())
            .await
            .unwrap();
    TestNode {
        url: format!("ws://{}/v1/ws", running.addr),
        running,
        shutdown,
        store,
    }
}

/// A token for `user`: every room with publish, valid for `ttl`.
pub fn token_for(user: &str, ttl: Duration) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + ttl.as_secs();
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

/// A token for `user`, valid for ten minutes.
pub fn token(user: &str) -> String {
    token_for(user, Duration::from_secs(600))
}

/// Connects and says hello as `user`.
pub async fn connect(node: &TestNode, user: &str) -> Connection {
    let mut c = Connection::connect(&node.url).await.unwrap();
    c.hello(&token(user), Vec::new()).await.unwrap();
    c
}

/// Real-time tests: anything that takes longer than this is a failure.
pub const WAIT: Duration = Duration::from_secs(5);

/// The next event within [`WAIT`].
pub async fn event(c: &mut Connection) -> Event {
    tokio::time::timeout(WAIT, c.next_event())
        .await
        .expect("an event in time")
        .unwrap()
}

/// Reads until the connection ends; the close code (`None`: ended without a close frame).
pub async fn closed(c: &mut Connection, within: Duration) -> Option<u16> {
    let ended = tokio::time::timeout(within, async {
        loop {
            match c.next_frame().await {
                Ok(_) => {}
                Err(ClientError::Closed(info)) => return info.map(|i| i.code),
                Err(e) => panic!("the connection failed instead of closing: {e}"),
            }
        }
    })
    .await;
    ended.expect("the node closes the connection")
}
