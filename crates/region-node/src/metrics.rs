//! Prometheus metrics of one node, served at `/metrics`. One registry per node instance (no
//! globals), so several nodes can run in one test process.

use std::time::Duration;

use meridian_protocol::ErrorCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (authenticated or not).
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Successful joins.
    pub joins: Counter,
    /// Text frames received from clients.
    pub frames_in: Counter,
    /// Frames sent to clients (replies, events, replays).
    pub frames_out: Counter,
    /// Room events delivered to local subscribers (one per subscriber).
    pub deliveries: Counter,
    /// Time to hand one room event to every local subscriber, from its arrival on pub/sub.
    pub fanout_seconds: Histogram,
    /// Latency of state store calls, by operation.
    pub store_seconds: Family<Labels, Histogram>,
    /// Error replies, by code.
    pub errors: Family<Labels, Counter>,
    /// Connections dropped because their send queue filled.
    pub slow_consumers: Counter,
    /// Connection attempts shed by the accept rate (sent `reconnect` `overloaded`).
    pub shed_connections: Counter,
    /// Members removed from rooms because their node died.
    pub reaped_members: Counter,
    /// 1 while the node's Redis primary accepts writes (the last lease renewal succeeded).
    pub redis_up: Gauge,
    /// Connections refused before `hello`, by reason: `unauthenticated` (node-wide budget of
    /// not-yet-authenticated connections), `source` (one source's share of it), `source_rate`
    /// (one source's accept rate), `fd_limit` (the process is at its file-descriptor limit),
    /// `upgrade_timeout` (no complete upgrade request in time).
    pub refused_connections: Family<Labels, Counter>,
    /// Connections that have not finished `hello` (from the TCP accept on).
    pub unauthenticated: Gauge,
    /// 1 while the client listener sheds at the file-descriptor limit.
    pub at_fd_limit: Gauge,
    /// Times the node re-registered its lease after it had expired and re-asserted its
    /// sessions' presence and memberships.
    pub lease_reasserts: Counter,
    /// Server API calls, by method and HTTP status.
    pub api_calls: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

impl Metrics {
    /// A fresh registry with every metric registered under `meridian_node_`.
    pub fn new(region: &str) -> Self {
        let mut root = Registry::with_prefix_and_labels(
            "meridian_node",
            [(
                std::borrow::Cow::Borrowed("region"),
                std::borrow::Cow::Owned(region.to_owned()),
            )]
            .into_iter(),
        );
        let m = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            joins: Counter::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            deliveries: Counter::default(),
            fanout_seconds: latency_histogram(),
            store_seconds: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            slow_consumers: Counter::default(),
            shed_connections: Counter::default(),
            reaped_members: Counter::default(),
            redis_up: Gauge::default(),
            refused_connections: Family::default(),
            unauthenticated: Gauge::default(),
            at_fd_limit: Gauge::default(),
            lease_reasserts: Counter::default(),
            api_calls: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut root;
        r.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Connections accepted",
            m.connections_total.clone(),
        );
        r.register("joins", "Successful room joins", m.joins.clone());
        r.register("frames_in", "Text frames received", m.frames_in.clone());
        r.register("frames_out", "Frames sent", m.frames_out.clone());
        r.register(
            "deliveries",
            "Room events handed to local subscribers",
            m.deliveries.clone(),
        );
        r.register(
            "fanout_seconds",
            "Time to hand one room event to all local subscribers",
            m.fanout_seconds.clone(),
        );
        r.register(
            "store_seconds",
            "State store call latency by operation",
            m.store_seconds.clone(),
        );
        r.register("errors", "Error replies by code", m.errors.clone());
        r.register(
            "slow_consumers",
            "Connections dropped for a full send queue",
            m.slow_consumers.clone(),
        );
        r.register(
            "shed_connections",
            "Connection attempts shed by the accept rate or connection limit",
            m.shed_connections.clone(),
        );
        r.register(
            "reaped_members",
            "Room memberships removed from dead nodes",
            m.reaped_members.clone(),
        );
        r.register(
            "redis_up",
            "1 while the node's Redis primary accepts writes",
            m.redis_up.clone(),
        );
        r.register(
            "refused_connections",
            "Connections refused before hello, by reason",
            m.refused_connections.clone(),
        );
        r.register(
            "unauthenticated_connections",
            "Connections that have not finished hello (from the TCP accept on)",
            m.unauthenticated.clone(),
        );
        r.register(
            "at_fd_limit",
            "1 while the client listener sheds at the file-descriptor limit",
            m.at_fd_limit.clone(),
        );
        r.register(
            "lease_reasserts",
            "Times the node re-registered an expired lease and re-asserted its sessions",
            m.lease_reasserts.clone(),
        );
        r.register(
            "api_calls",
            "Server API calls by method and HTTP status",
            m.api_calls.clone(),
        );
        Self {
            registry: root,
            ..m
        }
    }

    /// Counts an error reply.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&vec![("code", code.as_str())])
            .inc();
    }

    /// Counts a connection refused before `hello`.
    pub fn refused(&self, reason: &'static str) {
        self.refused_connections
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts one server API call.
    pub fn api_call(&self, method: &'static str, status: &'static str) {
        self.api_calls
            .get_or_create(&vec![("method", method), ("status", status)])
            .inc();
    }

    /// Records one store call.
    pub fn store_call(&self, op: &'static str, took: Duration) {
        self.store_seconds
            .get_or_create(&vec![("op", op)])
            .observe(took.as_secs_f64());
    }

    /// The registry, for metrics owned elsewhere (webhook delivery).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
