//! Relay configuration: a TOML file plus `MERIDIAN_*` environment variables (figment),
//! strictly typed (`deny_unknown_fields`) and validated before any socket is bound.
//!
//! Nested keys use `__` in the environment: `MERIDIAN_TIMING__IDLE_TIMEOUT_MS=3000`,
//! `MERIDIAN_TLS__KEY=/etc/meridian/us-east.key.pem`. Every key, with its default, is in
//! `crates/interregion-relay/relay.example.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use meridian_catalogue::Region;
use serde::{Deserialize, Serialize};

use crate::certs::valid_region_name;
use crate::tls::TlsFiles;

/// Errors in the configuration. Each says which key is wrong and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or the environment could not be parsed into the schema.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// A value is out of range or inconsistent with another (or with the catalogue).
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Timers, all in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// QUIC keep-alive (PING) period on an otherwise quiet link.
    pub keep_alive_ms: u64,
    /// QUIC idle timeout: a link that received nothing for this long is dead. With
    /// keep-alives flowing this is the link-death detection bound (see `docs/relay.md`).
    pub idle_timeout_ms: u64,
    /// Limit for the QUIC handshake plus the `Hello` exchange.
    pub handshake_timeout_ms: u64,
    /// First reconnect delay after a link is lost or a dial fails.
    pub backoff_initial_ms: u64,
    /// Cap of the exponential reconnect delay (before jitter).
    pub backoff_max_ms: u64,
    /// How often the per-link RTT gauge is refreshed.
    pub rtt_sample_ms: u64,
    /// On SIGTERM: links are closed with an application code and the relay exits within this.
    pub shutdown_grace_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            keep_alive_ms: 1_000,
            idle_timeout_ms: 4_000,
            handshake_timeout_ms: 5_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            rtt_sample_ms: 1_000,
            shutdown_grace_ms: 2_000,
        }
    }
}

impl Timing {
    /// Keep-alive period.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Handshake limit.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Sizes and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame payload accepted or sent, in bytes; a larger one closes its stream.
    pub max_frame_bytes: usize,
    /// Unidirectional streams ("lanes") one link may have open per direction. The first
    /// rooms each get their own stream; past the bound, rooms share the open ones by hash.
    pub max_room_streams: usize,
    /// Frames queued per lane before `send` waits (backpressure).
    pub lane_queue: usize,
    /// QUIC connection-level receive (and send) window; each stream gets an eighth.
    pub receive_window_bytes: u64,
    /// UDP socket receive and send buffer asked of the kernel.
    pub udp_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_room_streams: 256,
            lane_queue: 1024,
            receive_window_bytes: 16 * 1024 * 1024,
            udp_buffer_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What the relay runtime needs besides the mesh and TLS identity.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayOptions {
    /// This relay's region.
    pub region: String,
    /// Timers.
    pub timing: Timing,
    /// Limits.
    pub limits: Limits,
}

impl RelayOptions {
    /// Defaults for `region` (tests override timers).
    pub fn new(region: &str) -> Self {
        Self {
            region: region.into(),
            timing: Timing::default(),
            limits: Limits::default(),
        }
    }
}

/// The whole relay configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The region this relay serves (a file name in the catalogue).
    pub region: String,
    /// Directory of the region catalogue (`regions/`).
    pub catalogue_dir: PathBuf,
    /// UDP address for QUIC. Default: the catalogue's `relay.address` of this region.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// TCP address for `/healthz`, `/readyz`, `/metrics`.
    pub http_listen: SocketAddr,
    /// Certificate files.
    pub tls: TlsFiles,
    /// Dial-address overrides by region (e.g. through an impairment proxy); default: each
    /// region's catalogue `relay.address`.
    #[serde(default)]
    pub peers: BTreeMap<String, SocketAddr>,
    /// Timers.
    #[serde(default)]
    pub timing: Timing,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// The region's Redis. Without it the relay only keeps links (nothing is replicated),
    /// which it says loudly at start.
    #[serde(default)]
    pub redis: Option<RedisSettings>,
    /// Replication timers.
    #[serde(default)]
    pub replication: ReplicationSettings,
    /// The active-relay lease (two relays per region: one active, one standby).
    #[serde(default)]
    pub lease: LeaseSettings,
}

/// `[redis]`: where the region's state lives, and the room settings its nodes use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://`). Either this or `sentinels` + `master_name`.
    #[serde(default)]
    pub url: Option<String>,
    /// Sentinel addresses (`redis://host:port`, `rediss://` for TLS): the primary is found
    /// through them and followed across failovers, as the nodes' `store.kind = "sentinel"`.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The monitored master's name (with `sentinels`).
    #[serde(default)]
    pub master_name: Option<String>,
    /// Database number on the data nodes (with `sentinels`).
    #[serde(default)]
    pub db: i64,
    /// ACL user on the data nodes (with `sentinels`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password on the data nodes (with `sentinels`).
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to the data nodes (with `sentinels`).
    #[serde(default)]
    pub tls: bool,
    /// Must equal the nodes' `history.len`.
    #[serde(default = "default_history_len")]
    pub history_len: u32,
    /// Must equal the nodes' `history.ttl_secs`.
    #[serde(default = "default_history_ttl_secs")]
    pub history_ttl_secs: u64,
    /// Must equal the nodes' `history.idempotency_window_secs`.
    #[serde(default = "default_idempotency_window_secs")]
    pub idempotency_window_secs: u64,
}

impl RedisSettings {
    /// Where the region's primary is.
    pub fn endpoint(&self) -> region_state::RedisEndpoint {
        match (&self.url, &self.master_name) {
            (Some(url), _) => region_state::RedisEndpoint::url(url.as_str()),
            (None, master) => {
                region_state::RedisEndpoint::Sentinel(region_state::SentinelEndpoint {
                    sentinels: self.sentinels.clone(),
                    master_name: master.clone().unwrap_or_default(),
                    db: self.db,
                    username: self.username.clone(),
                    password: self.password.clone(),
                    tls: self.tls,
                })
            }
        }
    }
}

fn default_idempotency_window_secs() -> u64 {
    300
}

fn default_history_len() -> u32 {
    1000
}
fn default_history_ttl_secs() -> u64 {
    86_400
}

/// `[replication]`, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSettings {
    /// A peer whose link stays down this long is declared down (`left {reason: region_down}`
    /// for its members).
    pub grace_ms: u64,
    /// A room stays followed this long after its last local member left.
    pub interest_linger_ms: u64,
    /// Period of the interest rescan behind the interest channel.
    pub rescan_ms: u64,
    /// History entries read per Redis call when sending.
    pub batch: usize,
    /// Least time between two re-requests of a room after a gap.
    pub gap_retry_ms: u64,
    /// How long a peer's users stay `online` here after nothing more is heard from its relay
    /// (a dead region's users are hidden from `presence` within this bound).
    pub presence_ttl_ms: u64,
    /// Clock-skew allowance when a region starts following a room: the room's history is
    /// sent from this long before its first local member joined.
    pub join_skew_ms: u64,
    /// Direct messages held per peer region while its link is down, in bytes.
    pub direct_buffer_bytes: usize,
    /// Held direct messages older than this are dropped instead of delivered.
    pub direct_buffer_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            grace_ms: 15_000,
            interest_linger_ms: 5_000,
            rescan_ms: 10_000,
            batch: 256,
            gap_retry_ms: 1_000,
            presence_ttl_ms: 4_000,
            join_skew_ms: 500,
            direct_buffer_bytes: 4 << 20,
            direct_buffer_ms: 30_000,
        }
    }
}

impl ReplicationSettings {
    /// As the replicator's options.
    pub fn options(&self) -> ReplicationOptions {
        let ms = Duration::from_millis;
        ReplicationOptions {
            grace: ms(self.grace_ms),
            interest_linger: ms(self.interest_linger_ms),
            rescan: ms(self.rescan_ms),
            batch: self.batch,
            gap_retry: ms(self.gap_retry_ms),
            presence_ttl: ms(self.presence_ttl_ms),
            join_skew: ms(self.join_skew_ms),
            direct_buffer_bytes: self.direct_buffer_bytes,
            direct_buffer_age: ms(self.direct_buffer_ms),
        }
    }
}

/// Replication timers and sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationOptions {
    /// A peer whose link stays down this long is declared down (`region_down`).
    pub grace: Duration,
    /// How long a room stays followed after its last local member left.
    pub interest_linger: Duration,
    /// Period of the interest rescan (the safety net behind the interest channel).
    pub rescan: Duration,
    /// History entries read per Redis call when sending.
    pub batch: usize,
    /// Least time between two requests for the same room after a gap.
    pub gap_retry: Duration,
    /// A peer's users count as online here until this long after anything was last heard
    /// from its relay (the pseudo-node's lease is renewed every second to end then), so a dead
    /// region's users are hidden from `presence` within this bound, long before the link is
    /// declared down.
    pub presence_ttl: Duration,
    /// Clock-skew allowance of a join time: a region that starts following a room is sent
    /// the room's history from this long before its first local member joined.
    pub join_skew: Duration,
    /// Direct messages for a region whose link is down are kept up to this many bytes (per
    /// region) and delivered when the link is back...
    pub direct_buffer_bytes: usize,
    /// ...unless they are older than this.
    pub direct_buffer_age: Duration,
}

impl Default for ReplicationOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(15),
            interest_linger: Duration::from_secs(5),
            rescan: Duration::from_secs(10),
            batch: 256,
            gap_retry: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(4),
            join_skew: Duration::from_millis(500),
            direct_buffer_bytes: 4 << 20,
            direct_buffer_age: Duration::from_secs(30),
        }
    }
}

/// `[lease]`, in milliseconds: the active relay renews `meridian:relay:active` every
/// `renew_ms` with a time-to-live of `ttl_ms`; a standby polls every `renew_ms` and takes the
/// lease once it has expired, so it takes over within `ttl_ms + renew_ms` of the active
/// relay's death.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseSettings {
    /// Lease time-to-live.
    pub ttl_ms: u64,
    /// Renewal (and standby poll) period.
    pub renew_ms: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            ttl_ms: 3_000,
            renew_ms: 1_000,
        }
    }
}

impl RelayConfig {
    /// Loads `file`, then `MERIDIAN_*` variables on top, then validates.
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

    /// Serializes back into a figment, e.g. to layer overrides in tests.
    pub fn figment(&self) -> Figment {
        Figment::from(Serialized::defaults(self))
    }

    /// The runtime options.
    pub fn options(&self) -> RelayOptions {
        RelayOptions {
            region: self.region.clone(),
            timing: self.timing.clone(),
            limits: self.limits.clone(),
        }
    }

    /// Checks ranges and relations between keys (not the catalogue: see [`Mesh::resolve`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::Invalid(m));
        if !valid_region_name(&self.region) {
            return fail(format!("region {:?}: use 1-32 of a-z 0-9 -", self.region));
        }
        if let Some(bad) = self.peers.keys().find(|r| !valid_region_name(r)) {
            return fail(format!("peers.{bad}: not a region name"));
        }
        if let Some(r) = &self.redis {
            let scheme_ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
            match (&r.url, r.sentinels.is_empty(), &r.master_name) {
                (Some(url), true, None) => {
                    if !scheme_ok(url) {
                        return fail(format!(
                            "redis.url {url:?}: use redis://host:port/db or rediss://"
                        ));
                    }
                }
                (None, false, Some(master)) if !master.is_empty() => {
                    if let Some(bad) = r.sentinels.iter().find(|u| !scheme_ok(u)) {
                        return fail(format!(
                            "redis.sentinels entry {bad:?} must start with redis:// or rediss://"
                        ));
                    }
                }
                _ => {
                    return fail(
                        "redis: give either url, or sentinels (non-empty) with master_name".into(),
                    )
                }
            }
            if r.history_len == 0 || r.history_ttl_secs == 0 || r.idempotency_window_secs == 0 {
                return fail(
                    "redis.history_len, redis.history_ttl_secs and redis.idempotency_window_secs must be at least 1".into(),
                );
            }
        }
        let rp = &self.replication;
        if rp.grace_ms < 1_000 || rp.presence_ttl_ms < 2_000 || rp.rescan_ms < 1_000 {
            return fail("replication: grace_ms and rescan_ms must be >= 1000, presence_ttl_ms >= 2000 (renewed every second)".into());
        }
        if rp.batch == 0 || rp.batch > 10_000 || rp.gap_retry_ms == 0 {
            return fail("replication: batch must be 1..=10000 and gap_retry_ms > 0".into());
        }
        if rp.presence_ttl_ms < self.timing.keep_alive_ms + 2_000 {
            return fail("replication.presence_ttl_ms must be at least timing.keep_alive_ms + 2000 (a live link is heard every keep-alive; the lease is renewed every second)".into());
        }
        if rp.join_skew_ms > 60_000 || rp.direct_buffer_bytes > 1 << 30 {
            return fail("replication: join_skew_ms must be at most 60000 and direct_buffer_bytes at most 1 GiB".into());
        }
        let l = &self.lease;
        if l.renew_ms < 50 || l.ttl_ms < 2 * l.renew_ms {
            return fail("lease: renew_ms must be >= 50 and ttl_ms at least twice renew_ms (a renewal may be late once)".into());
        }
        validate_options(&self.options())
    }
}

/// Range checks of timers and limits, shared by the file config and in-process starts.
pub fn validate_options(o: &RelayOptions) -> Result<(), ConfigError> {
    let fail = |m: &str| Err(ConfigError::Invalid(m.into()));
    let t = &o.timing;
    if t.keep_alive_ms < 50 || t.keep_alive_ms * 2 > t.idle_timeout_ms {
        return fail("timing.keep_alive_ms must be >= 50 and at most half of timing.idle_timeout_ms (two keep-alives per idle window)");
    }
    if t.idle_timeout_ms > 600_000 {
        return fail("timing.idle_timeout_ms must be at most 600000");
    }
    if t.handshake_timeout_ms == 0 || t.rtt_sample_ms == 0 || t.shutdown_grace_ms == 0 {
        return fail(
            "timing.handshake_timeout_ms, timing.rtt_sample_ms and timing.shutdown_grace_ms must be > 0",
        );
    }
    if t.backoff_initial_ms == 0 || t.backoff_initial_ms > t.backoff_max_ms {
        return fail("timing: need 0 < backoff_initial_ms <= backoff_max_ms");
    }
    let l = &o.limits;
    if !(1024..=16 * 1024 * 1024).contains(&l.max_frame_bytes) {
        return fail("limits.max_frame_bytes must be between 1024 and 16 MiB");
    }
    if !(1..=10_000).contains(&l.max_room_streams) {
        return fail("limits.max_room_streams must be between 1 and 10000");
    }
    if l.lane_queue == 0 {
        return fail("limits.lane_queue must be at least 1");
    }
    if !(65_536..=1 << 30).contains(&l.receive_window_bytes) {
        return fail("limits.receive_window_bytes must be between 64 KiB and 1 GiB");
    }
    if !(65_536..=256 * 1024 * 1024).contains(&l.udp_buffer_bytes) {
        return fail("limits.udp_buffer_bytes must be between 64 KiB and 256 MiB");
    }
    Ok(())
}

/// Every region of the mesh and where to dial its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// Region name → relay address (this region included).
    pub regions: BTreeMap<String, SocketAddr>,
}

impl Mesh {
    /// From the catalogue, applying dial-address overrides; checks that `region` and every
    /// override are catalogue regions.
    pub fn resolve(
        catalogue: &BTreeMap<String, Region>,
        region: &str,
        overrides: &BTreeMap<String, SocketAddr>,
    ) -> Result<Self, ConfigError> {
        if !catalogue.contains_key(region) {
            return Err(ConfigError::Invalid(format!(
                "region {region:?} is not in the catalogue (known: {:?})",
                catalogue.keys().collect::<Vec<_>>()
            )));
        }
        if let Some(unknown) = overrides.keys().find(|r| !catalogue.contains_key(*r)) {
            return Err(ConfigError::Invalid(format!(
                "peers.{unknown}: not a catalogue region"
            )));
        }
        let regions = catalogue
            .iter()
            .map(|(name, r)| {
                let addr = overrides.get(name).copied().unwrap_or(r.relay.address);
                (name.clone(), addr)
            })
            .collect();
        Ok(Self { regions })
    }

    /// The region names, for the certificate checks.
    pub fn names(&self) -> BTreeSet<String> {
        self.regions.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<RelayConfig, ConfigError> {
        RelayConfig::from_figment(Figment::from(Toml::string(toml)))
    }

    const MINIMAL: &str = r#"
        region = "us-east"
        catalogue_dir = "regions"
        http_listen = "127.0.0.1:7491"
        tls = { ca = "certs/ca.pem", cert = "certs/us-east.cert.pem", key = "certs/us-east.key.pem" }
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.limits.max_frame_bytes, 1 << 20);
        assert_eq!(c.listen, None);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse(&format!("{MINIMAL}\nbogus = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[timing]\nidle_ms = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle_ms"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = parse(&format!(
            "{MINIMAL}\n[timing]\nkeep_alive_ms = 3000\nidle_timeout_ms = 3000"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("keep_alive_ms"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[limits]\nmax_frame_bytes = 10"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_frame_bytes"), "{e}");
        let e = parse(&MINIMAL.replace("\"us-east\"", "\"US East\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("region"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[timing]\nbackoff_initial_ms = 900\nbackoff_max_ms = 10"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("backoff"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[redis]\nurl = \"http://x\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.url"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[redis]\nurl = \"redis://127.0.0.1:1/\"\nhistory_len = 0"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("history_len"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[replication]\ngrace_ms = 5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("grace_ms"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[lease]\nttl_ms = 1000\nrenew_ms = 1000"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("lease"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[redis]\nurl = \"redis://h/\"\nbogus = 1"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[redis]\nurl = \"redis://h/\"\nsentinels = [\"redis://s:26379\"]\nmaster_name = \"m\""
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("either url, or sentinels"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[redis]\nsentinels = [\"tcp://s:1\"]\nmaster_name = \"m\""
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("redis.sentinels"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[replication]\npresence_ttl_ms = 2500"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("presence_ttl_ms"), "{e}");
    }

    #[test]
    fn redis_behind_sentinel_is_followed_like_the_nodes_store() {
        let c = parse(&format!(
            "{MINIMAL}\n[redis]\nsentinels = [\"redis://127.0.0.1:26379\", \"redis://127.0.0.1:26380\"]\nmaster_name = \"meridian\"\npassword = \"pw\""
        ))
        .unwrap();
        match c.redis.unwrap().endpoint() {
            region_state::RedisEndpoint::Sentinel(s) => {
                assert_eq!(s.sentinels.len(), 2);
                assert_eq!(s.master_name, "meridian");
                assert_eq!(s.password.as_deref(), Some("pw"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn example_config_is_valid_and_matches_the_catalogue() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let c = RelayConfig::from_figment(Figment::from(Toml::file_exact(
            dir.join("relay.example.toml"),
        )))
        .unwrap();
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.limits, Limits::default());
        let catalogue = meridian_catalogue::load_dir(&dir.join("../../regions")).unwrap();
        let mesh = Mesh::resolve(&catalogue, &c.region, &c.peers).unwrap();
        assert!(mesh.regions.len() >= 3);
        assert!(Mesh::resolve(&catalogue, "mars", &BTreeMap::new()).is_err());
        let bad = BTreeMap::from([("mars".to_string(), "127.0.0.1:1".parse().unwrap())]);
        assert!(Mesh::resolve(&catalogue, &c.region, &bad).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn env_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", MINIMAL)?;
            jail.set_env("MERIDIAN_REGION", "eu-central");
            jail.set_env("MERIDIAN_TIMING__IDLE_TIMEOUT_MS", "3000");
            let c = RelayConfig::load(Some(Path::new("r.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                (c.region.as_str(), c.timing.idle_timeout_ms),
                ("eu-central", 3000)
            );
            jail.set_env("MERIDIAN_TIMING__BOGUS", "1");
            assert!(RelayConfig::load(Some(Path::new("r.toml"))).is_err());
            Ok(())
        });
    }
}
