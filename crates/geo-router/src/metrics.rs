//! Prometheus metrics of one router, served at `/metrics`. One registry per instance (no
//! globals), so several routers can run in one test process. Names are listed in
//! `docs/geo-router.md`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label sets with values known only at run time (region names).
pub type Labels = Vec<(&'static str, String)>;

/// (route, status) pairs counted through [`Metrics::http_request`]'s fast path.
const HOT_HTTP: [(&str, u16); 4] = [
    ("route", 200),
    ("route", 503),
    ("connect", 307),
    ("connect", 503),
];

/// Every metric the router exports.
pub struct Metrics {
    registry: Registry,
    /// DNS queries answered, by query type and response code.
    pub dns_queries: Family<Labels, Counter>,
    /// DNS packets dropped without an answer (too short, or a response).
    pub dns_dropped: Counter,
    /// DNS requests limited per client network, by what was done (`truncated`: a TC=1 reply
    /// over UDP, `tcp_refused`: a TCP connection closed on accept).
    pub dns_limited: Family<Labels, Counter>,
    /// Routing answers (DNS `ws` and HTTP), by region and reason.
    pub answers: Family<Labels, Counter>,
    /// Time to decide one route (GeoIP lookup, ranking, scope).
    pub decision_seconds: Histogram,
    /// 1 when the region's health checks pass (or it has not been checked yet).
    pub region_healthy: Family<Labels, Gauge>,
    /// 1 for the region's current control state.
    pub region_control: Family<Labels, Gauge>,
    /// Reported load, per mille of capacity.
    pub region_load_permille: Family<Labels, Gauge>,
    /// Health probes, by region and result (`ok`, `fail`).
    pub health_checks: Family<Labels, Counter>,
    /// Failed health probes, by region and reason (`connect`, `timeout`, `tls_certificate`, ...).
    pub health_check_failures: Family<Labels, Counter>,
    /// 1 while every routable region is down and answers are least-bad failovers.
    pub all_regions_down: Gauge,
    /// Answers given while every routable region was down.
    pub all_down_answers: Counter,
    /// HTTP API requests, by route and status.
    pub http_requests: Family<Labels, Counter>,
    /// `http_requests` series of the hot routes, created on first use: making a label set costs
    /// allocations, a hashed lookup and a lock, more than the rest of a cached answer.
    http_hot: [OnceLock<Counter>; HOT_HTTP.len()],
    /// RTT measurements recorded / refused (bad input or a full table).
    pub rtt_reports: Family<Labels, Counter>,
    /// Client networks in the RTT table.
    pub rtt_networks: Gauge,
    /// GeoIP reloads, by result (`ok`, `rejected`).
    pub geoip_reloads: Family<Labels, Counter>,
    /// Routing control changes applied here, by action.
    pub control_changes: Family<Labels, Counter>,
    /// The control version this instance routes with.
    pub control_version: Gauge,
    /// 1 while the control store cannot be read (routing continues on the last controls seen).
    pub controls_stale: Gauge,
    /// Regions drained or disabled by a failover drill.
    pub drill_in_progress: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under `meridian_router_`, plus
    /// `meridian_drill_in_progress`.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            dns_queries: Family::default(),
            dns_dropped: Counter::default(),
            dns_limited: Family::default(),
            answers: Family::default(),
            // 1 µs .. ~65 ms
            decision_seconds: Histogram::new(exponential_buckets(0.000_001, 2.0, 17)),
            region_healthy: Family::default(),
            region_control: Family::default(),
            region_load_permille: Family::default(),
            health_checks: Family::default(),
            health_check_failures: Family::default(),
            all_regions_down: Gauge::default(),
            all_down_answers: Counter::default(),
            http_requests: Family::default(),
            http_hot: Default::default(),
            rtt_reports: Family::default(),
            rtt_networks: Gauge::default(),
            geoip_reloads: Family::default(),
            control_changes: Family::default(),
            control_version: Gauge::default(),
            controls_stale: Gauge::default(),
            drill_in_progress: Gauge::default(),
        };
        m.registry.register(
            "meridian_drill_in_progress",
            "Regions drained or disabled by a failover drill",
            m.drill_in_progress.clone(),
        );
        let r = m.registry.sub_registry_with_prefix("meridian_router");
        r.register(
            "dns_queries",
            "DNS queries answered, by qtype and rcode",
            m.dns_queries.clone(),
        );
        r.register(
            "dns_dropped",
            "DNS packets dropped unanswered",
            m.dns_dropped.clone(),
        );
        r.register(
            "dns_limited",
            "DNS requests over a per-network limit, by action",
            m.dns_limited.clone(),
        );
        r.register(
            "answers",
            "Routing answers by region and reason",
            m.answers.clone(),
        );
        r.register(
            "decision_seconds",
            "Time to decide one route",
            m.decision_seconds.clone(),
        );
        r.register(
            "region_healthy",
            "1 when the region passes health checks",
            m.region_healthy.clone(),
        );
        r.register(
            "region_control",
            "1 for the region's routing control state",
            m.region_control.clone(),
        );
        r.register(
            "region_load_permille",
            "Reported region load, per mille of capacity",
            m.region_load_permille.clone(),
        );
        r.register(
            "health_checks",
            "Health probes by region and result",
            m.health_checks.clone(),
        );
        r.register(
            "health_check_failures",
            "Failed health probes by region and reason",
            m.health_check_failures.clone(),
        );
        r.register(
            "all_regions_down",
            "1 while every routable region is down",
            m.all_regions_down.clone(),
        );
        r.register(
            "all_down_answers",
            "Least-bad answers given while every region was down",
            m.all_down_answers.clone(),
        );
        r.register(
            "http_requests",
            "HTTP API requests by route and status",
            m.http_requests.clone(),
        );
        r.register(
            "rtt_reports",
            "RTT measurements by result",
            m.rtt_reports.clone(),
        );
        r.register(
            "rtt_networks",
            "Client networks in the RTT table",
            m.rtt_networks.clone(),
        );
        r.register(
            "geoip_reloads",
            "GeoIP database reloads by result",
            m.geoip_reloads.clone(),
        );
        r.register(
            "control_changes",
            "Routing control changes applied by this instance",
            m.control_changes.clone(),
        );
        r.register(
            "control_version",
            "Routing control version in use",
            m.control_version.clone(),
        );
        r.register(
            "controls_stale",
            "1 while the shared control store cannot be read",
            m.controls_stale.clone(),
        );
        m
    }

    /// One label set.
    pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|&(k, v)| (k, v.to_owned())).collect()
    }

    /// Counts one HTTP request in `http_requests`.
    pub fn http_request(&self, route: &'static str, status: u16) {
        let make = || {
            let code = status.to_string();
            self.http_requests
                .get_or_create(&Self::labels(&[("route", route), ("status", &code)]))
                .clone()
        };
        match HOT_HTTP.iter().position(|&hot| hot == (route, status)) {
            Some(at) => self.http_hot[at].get_or_init(make).inc(),
            None => make().inc(),
        };
    }

    /// Records one decision's latency.
    pub fn decided(&self, took: Duration) {
        self.decision_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
