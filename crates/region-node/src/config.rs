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
    /// One Redis (standalone, or an address that always points at the primary).
    Redis {
        /// `redis://host:port/db` (`rediss://` for TLS).
        url: String,
        /// Durable mode: acknowledge a publish only after replicas confirm it (`WAIT`).
        #[serde(default)]
        durable: bool,
        /// Replicas that must confirm a durable publish.
        #[serde(default = "default_durable_replicas")]
        durable_replicas: u32,
        /// How long a durable publish waits for them before failing with `unavailable`.
        #[serde(default = "default_durable_timeout_ms")]
        durable_timeout_ms: u64,
    },
    /// A Redis primary managed by Sentinel: discovered at start and again after every
    /// failover.
    Sentinel {
        /// Sentinel addresses, `redis://host:port` (`rediss://` for TLS to the sentinels,
        /// `redis://user:pass@host:port` when the sentinels require auth).
        sentinels: Vec<String>,
        /// The monitored master's name (`sentinel monitor <name> ...`).
        master_name: String,
        /// Database number.
        #[serde(default)]
        db: i64,
        /// ACL user on the data nodes.
        #[serde(default)]
        username: Option<String>,
        /// Password on the data nodes.
        #[serde(default)]
        password: Option<String>,
        /// TLS to the data nodes.
        #[serde(default)]
        tls: bool,
        /// See `redis.durable`.
        #[serde(default)]
        durable: bool,
        /// See `redis.durable_replicas`.
        #[serde(default = "default_durable_replicas")]
        durable_replicas: u32,
        /// See `redis.durable_timeout_ms`.
        #[serde(default = "default_durable_timeout_ms")]
        durable_timeout_ms: u64,
    },
    /// In-process state: a single-node dev region. Nothing is shared or persisted.
    Memory,
}

fn default_durable_replicas() -> u32 {
    1
}
fn default_durable_timeout_ms() -> u64 {
    500
}

impl StoreConfig {
    /// A standalone Redis at `url`, not durable.
    pub fn redis(url: impl Into<String>) -> Self {
        Self::Redis {
            url: url.into(),
            durable: false,
            durable_replicas: default_durable_replicas(),
            durable_timeout_ms: default_durable_timeout_ms(),
        }
    }

    /// The store's endpoint and durability, or `None` for the memory store.
    pub fn redis_endpoint(
        &self,
    ) -> Option<(
        region_state::RedisEndpoint,
        Option<region_state::Durability>,
    )> {
        let durability = |on: bool, replicas: u32, timeout_ms: u64| {
            on.then(|| region_state::Durability {
                replicas,
                timeout: Duration::from_millis(timeout_ms),
            })
        };
        match self {
            Self::Redis {
                url,
                durable,
                durable_replicas,
                durable_timeout_ms,
            } => Some((
                region_state::RedisEndpoint::url(url.as_str()),
                durability(*durable, *durable_replicas, *durable_timeout_ms),
            )),
            Self::Sentinel {
                sentinels,
                master_name,
                db,
                username,
                password,
                tls,
                durable,
                durable_replicas,
                durable_timeout_ms,
            } => Some((
                region_state::RedisEndpoint::Sentinel(region_state::SentinelEndpoint {
                    sentinels: sentinels.clone(),
                    master_name: master_name.clone(),
                    db: *db,
                    username: username.clone(),
                    password: password.clone(),
                    tls: *tls,
                }),
                durability(*durable, *durable_replicas, *durable_timeout_ms),
            )),
            Self::Memory => None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let check_durable = |on: bool, replicas: u32, timeout_ms: u64, kind: &str| {
            if on && !(1..=16).contains(&replicas) {
                return Err(format!(
                    "store.durable_replicas must be between 1 and 16 ({kind})"
                ));
            }
            if on && !(1..=10_000).contains(&timeout_ms) {
                return Err(format!(
                    "store.durable_timeout_ms must be between 1 and 10000 ({kind})"
                ));
            }
            Ok(())
        };
        let scheme_ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        match self {
            Self::Redis {
                url,
                durable,
                durable_replicas,
                durable_timeout_ms,
            } => {
                if !scheme_ok(url) {
                    return Err(format!(
                        "store.url {url:?} must start with redis:// or rediss://"
                    ));
                }
                check_durable(*durable, *durable_replicas, *durable_timeout_ms, "redis")
            }
            Self::Sentinel {
                sentinels,
                master_name,
                durable: on,
                durable_replicas,
                durable_timeout_ms,
                ..
            } => {
                if sentinels.is_empty() {
                    return Err("store.sentinels must list at least one sentinel".into());
                }
                if let Some(bad) = sentinels.iter().find(|u| !scheme_ok(u)) {
                    return Err(format!(
                        "store.sentinels entry {bad:?} must start with redis:// or rediss://"
                    ));
                }
                if master_name.is_empty() || master_name.contains(char::is_whitespace) {
                    return Err(format!(
                        "store.master_name {master_name:?} must be a non-empty name without spaces"
                    ));
                }
                check_durable(*on, *durable_replicas, *durable_timeout_ms, "sentinel")
            }
            Self::Memory => Ok(()),
        }
    }
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
    /// New WebSocket connections this node admits per second (token bucket refill). Attempts
    /// beyond it — a reconnect storm — are sent `reconnect` (`overloaded`) with a retry delay
    /// and closed (1013), so a storm cannot take a healthy node down.
    pub accept_per_second: f64,
    /// Connections admitted at once before the rate applies.
    pub accept_burst: f64,
    /// Open connections this node holds at most; more are shed like excess accepts. 0 is
    /// unlimited.
    pub max_connections: usize,
    /// Connections between upgrade and the end of `hello` (each costs Redis round trips) held
    /// at once; more are shed like excess accepts. 0 (the default) is no cap: see
    /// `admission` for why the rate alone is the better default.
    pub max_handshakes: usize,
    /// Publishes one user may make per second across all its connections on every node of
    /// the region (a fixed one-second window counted in the regional store; more get
    /// `rate_limited`). Unset: 4 × `requests_per_second`. 0 turns the budget off. It is
    /// charged inside the publish script, so it costs no extra store round trip.
    pub user_publishes_per_second: Option<u64>,
    /// Direct messages one user may send per second, all connections and nodes of the region
    /// together (`rate_limited` beyond). 0 is unlimited.
    pub dm_sent_per_second: u64,
    /// Bytes of direct-message frames one user may send per second (region-wide; 0 is
    /// unlimited, otherwise at least `max_frame_bytes`).
    pub dm_sent_bytes_per_second: u64,
    /// Direct messages one user may be sent per second by everyone together (region-wide;
    /// the sender gets `rate_limited`, the recipient is never dropped). 0 is unlimited.
    pub dm_received_per_second: u64,
    /// Bytes of direct-message frames one user may be sent per second (region-wide; 0 is
    /// unlimited, otherwise at least `max_frame_bytes`).
    pub dm_received_bytes_per_second: u64,
    /// Connections that have not finished `hello` yet (from the TCP accept on: silent sockets,
    /// unfinished upgrades, upgraded but unauthenticated) held at once. More are closed at
    /// accept. While they are over three quarters of this, the upgrade and hello deadlines shrink to
    /// `timing.pressure_timeout_ms`. 0 is no cap.
    pub max_unauthenticated: usize,
    /// The same, per source address (an IPv4 address or an IPv6 /64): one source cannot take
    /// the unauthenticated budget from everyone else. 0 is no cap.
    pub max_unauthenticated_per_source: usize,
    /// New WebSocket connections one source may open per second before the node-wide rate
    /// (`accept_per_second`) is charged; beyond it the source's attempts are shed
    /// (`overloaded`) without spending the node-wide budget. 0 turns the per-source rate off.
    pub accept_per_source_per_second: f64,
    /// The per-source burst.
    pub accept_per_source_burst: f64,
    /// Balancers whose connections carry many users (HAProxy in `mode http`, a cloud proxy):
    /// IPs or CIDR blocks (`10.0.0.0/8`). For their connections the source is the last
    /// address of `X-Forwarded-For` (when present) and the per-source caps are applied at the
    /// upgrade instead of at the TCP accept; without the header the source is unknown and only
    /// the node-wide limits apply. Default: loopback (`127.0.0.0/8`, `::1`), where a local
    /// balancer or sidecar sits, never users. Empty: every peer is a client.
    pub trusted_proxies: Vec<String>,
}

impl Limits {
    /// The per-user publish budget per second; `None` when it is off.
    pub fn user_publish_budget(&self) -> Option<u64> {
        let n = self
            .user_publishes_per_second
            .unwrap_or((self.requests_per_second * 4.0).ceil().min(u64::MAX as f64) as u64);
        (n > 0).then_some(n)
    }
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
            accept_per_second: 1_000.0,
            accept_burst: 500.0,
            max_connections: 20_000,
            max_handshakes: 0,
            user_publishes_per_second: None,
            dm_sent_per_second: 20,
            dm_sent_bytes_per_second: 128 * 1024,
            dm_received_per_second: 50,
            dm_received_bytes_per_second: 256 * 1024,
            max_unauthenticated: 4_096,
            max_unauthenticated_per_source: 64,
            accept_per_source_per_second: 100.0,
            accept_per_source_burst: 200.0,
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1".into()],
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
    /// Shortest `after_ms` of a shed connection's `reconnect` (`overloaded`).
    pub shed_reconnect_min_ms: u64,
    /// Longest `after_ms` of a shed connection's `reconnect`: the node spreads shed clients
    /// over the time it needs to admit the current backlog at `limits.accept_per_second`,
    /// capped here.
    pub shed_reconnect_max_ms: u64,
    /// A TCP connection must have sent a complete HTTP request (the WebSocket upgrade) within
    /// this, or it is closed: a silent socket cannot hold a node's file descriptor forever.
    pub upgrade_timeout_ms: u64,
    /// Under pressure (unauthenticated connections over three quarters of
    /// `limits.max_unauthenticated`), the upgrade and `hello` deadlines of new connections
    /// are this instead.
    pub pressure_timeout_ms: u64,
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
            shed_reconnect_min_ms: 200,
            shed_reconnect_max_ms: 10_000,
            upgrade_timeout_ms: 10_000,
            pressure_timeout_ms: 1_000,
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
    /// Address for clients: `/v1/ws` (and `/healthz`, `/readyz`, `/metrics` too when there is
    /// no `ops_listen`).
    pub listen: SocketAddr,
    /// Address for operations: `/healthz`, `/readyz`, `/metrics`. Set it in production: a
    /// client port saturated by sockets cannot then hide a healthy node from its balancer, and
    /// `/metrics` and `/readyz` are not reachable through the public balancer. With it set, the
    /// client port serves `/v1/ws` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<SocketAddr>,
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
    /// The server API for application backends (`docs/server-api.md`): off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
    /// Webhook endpoints (`docs/webhooks.md`); none by default.
    #[serde(default)]
    pub webhooks: meridian_webhooks::WebhooksConfig,
}

/// The server API: HTTP+JSON on its own listener, for application backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Its own address, never the client port.
    pub listen: SocketAddr,
    /// API keys (`Authorization: Bearer <secret>`).
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    /// A TOML file of more keys (`[[keys]]` tables like `api.keys`), re-read when its
    /// modification time changes (checked every second): rotating a key needs no restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<std::path::PathBuf>,
    /// Largest request body (bytes); larger gets 413 `too_large`.
    #[serde(default = "default_api_max_body")]
    pub max_body_bytes: usize,
}

fn default_api_max_body() -> usize {
    64 * 1024
}

/// One API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (never the secret).
    pub name: String,
    /// The bearer secret (at least 16 bytes).
    pub secret: String,
    /// What the key may do: `publish` (publish, broadcast, send), `read` (members, presence,
    /// state_get, history, info), `state` (state_set, state_delete), `admin` (everything).
    pub scopes: Vec<String>,
    /// The user id the key's publishes, messages and state writes are shown as.
    #[serde(default = "default_api_from")]
    pub from: String,
}

fn default_api_from() -> String {
    "server".into()
}

/// The scopes an API key may hold.
pub const API_SCOPES: [&str; 4] = ["publish", "read", "state", "admin"];

impl ApiKey {
    /// Checks one key; `Err` is the one-line reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("api.keys: every key needs a name".into());
        }
        if self.secret.len() < 16 {
            return Err(format!(
                "api.keys {:?}: secret must be at least 16 bytes",
                self.name
            ));
        }
        if let Some(bad) = self
            .scopes
            .iter()
            .find(|s| !API_SCOPES.contains(&s.as_str()))
        {
            return Err(format!(
                "api.keys {:?}: unknown scope {bad:?} (known: publish, read, state, admin)",
                self.name
            ));
        }
        if meridian_protocol::UserId::new(self.from.as_str()).is_err() {
            return Err(format!(
                "api.keys {:?}: from {:?} is not a valid user id",
                self.name, self.from
            ));
        }
        Ok(())
    }
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
            ops_listen: None,
            token_secret: token_secret.into(),
            store: StoreConfig::Memory,
            limits: Limits::default(),
            timing: Timing::default(),
            history: History::default(),
            api: None,
            webhooks: Default::default(),
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
        if let Err(m) = self.store.validate() {
            return fail(m);
        }
        if let Err(e) = self.webhooks.validate() {
            return fail(e.to_string());
        }
        if self.webhooks.enabled() && !matches!(self.store, StoreConfig::Redis { .. }) {
            return fail("webhooks: endpoints need store.kind = \"redis\"".into());
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
        if !(l.accept_per_second > 0.0 && l.accept_burst >= 1.0) {
            return fail(
                "limits.accept_per_second must be > 0 and limits.accept_burst >= 1".into(),
            );
        }
        let frame = l.max_frame_bytes as u64;
        let too_small = |b: u64| b != 0 && b < frame;
        if too_small(l.dm_sent_bytes_per_second) || too_small(l.dm_received_bytes_per_second) {
            return fail(
                "limits.dm_sent_bytes_per_second and limits.dm_received_bytes_per_second must be 0 (off) or at least limits.max_frame_bytes"
                    .into(),
            );
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
        if t.shed_reconnect_min_ms == 0 || t.shed_reconnect_min_ms > t.shed_reconnect_max_ms {
            return fail("timing: need 0 < shed_reconnect_min_ms <= shed_reconnect_max_ms".into());
        }
        if t.upgrade_timeout_ms == 0 || t.pressure_timeout_ms == 0 {
            return fail(
                "timing.upgrade_timeout_ms and timing.pressure_timeout_ms must be > 0".into(),
            );
        }
        if l.accept_per_source_per_second < 0.0
            || (l.accept_per_source_per_second > 0.0 && l.accept_per_source_burst < 1.0)
        {
            return fail(
                "limits.accept_per_source_per_second must be >= 0 and limits.accept_per_source_burst >= 1".into(),
            );
        }
        for p in &l.trusted_proxies {
            if crate::admission::IpBlock::parse(p).is_none() {
                return fail(format!(
                    "limits.trusted_proxies: {p:?} is not an IP address or CIDR block"
                ));
            }
        }
        if self
            .ops_listen
            .is_some_and(|o| o == self.listen && o.port() != 0)
        {
            return fail("ops_listen must differ from listen".into());
        }
        if self.history.len == 0 || self.history.max_replay == 0 {
            return fail("history.len and history.max_replay must be at least 1".into());
        }
        if let Some(api) = &self.api {
            let clash = |a: SocketAddr| a == api.listen && a.port() != 0;
            if clash(self.listen) || self.ops_listen.is_some_and(clash) {
                return fail("api.listen must differ from listen and ops_listen".into());
            }
            if !(256..=16 * 1024 * 1024).contains(&api.max_body_bytes) {
                return fail("api.max_body_bytes must be between 256 and 16 MiB".into());
            }
            for key in &api.keys {
                key.validate().map_err(ConfigError::Invalid)?;
            }
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
        let dm = format!("{MINIMAL}\n[limits]\nmax_frame_bytes = 1048576");
        assert!(parse(&dm)
            .unwrap_err()
            .to_string()
            .contains("dm_sent_bytes_per_second"));
        let lease = format!("{MINIMAL}\n[timing]\nlease_ttl_ms = 1000\nlease_renew_ms = 900");
        assert!(parse(&lease)
            .unwrap_err()
            .to_string()
            .contains("lease_renew_ms"));
        let missing = "region = \"x\"";
        assert!(parse(missing).is_err());
    }

    const SENTINEL: &str = r#"
        region = "us-east"
        listen = "127.0.0.1:7001"
        token_secret = "0123456789abcdef"
        [store]
        kind = "sentinel"
        sentinels = ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]
        master_name = "meridian"
    "#;

    #[test]
    fn sentinel_store_parses_with_defaults() {
        let c = parse(SENTINEL).unwrap();
        let (endpoint, durable) = c.store.redis_endpoint().unwrap();
        let region_state::RedisEndpoint::Sentinel(s) = endpoint else {
            panic!("sentinel endpoint expected");
        };
        assert_eq!(s.sentinels.len(), 2);
        assert_eq!(
            (s.master_name.as_str(), s.db, s.tls),
            ("meridian", 0, false)
        );
        assert_eq!(durable, None);
        let c = parse(&format!(
            "{SENTINEL}\ndurable = true\ndurable_timeout_ms = 250\npassword = \"pw\""
        ))
        .unwrap();
        let (_, durable) = c.store.redis_endpoint().unwrap();
        assert_eq!(
            durable,
            Some(region_state::Durability {
                replicas: 1,
                timeout: Duration::from_millis(250)
            })
        );
    }

    #[test]
    fn bad_ha_settings_are_explained_in_one_line() {
        let cases = [
            (SENTINEL.replace(r#"["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]"#, "[]"), "store.sentinels"),
            (SENTINEL.replace("redis://127.0.0.1:26380", "tcp://x:1"), "store.sentinels"),
            (SENTINEL.replace(r#"master_name = "meridian""#, r#"master_name = """#), "store.master_name"),
            (format!("{SENTINEL}\ndurable = true\ndurable_timeout_ms = 0"), "store.durable_timeout_ms"),
            (format!("{SENTINEL}\ndurable = true\ndurable_replicas = 0"), "store.durable_replicas"),
            (format!("{SENTINEL}\nmaster = \"x\""), "master"),
            (MINIMAL.replace(r#"url = "redis://127.0.0.1:6379/" }"#, r#"url = "redis://127.0.0.1:6379/", durable = true, durable_timeout_ms = 99999 }"#), "store.durable_timeout_ms"),
            (format!("{MINIMAL}\n[limits]\naccept_per_second = 0.0"), "limits.accept_per_second"),
            (format!("{MINIMAL}\n[timing]\nshed_reconnect_min_ms = 900\nshed_reconnect_max_ms = 100"), "shed_reconnect_min_ms"),
            (format!("{MINIMAL}\n[limits]\ntrusted_proxies = [\"10.0.0.0/40\"]"), "limits.trusted_proxies"),
            (format!("{MINIMAL}\n[timing]\nupgrade_timeout_ms = 0"), "timing.upgrade_timeout_ms"),
            (format!("{MINIMAL}\nops_listen = \"127.0.0.1:7001\""), "ops_listen"),
            (format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:7001\""), "api.listen"),
            (format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:7002\"\n[[api.keys]]\nname = \"a\"\nsecret = \"short\"\nscopes = []"), "api.keys"),
            (format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:7002\"\n[[api.keys]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nscopes = [\"root\"]"), "unknown scope"),
            (format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:7002\"\nmax_body_bytes = 1"), "api.max_body_bytes"),
            (format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:7002\"\nbogus = 1"), "bogus"),
        ];
        for (toml, key) in cases {
            let e = parse(&toml).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.trim_end().contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn dev_config_is_valid() {
        NodeConfig::dev("dev", "0123456789abcdef")
            .validate()
            .unwrap();
    }

    const WEBHOOK: &str = r#"
        [[webhooks.endpoints]]
        name = "crm"
        url = "http://127.0.0.1:9000/hook"
        secret = "0123456789abcdef"
        events = ["member.joined", "member.left"]
        batch_max_events = 50
        retry = { base_ms = 100, max_ms = 1000, give_up_after_s = 60 }
    "#;

    #[test]
    fn webhooks_are_off_by_default_and_parse_when_set() {
        assert!(!parse(MINIMAL).unwrap().webhooks.enabled());
        let c = parse(&format!("{MINIMAL}{WEBHOOK}")).unwrap();
        assert_eq!(c.webhooks.endpoints[0].batch_max_events, 50);
        assert_eq!(c.webhooks.endpoints[0].retry.base_ms, 100);
    }

    #[test]
    fn bad_webhooks_are_refused_with_one_line() {
        let cases = [
            format!("{MINIMAL}{}", WEBHOOK.replace("http://", "gopher://")),
            format!("{MINIMAL}{}", WEBHOOK.replace("0123456789abcdef\"", "x\"")),
            format!("{MINIMAL}{WEBHOOK}        surprise = 1\n"),
            format!(
                "{}{WEBHOOK}",
                MINIMAL.replace(
                    r#"{ kind = "redis", url = "redis://127.0.0.1:6379/" }"#,
                    r#"{ kind = "memory" }"#
                )
            ),
        ];
        for text in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("webhooks") || err.contains("surprise"),
                "{err}"
            );
            assert!(!err.trim_end().contains('\n'), "{err}");
        }
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
            // examples/ also holds other binaries' configs (geo-router.toml).
            let is_node = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("node") && n.ends_with(".toml"));
            if is_node {
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
            jail.clear_env();
            // A Sentinel store entirely from the environment.
            jail.set_env("MERIDIAN_STORE__KIND", "sentinel");
            jail.set_env(
                "MERIDIAN_STORE__SENTINELS",
                "[redis://10.0.0.1:26379,redis://10.0.0.2:26379]",
            );
            jail.set_env("MERIDIAN_STORE__MASTER_NAME", "us-east");
            jail.set_env("MERIDIAN_STORE__DURABLE", "true");
            let c = NodeConfig::load(Some(Path::new("n.toml"))).map_err(|e| e.to_string())?;
            let Some((region_state::RedisEndpoint::Sentinel(s), Some(_))) =
                c.store.redis_endpoint()
            else {
                panic!("durable sentinel store from env: {:?}", c.store);
            };
            assert_eq!(s.sentinels.len(), 2);
            Ok(())
        });
    }
}
