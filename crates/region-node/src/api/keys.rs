//! The API keys a node accepts: those of the config plus those of `api.keys_file`, which is
//! re-read when its modification time changes, so a key is rotated without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiConfig, ApiKey};

/// How often `api.keys_file` is checked for changes: a rotated key works (and a removed key
/// stops working) within this plus the time to read the file.
pub const KEYS_FILE_POLL: Duration = Duration::from_secs(1);

/// The layout of `api.keys_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

/// The keys in force.
#[derive(Debug)]
pub struct KeySet {
    fixed: Vec<ApiKey>,
    file: Option<PathBuf>,
    current: RwLock<Arc<Vec<ApiKey>>>,
}

/// Reads and validates a keys file.
pub fn read_keys_file(path: &Path) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("api.keys_file {}: {e}", path.display()))?;
    let parsed: KeysFile =
        toml::from_str(&text).map_err(|e| format!("api.keys_file {}: {e}", path.display()))?;
    for key in &parsed.keys {
        key.validate()?;
    }
    Ok(parsed.keys)
}

impl KeySet {
    /// The config's keys, plus the keys file's when there is one (it must be readable now).
    pub fn new(config: &ApiConfig) -> Result<Self, String> {
        let set = Self {
            fixed: config.keys.clone(),
            file: config.keys_file.clone(),
            current: RwLock::new(Arc::new(config.keys.clone())),
        };
        if let Some(path) = &set.file {
            set.install(read_keys_file(path)?);
        }
        Ok(set)
    }

    fn install(&self, from_file: Vec<ApiKey>) {
        let mut all = self.fixed.clone();
        all.extend(from_file);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
    }

    /// The key whose secret is `presented`. Every key's secret is compared in constant time
    /// (and all of them are compared), so timing reveals neither a secret nor which key
    /// matched.
    pub fn find(&self, presented: &str) -> Option<ApiKey> {
        let keys = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut found = None;
        for key in keys.iter() {
            let same: bool = key.secret.as_bytes().ct_eq(presented.as_bytes()).into();
            if same && found.is_none() {
                found = Some(key.clone());
            }
        }
        found
    }

    /// Re-reads the keys file whenever its modification time changes, until `stop`. A file
    /// that cannot be read or parsed keeps the keys in force (and is logged).
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = mtime(&path);
        let mut tick = tokio::time::interval(KEYS_FILE_POLL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = mtime(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match read_keys_file(&path) {
                Ok(keys) => {
                    tracing::info!(file = %path.display(), keys = keys.len(), "API keys reloaded");
                    self.install(keys);
                }
                Err(e) => tracing::warn!(error = %e, "keeping the API keys in force"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, secret: &str) -> ApiKey {
        ApiKey {
            name: name.into(),
            secret: secret.into(),
            scopes: vec!["read".into()],
            from: "server".into(),
        }
    }

    #[test]
    fn finds_only_the_exact_secret() {
        let set = KeySet::new(&ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            keys: vec![key("a", "aaaaaaaaaaaaaaaa"), key("b", "bbbbbbbbbbbbbbbb")],
            keys_file: None,
            max_body_bytes: 1024,
        })
        .unwrap();
        assert_eq!(set.find("bbbbbbbbbbbbbbbb").unwrap().name, "b");
        assert!(set.find("bbbbbbbbbbbbbbb").is_none());
        assert!(set.find("").is_none());
        assert!(set.find("bbbbbbbbbbbbbbbbb").is_none());
    }

    #[test]
    fn a_bad_keys_file_is_explained() {
        let dir = std::env::temp_dir().join(format!("meridian-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(
            &path,
            "[[keys]]\nname = \"x\"\nsecret = \"short\"\nscopes = []\n",
        )
        .unwrap();
        assert!(read_keys_file(&path).unwrap_err().contains("16 bytes"));
        std::fs::write(&path, "[[keys]]\nnom = \"x\"\n").unwrap();
        assert!(read_keys_file(&path).is_err());
        assert!(read_keys_file(&dir.join("absent.toml")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
