//! `[webhooks]` configuration: endpoints with their event filter, secret, batching, retry
//! schedule and backlog bound. Off (no endpoints) by default.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::event::EventKind;

/// The `[webhooks]` table of a node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The endpoints; none (the default) turns webhooks off: no stream writes at all.
    pub endpoints: Vec<EndpointConfig>,
    /// Partition streams of the region's outbox (events of one room or user always go to
    /// the same partition, so they stay in order). Must be the same on every node.
    pub partitions: u16,
    /// A node owns a partition's delivery for this long unless it renews.
    pub lease_ttl_ms: u64,
    /// Hard cap of each partition stream (`XADD MAXLEN ~`), above every endpoint's backlog.
    pub stream_max_len: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            partitions: 8,
            lease_ttl_ms: 10_000,
            stream_max_len: 1_000_000,
        }
    }
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Stable name (`[A-Za-z0-9_-]`, ≤ 64): the consumer group of its cursor.
    pub name: String,
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of the signatures.
    pub secret: String,
    /// The event kinds it receives.
    pub events: Vec<EventKind>,
    /// A batch holds at most this many events…
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// …and waits at most this long for more after its first event.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// Undelivered events kept for it; beyond, the oldest are dropped and reported.
    #[serde(default = "default_backlog_limit")]
    pub backlog_limit: u64,
    /// One request's timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The retry schedule of a failing batch.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Exponential backoff of a failing batch: `base_ms · 2^attempt`, capped at `max_ms`, for
/// `give_up_after_s` in total (then the batch is dropped and reported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay.
    pub base_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Total time a batch is retried.
    pub give_up_after_s: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            max_ms: 300_000,
            give_up_after_s: 3 * 3600,
        }
    }
}

fn default_batch_max_events() -> usize {
    100
}
fn default_batch_max_ms() -> u64 {
    200
}
fn default_backlog_limit() -> u64 {
    100_000
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// A `[webhooks]` setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhooks: {0}")]
pub struct WebhooksConfigError(pub String);

impl WebhooksConfig {
    /// True when at least one endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Checks every setting; the error is one line naming the endpoint and field.
    pub fn validate(&self) -> Result<(), WebhooksConfigError> {
        let bad = |s: String| Err(WebhooksConfigError(s));
        if !(1..=1024).contains(&self.partitions) {
            return bad(format!(
                "partitions must be 1..=1024, not {}",
                self.partitions
            ));
        }
        if self.lease_ttl_ms < 300 {
            return bad("lease_ttl_ms must be at least 300".into());
        }
        let mut names = HashSet::new();
        for e in &self.endpoints {
            let n = &e.name;
            let name_ok = !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return bad(format!("endpoint name {n:?} must be 1-64 of [A-Za-z0-9_-]"));
            }
            if !names.insert(n.as_str()) {
                return bad(format!("endpoint name {n:?} is used twice"));
            }
            let host = e
                .url
                .strip_prefix("http://")
                .or_else(|| e.url.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return bad(format!(
                    "endpoint {n}: url {:?} must be http(s)://host[:port]/path",
                    e.url
                ));
            }
            if e.secret.len() < 16 {
                return bad(format!("endpoint {n}: secret must be at least 16 bytes"));
            }
            if e.events.is_empty() {
                return bad(format!("endpoint {n}: events must name at least one kind"));
            }
            if !(1..=1000).contains(&e.batch_max_events) {
                return bad(format!("endpoint {n}: batch_max_events must be 1..=1000"));
            }
            if e.batch_max_ms > 60_000 {
                return bad(format!("endpoint {n}: batch_max_ms must be at most 60000"));
            }
            if e.backlog_limit == 0 || e.backlog_limit > self.stream_max_len {
                return bad(format!(
                    "endpoint {n}: backlog_limit must be 1..=stream_max_len ({})",
                    self.stream_max_len
                ));
            }
            if e.timeout_ms == 0 {
                return bad(format!("endpoint {n}: timeout_ms must be positive"));
            }
            let r = &e.retry;
            if r.base_ms == 0 || r.max_ms < r.base_ms || r.give_up_after_s == 0 {
                return bad(format!(
                    "endpoint {n}: retry needs 0 < base_ms <= max_ms and give_up_after_s > 0"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebhooksConfig, String> {
        let c: WebhooksConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    const GOOD: &str = r#"
[[endpoints]]
name = "crm"
url = "http://127.0.0.1:9/hook"
secret = "0123456789abcdef"
events = ["room.occupied", "member.left"]
"#;

    #[test]
    fn off_by_default() {
        let c = parse("").unwrap();
        assert!(!c.enabled());
        assert_eq!(c, WebhooksConfig::default());
    }

    #[test]
    fn parses_an_endpoint_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert!(c.enabled());
        let e = &c.endpoints[0];
        assert_eq!(
            e.events,
            vec![EventKind::RoomOccupied, EventKind::MemberLeft]
        );
        assert_eq!(e.batch_max_events, 100);
        assert!(e.retry.give_up_after_s >= 3600);
    }

    #[test]
    fn rejects_unknown_keys_and_kinds() {
        assert!(parse(&format!("{GOOD}colour = 1\n")).is_err());
        assert!(parse("bogus = 1").is_err());
        let bad_kind = GOOD.replace("member.left", "member.sneezed");
        assert!(parse(&bad_kind).is_err());
    }

    #[test]
    fn rejects_bad_values_with_one_line() {
        for (from, to) in [
            ("http://127.0.0.1:9/hook", "ftp://x/"),
            ("http://127.0.0.1:9/hook", "http:///x"),
            ("0123456789abcdef", "short"),
            ("[\"room.occupied\", \"member.left\"]", "[]"),
            ("name = \"crm\"", "name = \"c r m\""),
        ] {
            let err = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(err.starts_with("webhooks: "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let twice = format!("{GOOD}{}", GOOD);
        assert!(parse(&twice).unwrap_err().contains("used twice"));
        let zero = format!("partitions = 0\n{GOOD}");
        assert!(parse(&zero).unwrap_err().contains("partitions"));
        let retry = format!("{GOOD}retry = {{ base_ms = 10, max_ms = 5 }}\n");
        assert!(parse(&retry).unwrap_err().contains("retry"));
        let batch = format!("{GOOD}batch_max_events = 0\n");
        assert!(parse(&batch).unwrap_err().contains("batch_max_events"));
    }
}
