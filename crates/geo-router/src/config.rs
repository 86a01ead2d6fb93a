//! Router configuration: a TOML file plus `MERIDIAN_*` environment variables (figment), then the
//! command-line flags, strictly typed (`deny_unknown_fields`) and validated before any socket is
//! bound. Nested keys use `__` in the environment: `MERIDIAN_HEALTH__INTERVAL_MS`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use crate::decision::Policy;

mod trust;
pub use trust::{read_ca_file, CaFileError};

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

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// An IP network written `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network {
    /// The first address (host bits must be zero).
    pub address: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl Network {
    /// Whether `ip` (IPv4-mapped counts as IPv4) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (start, end) = self.range();
        match (ip.to_canonical(), self.address) {
            (IpAddr::V4(v4), IpAddr::V4(_)) => {
                let x = u128::from(u32::from(v4));
                start <= x && x <= end
            }
            (IpAddr::V6(v6), IpAddr::V6(_)) => {
                let x = u128::from(v6);
                start <= x && x <= end
            }
            _ => false,
        }
    }

    /// First and last address as integers of the family.
    pub fn range(&self) -> (u128, u128) {
        match self.address {
            IpAddr::V4(v4) => crate::scope::block(u128::from(u32::from(v4)), self.prefix_len, 32),
            IpAddr::V6(v6) => crate::scope::block(u128::from(v6), self.prefix_len, 128),
        }
    }
}

impl TryFrom<String> for Network {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        let (address, len) = text
            .split_once('/')
            .ok_or_else(|| format!("network {text:?}: expected ADDRESS/PREFIX"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("network {text:?}: {address:?} is not an IP address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| format!("network {text:?}: {len:?} is not a prefix length"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > bits {
            return Err(format!("network {text:?}: prefix longer than {bits} bits"));
        }
        let network = Network {
            address,
            prefix_len,
        };
        let (start, _) = network.range();
        let first = match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if start != first {
            return Err(format!(
                "network {text:?}: host bits are set past the /{prefix_len} prefix"
            ));
        }
        Ok(network)
    }
}

impl From<Network> for String {
    fn from(network: Network) -> String {
        format!("{}/{}", network.address, network.prefix_len)
    }
}

/// An operator pin: clients in `network` go to `region` while it can take users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The client network.
    pub network: Network,
    /// The catalogue region.
    pub region: String,
}

/// An admin credential: a bearer token and the name its changes are logged under.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who uses it (`alice`, `drill-bot`): the actor in the audit log.
    pub actor: String,
    /// The bearer token, at least 16 characters.
    pub token: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// Active health checks of every region's `health_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between probes of one region, ms.
    pub interval_ms: u64,
    /// A probe that takes longer fails, ms (below the interval).
    pub timeout_ms: u64,
    /// Consecutive failures that mark an up region down.
    pub fall: u32,
    /// Consecutive successes that mark a down region up.
    pub rise: u32,
    /// Trust the platform's CA store (read once at start) for `https://` health URLs.
    pub platform_roots: bool,
    /// A PEM bundle of extra CA certificates for `https://` health URLs (a private CA); with
    /// `platform_roots = false` the only ones trusted. Certificates are always verified.
    pub ca_file: Option<PathBuf>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 1000,
            timeout_ms: 800,
            fall: 2,
            rise: 3,
            platform_roots: true,
            ca_file: None,
        }
    }
}

impl HealthConfig {
    /// The longest time from a region's death to the router marking it down: the probe that
    /// would have succeeded may have just finished, so `fall` more probes each run to the end of
    /// their timeout.
    pub fn detection_bound(&self) -> Duration {
        Duration::from_millis(
            self.interval_ms * u64::from(self.fall) + self.timeout_ms.min(self.interval_ms),
        )
    }
}

/// The answer TTL when the configuration does not say otherwise: short, so routing changes
/// (drains, failovers) reach clients quickly.
pub const DEFAULT_TTL: u32 = 30;

/// Where routing controls are shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlsConfig {
    /// `redis://host:port/db` shared by every router instance. Without it controls live in this
    /// process only, which is fine for one router and wrong for several.
    pub redis_url: Option<String>,
    /// Key prefix in that Redis, so several meshes can share one server.
    pub key_prefix: String,
    /// How often every instance checks for changes, ms; a change reaches every instance within
    /// this plus one Redis round trip.
    pub poll_ms: u64,
    /// Append every change as a JSON line to this file too (beside the shared audit list).
    pub audit_file: Option<PathBuf>,
    /// Admin credentials; without any, the admin API answers 403.
    pub admin_tokens: Vec<AdminToken>,
    /// A PEM CA bundle a `rediss://` control store's certificate must chain to (a private CA);
    /// unset: the platform's trust store.
    pub ca_file: Option<PathBuf>,
}

impl Default for ControlsConfig {
    fn default() -> Self {
        ControlsConfig {
            redis_url: None,
            key_prefix: "meridian:router".into(),
            poll_ms: 200,
            audit_file: None,
            admin_tokens: Vec::new(),
            ca_file: None,
        }
    }
}

/// A secret from the config (a key): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Client RTT reports: who may send them (a report token signed with `report_key`), how
/// often, and how they are aggregated. Without `report_key` reports are off: `/v1/route` hands
/// out no token and `/v1/rtt` refuses every report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RttSettings {
    /// The HMAC-SHA256 key of report tokens, shared by every router of a mesh (at least 32
    /// characters; `meridian up` generates one).
    pub report_key: Option<Secret>,
    /// How long a report token is valid, s.
    pub token_ttl_s: u64,
    /// Reports accepted per minute from one source address (IPv4 address, IPv6 /64).
    pub source_reports_per_min: u32,
    /// Reports accepted per minute for one client network (all its sources together).
    pub network_reports_per_min: u32,
    /// IPv4 aggregation prefix.
    pub prefix_v4: u8,
    /// IPv6 aggregation prefix.
    pub prefix_v6: u8,
    /// Networks kept at most.
    pub max_prefixes: usize,
    /// Half-life of a sample's weight, s.
    pub half_life_s: u64,
    /// Measurements accepted in one report.
    pub max_per_report: usize,
}

impl Default for RttSettings {
    fn default() -> Self {
        RttSettings {
            report_key: None,
            token_ttl_s: 600,
            source_reports_per_min: 12,
            network_reports_per_min: 60,
            prefix_v4: 24,
            prefix_v6: 48,
            max_prefixes: 100_000,
            half_life_s: 3600,
            max_per_report: 16,
        }
    }
}

/// HTTP API settings (`[http]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Origins a web app may call the public routing endpoints (`/v1/route`, `/v1/connect`,
    /// `/v1/rtt`) from: `["*"]` (any, the default), a list of exact origins
    /// (`"https://app.example.com"`), or `[]` (no CORS headers at all). Never applied to the
    /// admin and status endpoints.
    pub cors_origins: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            cors_origins: vec!["*".into()],
        }
    }
}

impl HttpSettings {
    fn validate(&self) -> Result<(), String> {
        for origin in &self.cors_origins {
            if origin == "*" {
                if self.cors_origins.len() > 1 {
                    return Err("cors_origins: \"*\" must be the only entry".into());
                }
                continue;
            }
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.bytes().all(|b| b.is_ascii_graphic())
                && origin
                    .split("://")
                    .nth(1)
                    .is_some_and(|host| !host.is_empty() && !host.contains('/'));
            if !ok {
                return Err(format!(
                    "cors_origins: {origin:?} is not an origin (scheme://host[:port], no path, no trailing slash)"
                ));
            }
        }
        Ok(())
    }
}

/// DNS abuse limits: response rate limiting per client network and a cap on DNS-over-TCP
/// connections per client network (/24 for IPv4, /48 for IPv6, of the packet's source; ECS does
/// not count, since anyone can write it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsLimits {
    /// UDP responses per second per client network; 0 turns rate limiting off. Over the limit
    /// the answer is a truncated (TC=1) reply without records, no bigger than the query, so a
    /// real resolver retries over TCP and a spoofed victim gets no amplification.
    pub rate_per_s: u32,
    /// Bucket size: responses a network may get in a burst.
    pub burst: u32,
    /// Concurrent DNS-over-TCP connections per client network (of 256 in all).
    pub tcp_per_network: usize,
}

impl Default for DnsLimits {
    fn default() -> Self {
        DnsLimits {
            rate_per_s: 1000,
            burst: 2000,
            tcp_per_network: 32,
        }
    }
}

/// TLS for the admin listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The whole router configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// The region catalogue directory.
    pub regions: PathBuf,
    /// The MaxMind-format City database (reloaded when the file changes).
    pub geoip: Option<PathBuf>,
    /// The zone served, fully qualified (`mesh.example.net.`).
    pub zone: String,
    /// The zone's name servers (NS records; the first is the SOA MNAME). Default `ns1.<zone>`.
    pub name_servers: Vec<String>,
    /// DNS listen address, UDP and TCP.
    pub dns_listen: SocketAddr,
    /// HTTP listen address (routing API, health, metrics).
    pub http_listen: SocketAddr,
    /// The admin API's own listen address (`/v1/admin/...`); unset: no admin API. Never the
    /// public listener's.
    pub admin_listen: Option<SocketAddr>,
    /// TLS for the admin listener; unset: plain HTTP (keep it on loopback or a private network).
    pub admin_tls: Option<AdminTls>,
    /// Answer TTL, s.
    pub ttl: u32,
    /// This instance's name in logs and the audit log.
    pub instance: String,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
    /// Accept `?ip=` on `/v1/route` and `/v1/connect` (debugging only: anyone could then ask
    /// for anyone's route).
    pub allow_debug_ip: bool,
    /// How often the GeoIP file is checked for changes, ms.
    pub geoip_reload_ms: u64,
    /// Time allowed for a graceful shutdown, ms.
    pub shutdown_timeout_ms: u64,
    /// Ranking tunables.
    pub policy: Policy,
    /// Operator pins.
    pub pins: Vec<Pin>,
    /// Health checks.
    pub health: HealthConfig,
    /// Routing controls.
    pub controls: ControlsConfig,
    /// RTT reports.
    pub rtt: RttSettings,
    /// HTTP API settings (CORS).
    pub http: HttpSettings,
    /// DNS rate and connection limits.
    pub dns_limits: DnsLimits,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            regions: PathBuf::from("regions"),
            geoip: None,
            zone: "mesh.localhost.".into(),
            name_servers: Vec::new(),
            dns_listen: SocketAddr::from(([127, 0, 0, 1], 5353)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8053)),
            admin_listen: None,
            admin_tls: None,
            ttl: DEFAULT_TTL,
            instance: "router".into(),
            trusted_proxies: Vec::new(),
            allow_debug_ip: false,
            geoip_reload_ms: 1000,
            shutdown_timeout_ms: 5000,
            policy: Policy::default(),
            pins: Vec::new(),
            health: HealthConfig::default(),
            controls: ControlsConfig::default(),
            rtt: RttSettings::default(),
            http: HttpSettings::default(),
            dns_limits: DnsLimits::default(),
        }
    }
}

impl RouterConfig {
    /// Defaults, then `file` (when given), then `MERIDIAN_*` variables, then `overrides`
    /// (the command-line flags), validated.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RouterConfig::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment
            .merge(Env::prefixed("MERIDIAN_").split("__"))
            .merge(overrides);
        Self::from_figment(figment)
    }

    /// Extracts and validates.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: RouterConfig = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The zone as a DNS name.
    pub fn zone_name(&self) -> Result<Name, ConfigError> {
        let zone = Name::from_utf8(&self.zone)
            .map_err(|e| invalid(format!("zone = {:?}: {e}", self.zone)))?;
        if !zone.is_fqdn() {
            return Err(invalid(format!(
                "zone = {:?}: must be fully qualified (end with a dot)",
                self.zone
            )));
        }
        Ok(zone.to_lowercase())
    }

    /// The NS names, defaulting to `ns1.<zone>`.
    pub fn name_server_names(&self) -> Result<Vec<Name>, ConfigError> {
        let zone = self.zone_name()?;
        if self.name_servers.is_empty() {
            return zone
                .prepend_label("ns1")
                .map(|n| vec![n])
                .map_err(|e| invalid(format!("zone = {:?}: {e}", self.zone)));
        }
        self.name_servers
            .iter()
            .map(|n| {
                let name =
                    Name::from_utf8(n).map_err(|e| invalid(format!("name_servers: {n:?}: {e}")))?;
                if name.is_fqdn() {
                    Ok(name)
                } else {
                    Err(invalid(format!(
                        "name_servers: {n:?} must be fully qualified (end with a dot)"
                    )))
                }
            })
            .collect()
    }

    /// Checks every range and cross-field rule; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.zone_name()?;
        self.name_server_names()?;
        if self.ttl == 0 || self.ttl > 86_400 {
            return Err(invalid(format!(
                "ttl = {}: must be in 1..=86400 s",
                self.ttl
            )));
        }
        self.policy
            .validate()
            .map_err(|e| invalid(format!("policy.{e}")))?;
        self.http
            .validate()
            .map_err(|e| invalid(format!("http.{e}")))?;
        let h = &self.health;
        if h.interval_ms < 50 || h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
            return Err(invalid(format!(
                "health: interval_ms = {} must be at least 50 and timeout_ms = {} in 1..=interval_ms",
                h.interval_ms, h.timeout_ms
            )));
        }
        if h.fall == 0 || h.rise == 0 {
            return Err(invalid("health: fall and rise must be at least 1"));
        }
        match &h.ca_file {
            Some(path) => {
                read_ca_file(path).map_err(|e| invalid(e.to_string()))?;
            }
            None if !h.platform_roots => {
                return Err(invalid(
                    "health: platform_roots = false needs health.ca_file (otherwise no https:// health URL can be trusted)",
                ));
            }
            None => {}
        }
        let c = &self.controls;
        if c.poll_ms < 10 || c.poll_ms > 1000 {
            return Err(invalid(format!(
                "controls.poll_ms = {}: must be in 10..=1000 (changes must reach every router within 1 s)",
                c.poll_ms
            )));
        }
        if let Some(path) = &c.ca_file {
            read_ca_file(path).map_err(|e| {
                invalid(
                    e.to_string()
                        .replacen("health.ca_file", "controls.ca_file", 1),
                )
            })?;
        }
        if c.key_prefix.is_empty() {
            return Err(invalid("controls.key_prefix must not be empty"));
        }
        for token in &c.admin_tokens {
            if token.actor.trim().is_empty() {
                return Err(invalid("controls.admin_tokens: actor must not be empty"));
            }
            if token.token.len() < 16 {
                return Err(invalid(format!(
                    "controls.admin_tokens: the token of {:?} is shorter than 16 characters",
                    token.actor
                )));
            }
        }
        let r = &self.rtt;
        if !(8..=32).contains(&r.prefix_v4) || !(16..=128).contains(&r.prefix_v6) {
            return Err(invalid(format!(
                "rtt: prefix_v4 = {} must be in 8..=32 and prefix_v6 = {} in 16..=128",
                r.prefix_v4, r.prefix_v6
            )));
        }
        if r.max_prefixes == 0 || r.half_life_s == 0 || r.max_per_report == 0 {
            return Err(invalid(
                "rtt: max_prefixes, half_life_s and max_per_report must be above 0",
            ));
        }
        if let Some(key) = &r.report_key {
            if key.0.len() < 32 {
                return Err(invalid(
                    "rtt.report_key is shorter than 32 characters (use e.g. `openssl rand -hex 32`)",
                ));
            }
        }
        if !(60..=86_400).contains(&r.token_ttl_s) {
            return Err(invalid(format!(
                "rtt.token_ttl_s = {}: must be in 60..=86400",
                r.token_ttl_s
            )));
        }
        if r.source_reports_per_min == 0 || r.network_reports_per_min == 0 {
            return Err(invalid(
                "rtt: source_reports_per_min and network_reports_per_min must be above 0",
            ));
        }
        let d = &self.dns_limits;
        if d.rate_per_s > 0 && d.burst < d.rate_per_s {
            return Err(invalid(format!(
                "dns_limits: burst = {} must be at least rate_per_s = {}",
                d.burst, d.rate_per_s
            )));
        }
        if !(1..=256).contains(&d.tcp_per_network) {
            return Err(invalid(format!(
                "dns_limits.tcp_per_network = {}: must be in 1..=256",
                d.tcp_per_network
            )));
        }
        if let Some(admin) = self.admin_listen {
            if admin == self.http_listen && admin.port() != 0 {
                return Err(invalid(format!(
                    "admin_listen = {admin} is http_listen: the admin API needs its own listener"
                )));
            }
        }
        if self.admin_tls.is_some() && self.admin_listen.is_none() {
            return Err(invalid("admin_tls is set but admin_listen is not"));
        }
        if self.geoip_reload_ms < 100 {
            return Err(invalid("geoip_reload_ms must be at least 100"));
        }
        if self.instance.trim().is_empty() {
            return Err(invalid("instance must not be empty"));
        }
        Ok(())
    }

    /// Checks that names in the config (default region, pins) exist in the loaded catalogue.
    pub fn validate_against(&self, regions: &[&str]) -> Result<(), ConfigError> {
        if let Some(default) = &self.policy.default_region {
            if !regions.contains(&default.as_str()) {
                return Err(invalid(format!(
                    "policy.default_region = {default:?}: no such region in the catalogue ({})",
                    regions.join(", ")
                )));
            }
        }
        for pin in &self.pins {
            if !regions.contains(&pin.region.as_str()) {
                return Err(invalid(format!(
                    "pins: {} → {:?}: no such region in the catalogue",
                    String::from(pin.network),
                    pin.region
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<RouterConfig, ConfigError> {
        RouterConfig::from_figment(
            Figment::from(Serialized::defaults(RouterConfig::default())).merge(Toml::string(toml)),
        )
    }

    #[test]
    fn defaults_are_valid_and_the_example_parses() {
        RouterConfig::default().validate().unwrap();
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/geo-router.toml"
        );
        let config = RouterConfig::load(Some(Path::new(example)), Figment::new()).unwrap();
        assert!(config.zone.ends_with('.'));
        assert_eq!(
            HealthConfig::default().detection_bound(),
            Duration::from_millis(2800)
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("zone = \"no-dot.example\"", "fully qualified"),
            ("ttl = 0", "ttl"),
            ("unknown_key = 1", "unknown_key"),
            ("[health]\ntimeout_ms = 5000", "timeout_ms"),
            ("[health]\nfall = 0", "fall"),
            (
                "[health]\nca_file = \"/nonexistent/health-ca.pem\"",
                "health.ca_file = \"/nonexistent/health-ca.pem\": cannot read it",
            ),
            ("[health]\nplatform_roots = false", "needs health.ca_file"),
            (
                "[controls]\nca_file = \"/nonexistent/controls-ca.pem\"",
                "controls.ca_file = \"/nonexistent/controls-ca.pem\": cannot read it",
            ),
            ("[controls]\npoll_ms = 5000", "poll_ms"),
            (
                "[[controls.admin_tokens]]\nactor = \"a\"\ntoken = \"short\"",
                "shorter than 16",
            ),
            (
                "[[pins]]\nnetwork = \"10.0.0.1/8\"\nregion = \"x\"",
                "host bits",
            ),
            (
                "[[pins]]\nnetwork = \"10.0.0.0/33\"\nregion = \"x\"",
                "prefix longer",
            ),
            (
                "[[pins]]\nnetwork = \"banana\"\nregion = \"x\"",
                "ADDRESS/PREFIX",
            ),
            ("[policy]\nfiber_km_per_ms = 0", "fiber_km_per_ms"),
            ("[rtt]\nprefix_v4 = 40", "prefix_v4"),
            ("[rtt]\nreport_key = \"short\"", "rtt.report_key"),
            ("[rtt]\ntoken_ttl_s = 5", "rtt.token_ttl_s"),
            (
                "[rtt]\nsource_reports_per_min = 0",
                "source_reports_per_min",
            ),
            (
                "[dns_limits]\nrate_per_s = 10\nburst = 5",
                "dns_limits: burst",
            ),
            ("[dns_limits]\ntcp_per_network = 0", "tcp_per_network"),
            (
                "http_listen = \"127.0.0.1:8053\"\nadmin_listen = \"127.0.0.1:8053\"",
                "its own listener",
            ),
            (
                "[admin_tls]\ncert = \"c.pem\"\nkey = \"k.pem\"",
                "admin_listen is not",
            ),
        ];
        for (toml, expected) in cases {
            let error = parse(toml).unwrap_err().to_string();
            assert!(error.contains(expected), "{toml}: {error}");
        }
    }

    #[test]
    fn names_must_exist_in_the_catalogue() {
        let config = parse("[[pins]]\nnetwork = \"10.0.0.0/8\"\nregion = \"mars\"").unwrap();
        let error = config
            .validate_against(&["us-east"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("mars"), "{error}");
        let config = parse("[policy]\ndefault_region = \"venus\"").unwrap();
        assert!(config.validate_against(&["us-east"]).is_err());
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let network = Network::try_from("10.1.0.0/16".to_owned()).unwrap();
        assert!(network.contains("10.1.255.1".parse().unwrap()));
        assert!(network.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!network.contains("10.2.0.1".parse().unwrap()));
        assert!(!network.contains("2001:db8::1".parse().unwrap()));
        let v6 = Network::try_from("2001:db8::/32".to_owned()).unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn secrets_arrive_through_the_environment() {
        // The form meridian-fetch-secrets writes for routers deployed by terraform.
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "MERIDIAN_CONTROLS__ADMIN_TOKENS",
                r#"[{actor="sre-oncall", token="abcdefghijklmnop+/=0123"}, {actor="drill-bot", token="0123456789abcdef0123"}]"#,
            );
            jail.set_env(
                "MERIDIAN_CONTROLS__REDIS_URL",
                "rediss://meridian-router:p%40ss@controls.router.meridian:6380/",
            );
            let config = RouterConfig::load(None, Figment::new()).unwrap();
            let actors: Vec<_> = config
                .controls
                .admin_tokens
                .iter()
                .map(|t| (t.actor.as_str(), t.token.as_str()))
                .collect();
            assert_eq!(
                actors,
                [
                    ("sre-oncall", "abcdefghijklmnop+/=0123"),
                    ("drill-bot", "0123456789abcdef0123")
                ]
            );
            assert_eq!(
                config.controls.redis_url.as_deref(),
                Some("rediss://meridian-router:p%40ss@controls.router.meridian:6380/")
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("router.toml", "ttl = 60\n[health]\nrise = 5\n")?;
            jail.set_env("MERIDIAN_HEALTH__RISE", "7");
            let config =
                RouterConfig::load(Some(Path::new("router.toml")), Figment::new()).unwrap();
            assert_eq!((config.ttl, config.health.rise), (60, 7));
            Ok(())
        });
    }
}
