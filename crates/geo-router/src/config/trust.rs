//! The trust roots of `https://` health probes, from the config: the platform's store and the
//! PEM bundle `health.ca_file` (whose reader also checks `controls.ca_file` at validation). The
//! prober itself (`crate::probe`) is given the roots and never reads the config.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::HealthConfig;

impl HealthConfig {
    /// The trust roots of `https://` health probes: the platform's store (read now) when
    /// `platform_roots`, plus the certificates of `ca_file`.
    pub fn trust_roots(&self) -> Result<RootCertStore, CaFileError> {
        let mut roots = RootCertStore::empty();
        if self.platform_roots {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "some platform trust roots could not be read");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "platform trust roots for health probes");
        }
        if let Some(path) = &self.ca_file {
            // read_ca_file has checked that each one is usable as a trust anchor.
            roots.add_parsable_certificates(read_ca_file(path)?);
        }
        if roots.is_empty() {
            tracing::warn!(
                "no trusted CA for health probes (platform store empty, no health.ca_file): \
                 every https:// probe will fail"
            );
        }
        Ok(roots)
    }
}

/// `health.ca_file` (or `controls.ca_file`) is unreadable, not PEM, empty, or holds a
/// certificate rustls cannot use as a trust anchor. Retrying does not help until the file is
/// fixed.
#[derive(Debug, thiserror::Error)]
#[error("health.ca_file = {path:?}: {reason}")]
pub struct CaFileError {
    /// The configured path.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads a PEM bundle of CA certificates; at least one `CERTIFICATE` block is required.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let fail = |reason: String| CaFileError {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM CERTIFICATE block".into()));
    }
    let mut store = RootCertStore::empty();
    for (n, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| {
            fail(format!(
                "certificate #{} is not usable as a trust anchor: {e}",
                n + 1
            ))
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_or_empty_ca_file_is_named() {
        let missing = read_ca_file(Path::new("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("health.ca_file") && missing.contains("cannot read"),
            "{missing}"
        );
        let dir = std::env::temp_dir().join(format!("geo-router-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let error = read_ca_file(&empty).unwrap_err().to_string();
        assert!(error.contains("no PEM CERTIFICATE"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
