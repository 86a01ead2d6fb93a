//! Node configuration: a TOML file plus `MERIDIAN_*` environment variables (figment), strictly
//! typed (`deny_unknown_fields`) and validated before any port is bound.
//!
//! Nested keys use `__` in the environment: `MERIDIAN_STORE__URL`, `MERIDIAN_LIMITS__SEND_QUEUE`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Errors in the configuration. Each says which key is wrong and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or the environment could not be parsed into the schema.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// A value is out of range or inconsistent with another.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Where the regional state lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// The region's Redis (production).
    Redis {
        /// `redis://host:port/db`.
        url: String,
    },
    /// In-process state: a single-node dev region. Nothing is shared or persisted.
    Memory,
}

/// Per-connection and per-room limits. Each violation has its own error code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted text frame (bytes); larger gets `frame_too_large`. Frames over 4x this
    /// close the connection (status 1009).
    pub max_frame_bytes: usize,
    /// Rooms one connection may be in (`too_many_rooms`).
    pub max_rooms_per_connection: usize,
    /// Members a room may have (`room_full`); 0 is unlimited.
    pub max_members_per_room: u32,
    /// Sustained requests per second per connection (token bucket refill; `rate_limited`).
    pub requests_per_second: f64,
    /// Token bucket size: the burst a connection may send at once.
    pub request_burst: f64,
    /// Frames queued for one connection; a client that lets it fill is sent `reconnect` and
    /// dropped (slow consumer).
    pub send_queue: usize,
    /// Largest `members` page.
    pub members_page_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_rooms_per_connection: 64,
            max_members_per_room: 10_000,
            requests_per_second: 50.0,
            request_burst: 100.0,
            send_queue: 1024,
            members_page_max: 100,
        }
    }
}

/// Timers, all in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// A connection that has not sent `hello` by then is closed.
    pub hello_timeout_ms: u64,
    /// WebSocket ping period.
    pub ping_interval_ms: u64,
    /// A connection silent (no frame, no pong) this long is dead and closed.
    pub ping_timeout_ms: u64,
    /// Node lease length in Redis.
    pub lease_ttl_ms: u64,
    /// Lease renewal period (well under the TTL).
    pub lease_renew_ms: u64,
    /// How often this node looks for dead nodes to reap.
    pub reap_interval_ms: u64,
    /// On SIGTERM: the process exits within this.
    pub drain_deadline_ms: u64,
    /// `reconnect` hints sent on drain spread clients over `[min, max]` ms.
    pub drain_reconnect_min_ms: u64,
    /// See `drain_reconnect_min_ms`.
    pub drain_reconnect_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            hello_timeout_ms: 5_000,
            ping_interval_ms: 10_000,
            ping_timeout_ms: 25_000,
            lease_ttl_ms: 10_000,
            lease_renew_ms: 3_000,
            reap_interval_ms: 2_000,
            drain_deadline_ms: 10_000,
            drain_reconnect_min_ms: 100,
            drain_reconnect_max_ms: 2_000,
        }
    }
}

/// Room history and idempotency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    /// Events kept per room.
    pub len: u32,
    /// History (and the room's sequence) expires this long after the last event.
    pub ttl_secs: u64,
    /// Most events one resume replays; further behind gets `history_lost`.
    pub max_replay: u32,
    /// Publish idempotency keys are remembered this long.
    pub idempotency_window_secs: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            len: 1000,
            ttl_secs: 24 * 3600,
            max_replay: 1000,
            idempotency_window_secs: 300,
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The region this node serves (a file name in `regions/`).
    pub region: String,
    /// Address for WebSocket and HTTP (`/v1/ws`, `/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Shared HS256 secret for connection tokens (at least 16 bytes).
    pub token_secret: String,
    /// Regional state.
    pub store: StoreConfig,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timers.
    #[serde(default)]
    pub timing: Timing,
    /// Room history.
    #[serde(default)]
    pub history: History,
}

impl NodeConfig {
    /// Loads `file` (when given), then `MERIDIAN_*` variables on top, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        Self::from_figment(figment.merge(Env::prefixed("MERIDIAN_").split("__")))
    }

    /// Extracts and validates from a prepared figment.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// A config for tests and the dev region: memory store, given secret, port 0.
    pub fn dev(region: &str, token_secret: &str) -> Self {
        Self {
            region: region.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_secret: token_secret.into(),
            store: StoreConfig::Memory,
            limits: Limits::default(),
            timing: Timing::default(),
            history: History::default(),
        }
    }

    /// Serializes back into a figment, e.g. to layer overrides in tests.
    pub fn figment(&self) -> Figment {
        Figment::from(Serialized::defaults(self))
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::Invalid(m));
        if meridian_protocol::RoomId::new(self.region.as_str()).is_err()
            || self.region.contains('/')
        {
            return fail(format!(
                "region {:?}: use letters, digits and '-'",
                self.region
            ));
        }
        if self.token_secret.len() < 16 {
            return fail("token_secret must be at least 16 bytes".into());
        }
        if let StoreConfig::Redis { url } = &self.store {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return fail(format!(
                    "store.url {url:?} must start with redis:// or rediss://"
                ));
            }
        }
        let l = &self.limits;
        if !(256..=16 * 1024 * 1024).contains(&l.max_frame_bytes) {
            return fail("limits.max_frame_bytes must be between 256 and 16 MiB".into());
        }
        if l.max_rooms_per_connection == 0 {
            return fail("limits.max_rooms_per_connection must be at least 1".into());
        }
        if !(l.requests_per_second > 0.0 && l.request_burst >= 1.0) {
            return fail(
                "limits.requests_per_second must be > 0 and limits.request_burst >= 1".into(),
            );
        }
        if l.send_queue < 8 {
            return fail("limits.send_queue must be at least 8".into());
        }
        if l.members_page_max == 0 {
            return fail("limits.members_page_max must be at least 1".into());
        }
        let t = &self.timing;
        if t.lease_renew_ms == 0 || t.lease_renew_ms * 2 > t.lease_ttl_ms {
            return fail(
                "timing.lease_renew_ms must be > 0 and at most half of timing.lease_ttl_ms".into(),
            );
        }
        if t.ping_interval_ms == 0 || t.ping_timeout_ms <= t.ping_interval_ms {
            return fail(
                "timing.ping_timeout_ms must be greater than timing.ping_interval_ms".into(),
            );
        }
        if t.hello_timeout_ms == 0 || t.reap_interval_ms == 0 {
            return fail("timing.hello_timeout_ms and timing.reap_interval_ms must be > 0".into());
        }
        if t.drain_reconnect_min_ms > t.drain_reconnect_max_ms
            || t.drain_reconnect_max_ms >= t.drain_deadline_ms
        {
            return fail(
                "timing: need drain_reconnect_min_ms <= drain_reconnect_max_ms < drain_deadline_ms"
                    .into(),
            );
        }
        if self.history.len == 0 || self.history.max_replay == 0 {
            return fail("history.len and history.max_replay must be at least 1".into());
        }
        Ok(())
    }

    /// The store limits these settings imply.
    pub fn store_limits(&self) -> region_state::StoreLimits {
        region_state::StoreLimits {
            lease_ttl: Duration::from_millis(self.timing.lease_ttl_ms),
            history_len: self.history.len,
            history_ttl: Duration::from_secs(self.history.ttl_secs),
            max_replay: self.history.max_replay,
            idempotency_window: Duration::from_secs(self.history.idempotency_window_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Toml;

    fn parse(toml: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_figment(Figment::from(Toml::string(toml)))
    }

    const MINIMAL: &str = r#"
        region = "us-east"
        listen = "127.0.0.1:7001"
        token_secret = "0123456789abcdef"
        store = { kind = "redis", url = "redis://127.0.0.1:6379/" }
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.timing.lease_ttl_ms, 10_000);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse(&format!("{MINIMAL}\nbogus = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[limits]\nmax_frame = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_frame"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let short = MINIMAL.replace("0123456789abcdef", "short");
        assert!(parse(&short)
            .unwrap_err()
            .to_string()
            .contains("token_secret"));
        let bad_url = MINIMAL.replace("redis://127.0.0.1:6379/", "http://x");
        assert!(parse(&bad_url)
            .unwrap_err()
            .to_string()
            .contains("store.url"));
        let lease = format!("{MINIMAL}\n[timing]\nlease_ttl_ms = 1000\nlease_renew_ms = 900");
        assert!(parse(&lease)
            .unwrap_err()
            .to_string()
            .contains("lease_renew_ms"));
        let missing = "region = \"x\"";
        assert!(parse(missing).is_err());
    }

    #[test]
    fn dev_config_is_valid() {
        NodeConfig::dev("dev", "0123456789abcdef")
            .validate()
            .unwrap();
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // examples/ also holds other programs' configs (geo-router.toml, ...).
            if name.starts_with("node") && name.ends_with(".toml") {
                NodeConfig::from_figment(Figment::from(Toml::file_exact(&path)))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn env_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("n.toml", "region = \"a\"\nlisten = \"127.0.0.1:1\"\ntoken_secret = \"0123456789abcdef\"\nstore = { kind = \"memory\" }")?;
            jail.set_env("MERIDIAN_REGION", "b");
            jail.set_env("MERIDIAN_LIMITS__SEND_QUEUE", "64");
            let c = NodeConfig::load(Some(Path::new("n.toml"))).map_err(|e| e.to_string())?;
            assert_eq!((c.region.as_str(), c.limits.send_queue), ("b", 64));
            jail.set_env("MERIDIAN_LIMITS__BOGUS", "1");
            assert!(NodeConfig::load(Some(Path::new("n.toml"))).is_err());
            Ok(())
        });
    }
}
