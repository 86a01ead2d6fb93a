//! Certificates of the relay mesh: a mesh CA and one certificate per region.
//!
//! **Naming scheme.** A region's certificate carries exactly one subject alternative name, the
//! DNS name `<region>.relay.meridian` (see [`region_dns_name`]); its common name is the region
//! name, for humans only. Peers identify each other by that SAN and nothing else: a relay
//! dials region `eu-central` with the TLS server name `eu-central.relay.meridian`, and an
//! accepting relay finds the dialer's region by matching the SAN against the catalogue. The
//! suffix is not a real DNS zone and never resolves; it only namespaces the identities.
//!
//! The dev CA ([`DevCa`]) is name-constrained to `relay.meridian`, so even a leaked dev CA key
//! cannot mint certificates for other names. Certificates carry both the `serverAuth` and the
//! `clientAuth` extended key usage because every relay is TLS server and client at once.
//!
//! [`generate_dev_mesh`] writes a CA and every region's certificate as PEM files (the files the
//! relay config's `tls` section points at); `interregion-relay gen-certs` and, later, `meridian
//! certs` call it. Production deployments bring their own CA and keys in the same layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};

/// Parent domain of every region identity: `<region>.relay.meridian`.
pub const SAN_SUFFIX: &str = "relay.meridian";

/// File name of the mesh CA certificate inside a generated directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the mesh CA private key inside a generated directory (keep it offline).
pub const CA_KEY_FILE: &str = "ca.key.pem";

/// The TLS identity name of `region`: `<region>.relay.meridian`.
pub fn region_dns_name(region: &str) -> String {
    format!("{region}.{SAN_SUFFIX}")
}

/// File name of `region`'s certificate inside a generated directory.
pub fn region_cert_file(region: &str) -> String {
    format!("{region}.cert.pem")
}

/// File name of `region`'s private key inside a generated directory.
pub fn region_key_file(region: &str) -> String {
    format!("{region}.key.pem")
}

/// Errors while making or writing certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign (a bug or an unusable region name).
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The region name cannot be a DNS label.
    #[error("region {0:?} cannot be used in a certificate: use 1-32 of a-z 0-9 -")]
    BadRegion(String),
    /// A file could not be written (or exists and overwriting was not asked for).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A region name usable as a DNS label (the catalogue's own rule).
pub fn valid_region_name(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && !region.starts_with('-')
        && !region.ends_with('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

/// A freshly generated development mesh CA that can issue region certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

impl DevCa {
    /// Generates a new CA key and self-signed certificate with the common name `name`,
    /// constrained to names under [`SAN_SUFFIX`].
    pub fn generate(name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Meridian");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(SAN_SUFFIX.into())],
            excluded_subtrees: Vec::new(),
        });
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (what every relay trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues `region`'s certificate (SAN `<region>.relay.meridian`) with a fresh key.
    pub fn issue(&self, region: &str) -> Result<IssuedCert, CertError> {
        if !valid_region_name(region) {
            return Err(CertError::BadRegion(region.into()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![region_dns_name(region)])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, region);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Paths of the files [`generate_dev_mesh`] wrote.
#[derive(Debug, Clone)]
pub struct MeshFiles {
    /// The CA certificate (`tls.ca` of every relay).
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// Per region: (certificate, key), i.e. `tls.cert` and `tls.key`.
    pub regions: BTreeMap<String, (PathBuf, PathBuf)>,
}

/// One line for the CA, then one per region (what `interregion-relay gen-certs` prints).
impl std::fmt::Display for MeshFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "mesh CA: {}", self.ca_cert.display())?;
        for (region, (cert, key)) in &self.regions {
            writeln!(f, "{region}: cert {} key {}", cert.display(), key.display())?;
        }
        Ok(())
    }
}

/// Generates a new dev mesh CA and a certificate for each of `regions`, and writes them to
/// `out` (created if missing): `ca.pem`, `ca.key.pem`, `<region>.cert.pem`, `<region>.key.pem`.
/// Keys are written with mode 0600. Existing files are replaced only when `overwrite` is set,
/// since replacing the CA invalidates every certificate issued before.
pub fn generate_dev_mesh<'a>(
    regions: impl IntoIterator<Item = &'a str>,
    out: &Path,
    overwrite: bool,
) -> Result<MeshFiles, CertError> {
    let io = |path: &Path, source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let regions: Vec<&str> = regions.into_iter().collect();
    if let Some(bad) = regions.iter().find(|r| !valid_region_name(r)) {
        return Err(CertError::BadRegion((*bad).into()));
    }
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let ca = DevCa::generate("Meridian dev mesh CA")?;
    let mut files = MeshFiles {
        ca_cert: out.join(CA_CERT_FILE),
        ca_key: out.join(CA_KEY_FILE),
        regions: BTreeMap::new(),
    };
    let mut writes: Vec<(PathBuf, String, bool)> = vec![
        (files.ca_cert.clone(), ca.cert_pem().to_owned(), false),
        (files.ca_key.clone(), ca.key_pem(), true),
    ];
    for region in regions {
        let issued = ca.issue(region)?;
        let cert = out.join(region_cert_file(region));
        let key = out.join(region_key_file(region));
        writes.push((cert.clone(), issued.cert_pem, false));
        writes.push((key.clone(), issued.key_pem, true));
        files.regions.insert(region.to_owned(), (cert, key));
    }
    if !overwrite {
        if let Some((path, _, _)) = writes.iter().find(|(p, _, _)| p.exists()) {
            return Err(io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; pass --force to replace the whole mesh (the old CA stops being trusted)",
                ),
            ));
        }
    }
    for (path, text, secret) in writes {
        write_file(&path, &text, secret).map_err(|e| io(&path, e))?;
    }
    Ok(files)
}

fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        assert_eq!(region_dns_name("us-east"), "us-east.relay.meridian");
        assert!(valid_region_name("eu-central"));
        assert!(!valid_region_name("EU"));
        assert!(!valid_region_name("-x"));
        assert!(!valid_region_name(""));
    }

    #[test]
    fn dev_mesh_is_written_and_not_silently_replaced() {
        let dir = std::env::temp_dir().join(format!("relay-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = generate_dev_mesh(["us-east", "eu-central"], &dir, false).unwrap();
        assert!(files.ca_cert.exists());
        let (cert, key) = &files.regions["us-east"];
        assert!(std::fs::read_to_string(cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = generate_dev_mesh(["us-east"], &dir, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        generate_dev_mesh(["us-east"], &dir, true).unwrap();
        assert!(matches!(
            generate_dev_mesh(["Bad_Name"], &dir, true),
            Err(CertError::BadRegion(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
