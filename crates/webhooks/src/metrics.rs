//! Delivery metrics, registered in the node's registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Webhook delivery counters, labelled by endpoint.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    /// Batches by `result`: `ok`, `failed` (one failed attempt), `retried`, `gave_up`.
    pub batches: Family<Labels, Counter>,
    /// Events delivered.
    pub events: Family<Labels, Counter>,
    /// Events dropped (backlog full, or a batch that gave up).
    pub dropped: Family<Labels, Counter>,
    /// Undelivered events in the endpoint's cursor lag, per partition owned here (summed).
    pub backlog: Family<Labels, Gauge>,
}

impl WebhookMetrics {
    /// Registers the metrics as `webhook_*` under the registry's prefix (the node's:
    /// `meridian_node_webhook_*`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_batches",
            "Webhook batch attempts by endpoint and result",
            self.batches.clone(),
        );
        registry.register(
            "webhook_events",
            "Webhook events delivered by endpoint",
            self.events.clone(),
        );
        registry.register(
            "webhook_dropped",
            "Webhook events dropped by endpoint (backlog full or retries exhausted)",
            self.dropped.clone(),
        );
        registry.register(
            "webhook_backlog",
            "Webhook events waiting for an endpoint in the last partition read",
            self.backlog.clone(),
        );
    }

    pub(crate) fn batch(&self, endpoint: &str, result: &'static str) {
        self.batches
            .get_or_create(&vec![
                ("endpoint", endpoint.to_owned()),
                ("result", result.into()),
            ])
            .inc();
    }

    pub(crate) fn dropped(&self, endpoint: &str, n: u64) {
        self.dropped
            .get_or_create_owned(&vec![("endpoint", endpoint.to_owned())])
            .inc_by(n);
    }

    pub(crate) fn delivered(&self, endpoint: &str, n: u64) {
        self.events
            .get_or_create_owned(&vec![("endpoint", endpoint.to_owned())])
            .inc_by(n);
    }

    pub(crate) fn set_backlog(&self, endpoint: &str, n: i64) {
        self.backlog
            .get_or_create_owned(&vec![("endpoint", endpoint.to_owned())])
            .set(n);
    }
}
