//! TLS for the jobs listener: TLS 1.3 only (its AEAD suites), a client certificate required
//! and verified against the client CA, and the client's identity read from that certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::version::TLS13;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::principal::{Role, valid_user};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// Who a verified client certificate names: its Common Name, and `admin` if its subject has
/// an organisational unit `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub user: String,
    pub role: Role,
}

/// Makes ring the process's default rustls provider (once; later calls do nothing). The HTTP
/// client builds its TLS from the process default, and would panic without one.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    // ring's TLS 1.3 suites are all AEAD (AES-GCM, ChaCha20-Poly1305).
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The jobs listener's TLS: TLS 1.3 only, a client certificate signed by `client_ca`
/// required, HTTP/1.1.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)?), provider.clone())
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: TLS 1.3 only, trusting `ca`, presenting `cert` and `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certificates(cert)?, private_key(key)?)
        .map_err(|error| TlsError::Config(error.to_string()))
}

/// The identity in a verified peer certificate chain (its first certificate).
pub fn identity_of(chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
    let (_, cert) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    if !valid_user(&user) {
        return None;
    }
    let admin = subject
        .iter_organizational_unit()
        .any(|unit| unit.as_str() == Ok("admin"));
    Some(ClientIdentity {
        user,
        role: if admin { Role::Admin } else { Role::User },
    })
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|error| TlsError::Config(format!("{}: {error}", ca.display())))?;
    }
    Ok(roots)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| read_error(path, &error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read_error(path, &error))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The key's bytes never reach the error: only the path and the kind of failure.
    PrivateKeyDer::from_pem_file(path).map_err(|error| read_error(path, &error))
}

fn read_error(path: &Path, error: &rustls::pki_types::pem::Error) -> TlsError {
    let reason = match error {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        _ => "not valid PEM".into(),
    };
    TlsError::Read {
        path: path.to_path_buf(),
        reason,
    }
}
