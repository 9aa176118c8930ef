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

/// Who a verified client certificate names: its one Common Name, and `admin` exactly when its
/// subject's one and only organisational unit is `admin`.
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

/// The identity in a verified peer certificate chain (its first certificate); `None`, and so
/// a refused connection, unless its subject has exactly one Common Name and that is a valid
/// user name.
///
/// The rules are exact so that a certificate means one thing: a subject with two Common
/// Names names no one (which of them would own its jobs?), and only a subject whose sole
/// organisational unit is `admin` is an admin. A subject with several units (`OU=staff`,
/// `OU=admin`) is a plain user: a CA that lists a person's departments did not necessarily
/// mean any one of them as a grant of warden's admin role, and a plain user loses nothing
/// but other people's jobs, where refusing it would lock its holder out.
pub fn identity_of(chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
    let (_, cert) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
    let subject = cert.subject();
    let mut common_names = subject.iter_common_name();
    let user = common_names.next()?.as_str().ok()?.to_owned();
    if common_names.next().is_some() || !valid_user(&user) {
        return None;
    }
    let mut units = subject.iter_organizational_unit();
    let admin = match (units.next(), units.next()) {
        (Some(only), None) => only.as_str() == Ok("admin"),
        _ => false,
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    const COMMON_NAME: [u64; 4] = [2, 5, 4, 3];
    const UNIT: [u64; 4] = [2, 5, 4, 11];

    /// The identity of a self-signed certificate whose subject has `attributes` in order.
    /// (rcgen keeps one value per attribute type, so a repeated one goes in by its OID.)
    fn identity(attributes: &[(&[u64], &str)]) -> Option<ClientIdentity> {
        let mut params = CertificateParams::default();
        let mut seen = Vec::new();
        for &(oid, value) in attributes {
            let kind = match oid {
                _ if seen.contains(&oid) => DnType::CustomDnType(oid.to_vec()),
                [2, 5, 4, 3] => DnType::CommonName,
                _ => DnType::OrganizationalUnitName,
            };
            seen.push(oid);
            params.distinguished_name.push(kind, value);
        }
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        identity_of(&[cert.der().clone()])
    }

    fn user(name: &str, role: Role) -> Option<ClientIdentity> {
        Some(ClientIdentity {
            user: name.to_owned(),
            role,
        })
    }

    #[test]
    fn the_user_is_the_one_common_name() {
        assert_eq!(
            identity(&[(&COMMON_NAME, "alice")]),
            user("alice", Role::User)
        );
        assert_eq!(identity(&[(&UNIT, "admin")]), None, "no Common Name");
        assert_eq!(
            identity(&[(&COMMON_NAME, "alice"), (&COMMON_NAME, "admin")]),
            None,
            "two Common Names name no one"
        );
        assert_eq!(identity(&[(&COMMON_NAME, "not a user!")]), None);
    }

    #[test]
    fn only_a_sole_admin_unit_makes_an_admin() {
        let cn = (&COMMON_NAME[..], "carol");
        assert_eq!(
            identity(&[cn, (&UNIT, "admin")]),
            user("carol", Role::Admin)
        );
        assert_eq!(identity(&[cn, (&UNIT, "staff")]), user("carol", Role::User));
        assert_eq!(identity(&[cn, (&UNIT, "Admin")]), user("carol", Role::User));
        for units in [["staff", "admin"], ["admin", "staff"], ["admin", "admin"]] {
            assert_eq!(
                identity(&[cn, (&UNIT, units[0]), (&UNIT, units[1])]),
                user("carol", Role::User),
                "{units:?}"
            );
        }
    }
}
