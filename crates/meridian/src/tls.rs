//! TLS for the local mesh and its clients: `meridian up --tls` makes a dev web CA and one
//! certificate for `localhost`, `127.0.0.1` and `::1` that each region's HAProxy serves, so
//! clients use `wss://` and `https://`. Every WebSocket the CLI opens (`chat`, `members`, …, the
//! drill's clients) is a `meridian-client` connection whose TLS config is [`client_config`]: the
//! platform's roots plus the CA named by [`trust_ca`] (`--ca`, `MERIDIAN_CA`, or `tls_ca` in a mesh's `endpoints.json`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The dev web certificates of one mesh.
#[derive(Debug, Clone)]
pub struct WebCerts {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// Certificate and key in one file, as HAProxy's `crt` wants it.
    pub haproxy_pem: PathBuf,
}

/// Writes a fresh dev web CA (`web-ca.pem`) and a server certificate for `localhost`,
/// `127.0.0.1` and `::1` (`web-server.pem`: certificate then key) into `dir`.
pub fn generate_web_certs(dir: &Path) -> Result<WebCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "Meridian local dev CA (meridian up --tls)",
    );
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "Meridian");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;

    let files = WebCerts {
        ca: dir.join("web-ca.pem"),
        haproxy_pem: dir.join("web-server.pem"),
    };
    std::fs::write(&files.ca, ca_cert.pem())
        .with_context(|| format!("write {}", files.ca.display()))?;
    write_secret(
        &files.haproxy_pem,
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(files)
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The extra CA to trust, and the client configuration built from it (once).
static TRUST: Mutex<(Option<PathBuf>, Option<Arc<rustls::ClientConfig>>)> =
    Mutex::new((None, None));

/// Trusts `ca` (a PEM bundle) besides the platform's roots for every later connection.
pub fn trust_ca(ca: &Path) -> Result<()> {
    load_certs(ca)?;
    let mut trust = TRUST.lock().unwrap_or_else(PoisonError::into_inner);
    *trust = (Some(ca.to_owned()), None);
    Ok(())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read the CA {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The client TLS configuration: the platform roots plus the CA given to [`trust_ca`].
pub fn client_config() -> Result<Arc<rustls::ClientConfig>> {
    let mut trust = TRUST.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(config) = &trust.1 {
        return Ok(Arc::clone(config));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &trust.0 {
        for cert in load_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| anyhow!("{}: not usable as a trust anchor: {e}", ca.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = Arc::new(config);
    trust.1 = Some(Arc::clone(&config));
    Ok(config)
}

/// A blocking HTTPS GET (for `up`'s readiness checks through a TLS balancer), trusting the
/// platform roots and the CA given to [`trust_ca`]: (status, body).
pub fn https_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let config = rustls::ClientConfig::clone(&*client_config()?);
    crate::procs::blocking_get(&format!("https://{addr}{path}"), Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `meridian-client` connection with the CLI's TLS config (as every CLI client opens one).
    async fn connect_ws(url: &str) -> Result<meridian_client::Connection> {
        let options = meridian_client::ConnectOptions {
            tls: Some(client_config()?),
            ..meridian_client::ConnectOptions::default()
        };
        Ok(meridian_client::Connection::connect_with(url, &options).await?)
    }

    #[tokio::test]
    async fn a_wss_server_with_the_dev_certificate_is_trusted_through_the_dev_ca() {
        let dir = std::env::temp_dir().join(format!("meridian-tls-test-{}", std::process::id()));
        let certs = generate_web_certs(&dir).unwrap();
        let pem = std::fs::read(&certs.haproxy_pem).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = tokio_tungstenite::accept_async(tls).await;
                    }
                });
            }
        });
        let url = format!("wss://127.0.0.1:{}/v1/ws", addr.port());
        // Without the CA: refused (the certificate is not trusted).
        assert!(connect_ws(&url).await.is_err());
        trust_ca(&certs.ca).unwrap();
        assert!(connect_ws(&url).await.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
