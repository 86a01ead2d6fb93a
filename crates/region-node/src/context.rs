//! What a node's sessions, loops and HTTP handlers share: the [`Node`]. It depends on nothing
//! that uses it, so `session` and `node` both build on it without importing each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_protocol::token::TokenVerifier;
use region_state::StateStore;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::NodeConfig;
use crate::fanout::LocalIndex;
use crate::metrics::Metrics;
use crate::signal::Signal;

/// Everything a node's sessions and loops share.
pub struct Node {
    /// The validated configuration.
    pub config: Arc<NodeConfig>,
    /// The regional state store.
    pub store: Arc<dyn StateStore>,
    /// Token verification with the shared secret.
    pub verifier: TokenVerifier,
    /// Local rooms and users.
    pub local: LocalIndex,
    /// Metrics.
    pub metrics: Metrics,
    /// Webhook delivery metrics (registered in `metrics`).
    pub webhook_metrics: meridian_webhooks::WebhookMetrics,
    next_conn: AtomicU64,
    /// Fired on SIGTERM: sessions send `reconnect`, `/readyz` fails.
    pub draining: Signal,
    /// Fired when sessions still open must close (drain grace over).
    pub closing: Signal,
    /// Bounded accept rate: sheds connection attempts beyond it.
    pub admission: Admission,
    /// Wakes the lease loop to renew at once (after the store reconnected).
    pub renew_now: tokio::sync::Notify,
    /// Since when the lease has been renewed without a break (and re-asserted if it had
    /// lapsed); `None` while it is not. The reaper runs only after a full lease TTL of this.
    lease_healthy_since: std::sync::Mutex<Option<Instant>>,
    /// Every session's task, so the drain can wait for them.
    pub(crate) sessions: TaskTracker,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", self.store.node())
            .finish()
    }
}

impl Node {
    /// A node on `store` with nothing connected yet.
    pub(crate) fn new(config: NodeConfig, store: Arc<dyn StateStore>) -> Self {
        let mut metrics = Metrics::new(&config.region);
        let webhook_metrics = meridian_webhooks::WebhookMetrics::default();
        webhook_metrics.register(metrics.registry_mut());
        Node {
            admission: Admission::new(&config),
            renew_now: tokio::sync::Notify::new(),
            // A fresh node has just renewed: it may reap at once (the TTL wait is for recoveries).
            lease_healthy_since: std::sync::Mutex::new(
                Instant::now().checked_sub(Duration::from_millis(config.timing.lease_ttl_ms)),
            ),
            verifier: TokenVerifier::new(config.token_secret.as_bytes()),
            metrics,
            webhook_metrics,
            config: Arc::new(config),
            store,
            local: LocalIndex::default(),
            next_conn: AtomicU64::new(0),
            draining: Signal::new(),
            closing: Signal::new(),
            sessions: TaskTracker::new(),
        }
    }

    /// A fresh connection number.
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The newest connection number handed out so far.
    pub(crate) fn newest_conn(&self) -> u64 {
        self.next_conn.load(Ordering::Relaxed)
    }

    /// Times one store call into the `store_seconds` histogram.
    pub async fn timed<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.metrics.store_call(op, start.elapsed());
        out
    }

    /// Records whether the lease is being renewed: a healthy stretch starts now if none was
    /// running; an unhealthy renewal ends it.
    pub(crate) fn set_lease_healthy(&self, healthy: bool) {
        let mut since = self
            .lease_healthy_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !healthy {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// Whether the lease has been healthy for at least `span`.
    pub(crate) fn lease_healthy_for(&self, span: Duration) -> bool {
        self.lease_healthy_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|since| since.elapsed() >= span)
    }
}
