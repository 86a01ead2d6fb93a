//! Routing controls (drain, undrain, disable, weight) shared by every router instance, and their
//! audit log.
//!
//! **How a change reaches every instance within 1 s.** With `controls.redis_url` set, the
//! controls live in one Redis hash (`<prefix>:controls`, region → JSON [`ControlEntry`]) next to
//! a version counter (`<prefix>:controls:version`). A change is one Lua script that checks the
//! safety rule, writes the entry, bumps the version and appends the audit record
//! (`<prefix>:audit`, newest first, capped at 10,000), atomically: two operators draining the
//! last two regions on two routers at the same moment cannot both succeed. Every instance polls
//! the version every `controls.poll_ms` (200 ms by default) and reloads the hash when it moved,
//! so a change is live everywhere within one poll interval plus one Redis round trip. Polling
//! (rather than pub/sub alone) has no missed-message case to reason about: a router that was cut
//! off from Redis catches up on its first successful poll, and keeps routing on the last
//! controls it saw meanwhile.
//!
//! Without Redis the same logic runs in process ([`ControlStore::memory`]); that is right for a
//! single router and says so in its log at start.
//!
//! **Safety rule.** A change is refused when afterwards no region would be routable: active with
//! weight above 0 and, as far as the instance taking the change can tell, not down.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::decision::{Control, ControlState};

/// Audit records kept in the shared list.
const AUDIT_KEEP: isize = 10_000;

/// A region's control with who set it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlEntry {
    /// Whether the region takes users.
    pub state: ControlState,
    /// In (0, 1].
    pub weight: f64,
    /// Who set it.
    pub actor: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Free text from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set by a failover drill (`meridian drill`), so dashboards can tell drills from incidents.
    #[serde(default)]
    pub drill: bool,
}

impl ControlEntry {
    /// State and weight.
    pub fn control(&self) -> Control {
        Control {
            state: self.state,
            weight: self.weight,
        }
    }
}

/// One change as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who (the admin token's actor).
    pub actor: String,
    /// The router instance that took the change.
    pub instance: String,
    /// The region changed.
    pub region: String,
    /// `drain`, `undrain`, `disable`, `enable`, `weight`.
    pub action: String,
    /// The control before.
    pub from: Control,
    /// The control after.
    pub to: Control,
    /// Free text from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Part of a drill.
    #[serde(default)]
    pub drill: bool,
}

/// Every region's control at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlSnapshot {
    /// Bumped by every change.
    pub version: u64,
    /// Regions without an entry are [`Control::ACTIVE`].
    pub entries: BTreeMap<String, ControlEntry>,
}

impl ControlSnapshot {
    /// The control of `region`.
    pub fn control(&self, region: &str) -> Control {
        self.entries
            .get(region)
            .map_or(Control::ACTIVE, ControlEntry::control)
    }
}

/// A requested change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRequest {
    /// Who asks.
    pub actor: String,
    /// The router instance taking it.
    pub instance: String,
    /// The region.
    pub region: String,
    /// What to do.
    pub action: Action,
    /// Free text.
    pub note: Option<String>,
    /// Part of a drill.
    pub drill: bool,
}

/// The operator actions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// No new users; state `drained`.
    Drain,
    /// Back to `active` (from drained or disabled), weight kept.
    Undrain,
    /// Out of service altogether.
    Disable,
    /// Set the weight in (0, 1]; the state is kept.
    Weight(f64),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Undrain => "undrain",
            Action::Disable => "disable",
            Action::Weight(_) => "weight",
        }
    }

    fn apply(&self, from: Control) -> Control {
        match *self {
            Action::Drain => Control {
                state: ControlState::Drained,
                ..from
            },
            Action::Undrain => Control {
                state: ControlState::Active,
                weight: if from.weight > 0.0 { from.weight } else { 1.0 },
            },
            Action::Disable => Control {
                state: ControlState::Disabled,
                ..from
            },
            Action::Weight(weight) => Control { weight, ..from },
        }
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The change would leave no region routable.
    #[error("refused: after this change no region would be routable (active, weight above 0 and not down)")]
    Unsafe,
    /// No such region in the catalogue.
    #[error("no region {0:?} in the catalogue")]
    UnknownRegion(String),
    /// A weight outside (0, 1].
    #[error("weight {0} is outside (0, 1]")]
    BadWeight(f64),
    /// The shared store could not be reached or answered nonsense; retry.
    #[error("control store unavailable: {0}")]
    Store(String),
}

/// The controls, in Redis or in this process.
#[derive(Clone)]
pub enum ControlStore {
    /// Shared by every instance.
    Redis {
        /// The connection (reconnects by itself).
        connection: ConnectionManager,
        /// Key prefix.
        prefix: String,
    },
    /// This process only.
    Memory(std::sync::Arc<Mutex<(ControlSnapshot, Vec<AuditRecord>)>>),
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlStore::Redis { prefix, .. } => write!(f, "ControlStore::Redis({prefix})"),
            ControlStore::Memory(_) => write!(f, "ControlStore::Memory"),
        }
    }
}

/// The change script: KEYS controls, version, audit; ARGV region, entry JSON, audit JSON,
/// JSON list of regions that count as routable if their control allows (catalogue minus the
/// regions the instance sees down).
const APPLY_LUA: &str = r#"
local entry = cjson.decode(ARGV[2])
local candidates = cjson.decode(ARGV[4])
local routable = 0
for _, name in ipairs(candidates) do
  local state, weight
  if name == ARGV[1] then
    state = entry.state
    weight = entry.weight
  else
    local raw = redis.call('HGET', KEYS[1], name)
    if raw then
      local other = cjson.decode(raw)
      state = other.state
      weight = other.weight
    else
      state = 'active'
      weight = 1
    end
  end
  if state == 'active' and weight > 0 then
    routable = routable + 1
  end
end
if routable == 0 then
  return redis.error_reply('UNSAFE no region would be routable')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return version
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn store_error(e: impl std::fmt::Display) -> ControlError {
    ControlError::Store(e.to_string())
}

impl ControlStore {
    /// Controls in this process only.
    pub fn memory() -> ControlStore {
        ControlStore::Memory(std::sync::Arc::default())
    }

    /// Controls in the Redis at `url` under `prefix`; fails when Redis cannot be reached.
    pub async fn redis(url: &str, prefix: &str) -> Result<ControlStore, ControlError> {
        Self::redis_with_ca(url, prefix, None).await
    }

    /// As [`ControlStore::redis`]; with `ca_pem` a `rediss://` server must present a
    /// certificate from that CA bundle instead of one the platform store trusts.
    pub async fn redis_with_ca(
        url: &str,
        prefix: &str,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<ControlStore, ControlError> {
        let client = match ca_pem {
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
            None => redis::Client::open(url),
        }
        .map_err(store_error)?;
        let connection = ConnectionManager::new(client).await.map_err(store_error)?;
        Ok(ControlStore::Redis {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    fn keys(prefix: &str) -> [String; 3] {
        [
            format!("{prefix}:controls"),
            format!("{prefix}:controls:version"),
            format!("{prefix}:audit"),
        ]
    }

    /// The current version only (cheap; polled).
    pub async fn version(&self) -> Result<u64, ControlError> {
        match self {
            ControlStore::Redis { connection, prefix } => {
                let [_, version, _] = Self::keys(prefix);
                let mut connection = connection.clone();
                let version: Option<u64> = redis::cmd("GET")
                    .arg(version)
                    .query_async(&mut connection)
                    .await
                    .map_err(store_error)?;
                Ok(version.unwrap_or(0))
            }
            ControlStore::Memory(state) => Ok(state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .version),
        }
    }

    /// Every control. Entries that do not parse are skipped with a log line (a newer router's
    /// format, or a hand edit) rather than failing the whole load.
    pub async fn snapshot(&self) -> Result<ControlSnapshot, ControlError> {
        match self {
            ControlStore::Redis { connection, prefix } => {
                let [controls, version, _] = Self::keys(prefix);
                let mut connection = connection.clone();
                let (raw, version): (BTreeMap<String, String>, Option<u64>) = redis::pipe()
                    .atomic()
                    .cmd("HGETALL")
                    .arg(controls)
                    .cmd("GET")
                    .arg(version)
                    .query_async(&mut connection)
                    .await
                    .map_err(store_error)?;
                let mut entries = BTreeMap::new();
                for (region, json) in raw {
                    match serde_json::from_str::<ControlEntry>(&json) {
                        Ok(entry) => {
                            entries.insert(region, entry);
                        }
                        Err(e) => {
                            tracing::warn!(%region, error = %e, "skipping an unreadable control entry");
                        }
                    }
                }
                Ok(ControlSnapshot {
                    version: version.unwrap_or(0),
                    entries,
                })
            }
            ControlStore::Memory(state) => Ok(state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone()),
        }
    }

    /// Applies `change` when the safety rule allows. `catalogue` is every region name;
    /// `down` the regions this instance's health checks see down. Returns the audit record.
    pub async fn apply(
        &self,
        change: &ChangeRequest,
        catalogue: &[&str],
        down: &[&str],
    ) -> Result<AuditRecord, ControlError> {
        if !catalogue.contains(&change.region.as_str()) {
            return Err(ControlError::UnknownRegion(change.region.clone()));
        }
        if let Action::Weight(weight) = change.action {
            if !(weight.is_finite() && weight > 0.0 && weight <= 1.0) {
                return Err(ControlError::BadWeight(weight));
            }
        }
        let candidates: Vec<&str> = catalogue
            .iter()
            .copied()
            .filter(|name| !down.contains(name))
            .collect();
        let from = self.snapshot().await?.control(&change.region);
        let to = change.action.apply(from);
        let at_ms = now_ms();
        let entry = ControlEntry {
            state: to.state,
            weight: to.weight,
            actor: change.actor.clone(),
            at_ms,
            note: change.note.clone(),
            drill: change.drill,
        };
        let record = AuditRecord {
            at_ms,
            actor: change.actor.clone(),
            instance: change.instance.clone(),
            region: change.region.clone(),
            action: change.action.name().to_owned(),
            from,
            to,
            note: change.note.clone(),
            drill: change.drill,
        };
        match self {
            ControlStore::Redis { connection, prefix } => {
                let [controls, version, audit] = Self::keys(prefix);
                let mut connection = connection.clone();
                let result: redis::RedisResult<u64> = redis::Script::new(APPLY_LUA)
                    .key(controls)
                    .key(version)
                    .key(audit)
                    .arg(&change.region)
                    .arg(serde_json::to_string(&entry).map_err(store_error)?)
                    .arg(serde_json::to_string(&record).map_err(store_error)?)
                    .arg(serde_json::to_string(&candidates).map_err(store_error)?)
                    .arg(AUDIT_KEEP)
                    .invoke_async(&mut connection)
                    .await;
                match result {
                    Ok(_) => Ok(record),
                    Err(e) if e.code() == Some("UNSAFE") => Err(ControlError::Unsafe),
                    Err(e) => Err(store_error(e)),
                }
            }
            ControlStore::Memory(state) => {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                let routable = candidates.iter().any(|&name| {
                    let control = if name == change.region {
                        to
                    } else {
                        state.0.control(name)
                    };
                    control.state == ControlState::Active && control.weight > 0.0
                });
                if !routable {
                    return Err(ControlError::Unsafe);
                }
                state.0.entries.insert(change.region.clone(), entry);
                state.0.version += 1;
                state.1.insert(0, record.clone());
                state.1.truncate(AUDIT_KEEP as usize);
                Ok(record)
            }
        }
    }

    /// The newest `limit` audit records, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, ControlError> {
        match self {
            ControlStore::Redis { connection, prefix } => {
                let [_, _, audit] = Self::keys(prefix);
                let mut connection = connection.clone();
                let stop = isize::try_from(limit).unwrap_or(AUDIT_KEEP).max(1) - 1;
                let raw: Vec<String> = redis::cmd("LRANGE")
                    .arg(audit)
                    .arg(0)
                    .arg(stop)
                    .query_async(&mut connection)
                    .await
                    .map_err(store_error)?;
                Ok(raw
                    .iter()
                    .filter_map(|json| serde_json::from_str(json).ok())
                    .collect())
            }
            ControlStore::Memory(state) => Ok(state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .iter()
                .take(limit)
                .cloned()
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOGUE: [&str; 3] = ["ap-southeast", "eu-central", "us-east"];

    fn change(region: &str, action: Action) -> ChangeRequest {
        ChangeRequest {
            actor: "alice".into(),
            instance: "router-1".into(),
            region: region.into(),
            action,
            note: Some("test".into()),
            drill: false,
        }
    }

    async fn safety_rule_and_audit(store: ControlStore) {
        let record = store
            .apply(&change("eu-central", Action::Drain), &CATALOGUE, &[])
            .await
            .unwrap();
        assert_eq!(record.from, Control::ACTIVE);
        assert_eq!(record.to.state, ControlState::Drained);
        let snapshot = store.snapshot().await.unwrap();
        assert_eq!(snapshot.version, 1);
        assert_eq!(snapshot.control("eu-central").state, ControlState::Drained);
        assert_eq!(snapshot.entries["eu-central"].actor, "alice");
        assert_eq!(store.version().await.unwrap(), 1);

        store
            .apply(&change("us-east", Action::Disable), &CATALOGUE, &[])
            .await
            .unwrap();
        // ap-southeast is the last routable region: draining it is refused, and so is any
        // change that leaves only a region this instance sees down.
        let refused = store
            .apply(&change("ap-southeast", Action::Drain), &CATALOGUE, &[])
            .await;
        assert!(matches!(refused, Err(ControlError::Unsafe)), "{refused:?}");
        let refused = store
            .apply(
                &change("us-east", Action::Weight(0.5)),
                &CATALOGUE,
                &["ap-southeast"],
            )
            .await;
        assert!(matches!(refused, Err(ControlError::Unsafe)), "{refused:?}");
        // Undrain brings eu-central back; now ap-southeast can go.
        store
            .apply(&change("eu-central", Action::Undrain), &CATALOGUE, &[])
            .await
            .unwrap();
        store
            .apply(&change("ap-southeast", Action::Drain), &CATALOGUE, &[])
            .await
            .unwrap();

        assert!(matches!(
            store
                .apply(&change("mars", Action::Drain), &CATALOGUE, &[])
                .await,
            Err(ControlError::UnknownRegion(_))
        ));
        for weight in [0.0, -1.0, 1.5, f64::NAN] {
            assert!(matches!(
                store
                    .apply(
                        &change("eu-central", Action::Weight(weight)),
                        &CATALOGUE,
                        &[]
                    )
                    .await,
                Err(ControlError::BadWeight(_))
            ));
        }
        let weighted = store
            .apply(&change("eu-central", Action::Weight(0.25)), &CATALOGUE, &[])
            .await
            .unwrap();
        assert_eq!(weighted.to.weight, 0.25);

        let audit = store.audit(100).await.unwrap();
        let actions: Vec<(&str, &str)> = audit
            .iter()
            .map(|r| (r.region.as_str(), r.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("eu-central", "weight"),
                ("ap-southeast", "drain"),
                ("eu-central", "undrain"),
                ("us-east", "disable"),
                ("eu-central", "drain"),
            ],
            "refused changes are not audited"
        );
        assert!(audit.iter().all(|r| r.actor == "alice" && r.at_ms > 0));
        assert_eq!(store.audit(2).await.unwrap().len(), 2);
        assert_eq!(store.snapshot().await.unwrap().version, 5);
    }

    #[tokio::test]
    async fn memory_store_keeps_the_safety_rule_and_the_audit_log() {
        safety_rule_and_audit(ControlStore::memory()).await;
    }

    #[tokio::test]
    async fn redis_store_keeps_the_safety_rule_and_the_audit_log() {
        let server = region_state::testing::RedisServer::start().unwrap();
        let store = ControlStore::redis(&server.url(), "test").await.unwrap();
        safety_rule_and_audit(store).await;
    }

    #[tokio::test]
    async fn redis_store_skips_unreadable_entries_and_shares_between_instances() {
        let server = region_state::testing::RedisServer::start().unwrap();
        let one = ControlStore::redis(&server.url(), "shared").await.unwrap();
        let two = ControlStore::redis(&server.url(), "shared").await.unwrap();
        one.apply(&change("us-east", Action::Drain), &CATALOGUE, &[])
            .await
            .unwrap();
        assert_eq!(
            two.snapshot().await.unwrap().control("us-east").state,
            ControlState::Drained
        );
        let client = redis::Client::open(server.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg("shared:controls")
            .arg("eu-central")
            .arg("{not json")
            .query_async(&mut connection)
            .await
            .unwrap();
        let snapshot = two.snapshot().await.unwrap();
        assert_eq!(snapshot.entries.len(), 1);
        assert_eq!(snapshot.control("eu-central"), Control::ACTIVE);
    }

    /// The ACL rules `deploy/bin/meridian-fetch-secrets` gives the routers' user on the control
    /// store that terraform deploys (read from the script, so the two cannot drift apart).
    fn deployed_acl_rules() -> Vec<String> {
        let script = include_str!("../../../deploy/bin/meridian-fetch-secrets");
        let line = script
            .lines()
            .find(|l| l.contains("user default off"))
            .expect("the router-controls ACL line");
        let rules = line
            .split("on >%s ")
            .nth(1)
            .and_then(|rest| rest.split("\\n'").next())
            .expect("rules after the password");
        rules.split(' ').map(str::to_owned).collect()
    }

    /// A control store as terraform deploys it: TLS only for the client (certificate from a
    /// private CA), AUTH as the deployed ACL user; the router connects with `controls.ca_file`.
    #[tokio::test]
    async fn redis_store_over_tls_with_a_private_ca_and_the_deployed_acl() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!(
            "geo-router-controls-tls-{}-{}",
            std::process::id(),
            super::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test mesh CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();

        let tls_port = region_state::testing::free_port().unwrap().to_string();
        let mut args: Vec<String> = [
            "--tls-port",
            tls_port.as_str(),
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--user",
            "meridian-router",
            "on",
            ">router-password-0123456789",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(deployed_acl_rules());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _server = region_state::testing::RedisServer::start_with_args(&args).unwrap();
        let url =
            format!("rediss://meridian-router:router-password-0123456789@localhost:{tls_port}/");

        // The platform store does not know the private CA: refused.
        // (One connection attempt: ControlStore::redis would retry with backoff for seconds.)
        let platform_only = redis::Client::open(url.as_str()).unwrap();
        assert!(platform_only
            .get_multiplexed_async_connection()
            .await
            .is_err());
        let store =
            ControlStore::redis_with_ca(&url, "meridian:router", Some(ca_pem.clone().into_bytes()))
                .await
                .unwrap();
        safety_rule_and_audit(store).await;
        // Keys outside the routers' prefix are not theirs.
        let outside = ControlStore::redis_with_ca(&url, "other", Some(ca_pem.into_bytes()))
            .await
            .unwrap();
        assert!(outside.snapshot().await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
