//! Mutual TLS for relay links (rustls 0.23, ring provider, TLS 1.3 only as QUIC requires).
//!
//! Both directions check two things: the peer's certificate chains to the mesh CA (rustls'
//! webpki verifiers do that), and the region the certificate names
//! (`<region>.relay.meridian`, see [`crate::certs`]) is in the catalogue. A dialer additionally
//! gets the name check for free: it dials `<peer>.relay.meridian` and webpki verifies the
//! server's SAN against it. An accepting relay learns the dialer's region with
//! [`region_of_cert`]; the link layer then checks it against the `Hello` and the dial rule.
//!
//! The ALPN id is the protocol version ([`meridian_protocol::relay::ALPN`]). A server with no common id
//! fails the handshake with the `no_application_protocol` alert (QUIC error 0x178); the
//! server's certificate resolver sees the ids the client offered first and reports them, so the
//! refusal is logged with both versions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::certs::{region_dns_name, SAN_SUFFIX};
use meridian_protocol::relay::ALPN;

/// Errors loading or assembling the TLS configuration (all at start-up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("{path}: {message}")]
    Pem {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls rejected the configuration (bad key, CA unusable as a trust anchor, ...).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// Our own certificate does not carry our region's name.
    #[error("the certificate does not name region {region:?} (expected SAN {expected})")]
    WrongIdentity {
        /// The configured region.
        region: String,
        /// The SAN it should carry.
        expected: String,
    },
}

/// Why a peer was refused during the handshake, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The certificate does not chain to the mesh CA (or is expired, or missing).
    UntrustedCertificate,
    /// The certificate chains to the CA but names no catalogue region.
    UnknownRegion,
    /// No common relay protocol version (ALPN).
    ProtocolVersion,
}

impl Refusal {
    /// Label value for `meridian_relay_refused_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UntrustedCertificate => "certificate",
            Refusal::UnknownRegion => "unknown_region",
            Refusal::ProtocolVersion => "protocol_version",
        }
    }
}

/// Called when the TLS layer refuses a peer, with a one-line explanation.
pub type RefusalHook = Arc<dyn Fn(Refusal, &str) + Send + Sync>;

/// The crypto provider every relay config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the PEM files are (the config's `tls` section).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The mesh CA certificate(s) to trust.
    pub ca: PathBuf,
    /// This region's certificate (chain, leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A relay's TLS identity: trusted CA, own chain and key.
pub struct TlsIdentity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca", &self.ca.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

impl TlsIdentity {
    /// From PEM text (tests and `meridian up` keep certificates in memory).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let memory = Path::new("<memory>");
        Ok(Self {
            ca: certs_from_pem(ca_pem.as_bytes(), memory)?,
            chain: certs_from_pem(cert_pem.as_bytes(), memory)?,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
                path: memory.to_owned(),
                message: e.to_string(),
            })?,
        })
    }

    /// Reads the three PEM files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                message: e.to_string(),
            })
        };
        Ok(Self {
            ca: certs_from_pem(&read(&files.ca)?, &files.ca)?,
            chain: certs_from_pem(&read(&files.cert)?, &files.cert)?,
            key: PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Pem {
                path: files.key.clone(),
                message: e.to_string(),
            })?,
        })
    }

    /// Checks that the own certificate names `region` (catches swapped files at start-up).
    pub fn check_region(&self, region: &str) -> Result<(), TlsError> {
        let wrong = || TlsError::WrongIdentity {
            region: region.into(),
            expected: region_dns_name(region),
        };
        let leaf = self.chain.first().ok_or_else(wrong)?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(|_| wrong())?;
        let name = ServerName::try_from(region_dns_name(region)).map_err(|_| wrong())?;
        rustls::client::verify_server_name(&parsed, &name).map_err(|_| wrong())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| TlsError::Rustls(format!("mesh CA: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
            .map(Arc::new)
            .map_err(|e| TlsError::Rustls(format!("own certificate and key: {e}")))
    }
}

/// The region named by a certificate, if exactly one catalogue region matches its SANs.
pub fn region_of_cert(cert: &CertificateDer<'_>, regions: &BTreeSet<String>) -> Option<String> {
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    let mut found = regions.iter().filter(|r| {
        ServerName::try_from(region_dns_name(r))
            .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
    });
    match (found.next(), found.next()) {
        (Some(region), None) => Some(region.clone()),
        _ => None,
    }
}

/// The region of a connected peer, from the certificate it presented.
pub fn peer_region(conn: &quinn::Connection, regions: &BTreeSet<String>) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    region_of_cert(chain.first()?, regions)
}

/// The region in a TLS server name `<region>.relay.meridian`.
pub fn region_of_dns_name(name: &str) -> Option<&str> {
    name.strip_suffix(SAN_SUFFIX)?.strip_suffix('.')
}

/// Accepting side: webpki chain check, then the catalogue check.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    regions: Arc<BTreeSet<String>>,
    hook: HookDebug,
}

struct HookDebug(RefusalHook);

impl std::fmt::Debug for HookDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalHook")
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                (self.hook.0)(
                    Refusal::UntrustedCertificate,
                    &format!("peer certificate is not from the mesh CA: {e}"),
                )
            })?;
        if region_of_cert(end_entity, &self.regions).is_none() {
            (self.hook.0)(
                Refusal::UnknownRegion,
                &format!(
                    "peer certificate chains to the mesh CA but names no catalogue region \
                     (expected SAN <region>.{SAN_SUFFIX} for one of {:?})",
                    self.regions
                ),
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Dialing side: webpki (chain and SAN = the name dialed), then the catalogue check.
#[derive(Debug)]
struct MeshServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    regions: Arc<BTreeSet<String>>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let known = match server_name {
            ServerName::DnsName(name) => {
                region_of_dns_name(name.as_ref()).is_some_and(|r| self.regions.contains(r))
            }
            _ => false,
        };
        if !known {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Serves the own certificate, and reports a client that offers none of our ALPN ids (rustls
/// then fails the handshake with `no_application_protocol`).
#[derive(Debug)]
struct AlpnCheckingResolver {
    key: Arc<CertifiedKey>,
    alpn: Vec<Vec<u8>>,
    hook: HookDebug,
}

impl ResolvesServerCert for AlpnCheckingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered: Vec<String> = hello
            .alpn()
            .map(|ids| {
                ids.map(|id| String::from_utf8_lossy(id).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !self
            .alpn
            .iter()
            .any(|ours| offered.iter().any(|o| o.as_bytes() == ours.as_slice()))
        {
            let ours: Vec<String> = self
                .alpn
                .iter()
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .collect();
            (self.hook.0)(
                Refusal::ProtocolVersion,
                &format!(
                    "relay protocol version mismatch: peer offers {offered:?}, we speak {ours:?}; \
                     upgrade one side"
                ),
            );
        }
        Some(self.key.clone())
    }
}

/// The accepting side's rustls config: mandatory client certificates from the mesh CA naming a
/// catalogue region, ALPN [`ALPN`].
pub fn server_config(
    identity: &TlsIdentity,
    regions: Arc<BTreeSet<String>>,
    hook: RefusalHook,
) -> Result<rustls::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider())
        .build()
        .map_err(|e| TlsError::Rustls(format!("client verifier: {e}")))?;
    let verifier = Arc::new(MeshClientVerifier {
        inner,
        regions,
        hook: HookDebug(hook.clone()),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlpnCheckingResolver {
            key: identity.certified_key()?,
            alpn: vec![ALPN.to_vec()],
            hook: HookDebug(hook),
        }));
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT on relay links: early data is replayable, and 0.5-RTT data would leave before
    // the peer's certificate is checked.
    config.max_early_data_size = 0;
    Ok(config)
}

/// The dialing side's rustls config, offering `alpn` (normally [`ALPN`]; tests offer others).
pub fn client_config(
    identity: &TlsIdentity,
    regions: Arc<BTreeSet<String>>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(identity.roots()?, provider())
        .build()
        .map_err(|e| TlsError::Rustls(format!("server verifier: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier { inner, regions }))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Rustls(format!("own certificate and key: {e}")))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevCa;

    #[test]
    fn region_is_read_from_the_san() {
        let ca = DevCa::generate("test CA").unwrap();
        let issued = ca.issue("us-east").unwrap();
        let id = TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
        id.check_region("us-east").unwrap();
        assert!(id.check_region("eu-central").is_err());
        let regions: BTreeSet<String> = ["us-east", "eu-central", "us"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            region_of_cert(&id.chain[0], &regions).as_deref(),
            Some("us-east")
        );
        let others: BTreeSet<String> = ["eu-central".to_string()].into();
        assert_eq!(region_of_cert(&id.chain[0], &others), None);
        assert_eq!(
            region_of_dns_name("us-east.relay.meridian"),
            Some("us-east")
        );
        assert_eq!(region_of_dns_name("us-east.example"), None);
        assert!(TlsIdentity::from_pem("nope", "nope", "nope").is_err());
    }
}
