//! The development PKI: a CA, a server certificate and client certificates, made with rcgen
//! (nothing shells out to openssl) in `data/pki/`.
//!
//! ```text
//! data/pki/            0700
//!   ca.pem, ca.key     the CA (key 0600); it signs the server and every client
//!   server.pem/.key    for localhost, 127.0.0.1 and ::1
//!   clients/           0700
//!     admin.pem/.key   CN=admin, OU=admin
//!     NAME.pem/.key    from `warden pki issue-client NAME [--admin]`
//! ```
//!
//! A client's user is its certificate's one Common Name; it is an admin iff `admin` is its
//! subject's only organisational unit (see [`super::tls::identity_of`]). The dev PKI is for
//! one machine: its CA key sits beside the database, so anyone who can read the data
//! directory can mint certificates.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Why the PKI could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    BadName(String),
}

/// Where the dev PKI's files are.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

/// A certificate and its key, as file paths.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevPki {
    /// The dev PKI of `data_dir` (`data_dir/pki`), whether or not it exists yet.
    pub fn of(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("pki"),
        }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate and key.
    pub fn server(&self) -> CertFiles {
        CertFiles {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server.key"),
        }
    }

    /// Client `name`'s certificate and key.
    pub fn client(&self, name: &str) -> CertFiles {
        let clients = self.dir.join("clients");
        CertFiles {
            cert: clients.join(format!("{name}.pem")),
            key: clients.join(format!("{name}.key")),
        }
    }

    /// Makes the CA, the server certificate and the `admin` client unless the CA exists
    /// already (a restart reuses the same PKI, so clients keep working). Returns whether it
    /// made them.
    pub fn ensure(&self) -> Result<bool, PkiError> {
        if self.ca().exists() {
            return Ok(false);
        }
        make_dir(&self.dir)?;
        make_dir(&self.dir.join("clients"))?;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("warden development CA", None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        ca.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let ca_cert = ca.self_signed(&ca_key)?;
        write_file(&self.dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        server.distinguished_name = name("warden", None);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        server.not_after = OffsetDateTime::now_utc() + Duration::days(825);
        let server_cert = server.signed_by(&server_key, &issuer)?;
        let files = self.server();
        write_file(&files.key, &server_key.serialize_pem(), 0o600)?;
        write_file(&files.cert, &server_cert.pem(), 0o644)?;

        issue(&issuer, &self.client("admin"), "admin", true, 825)?;
        // The CA certificate last: its presence says the PKI is complete.
        write_file(&self.ca(), &ca_cert.pem(), 0o644)?;
        Ok(true)
    }

    /// Issues a client certificate for user `name`, valid for `days`, signed by the CA.
    pub fn issue_client(&self, name: &str, admin: bool, days: u32) -> Result<CertFiles, PkiError> {
        if !crate::security::principal::valid_user(name) {
            return Err(PkiError::BadName(
                "a client name is 1 to 64 of A-Z a-z 0-9 . _ @ -".into(),
            ));
        }
        let ca_key = read(&self.dir.join("ca.key"))?;
        let ca_cert = read(&self.ca())?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
        let files = self.client(name);
        make_dir(&self.dir.join("clients"))?;
        issue(&issuer, &files, name, admin, days)?;
        Ok(files)
    }
}

/// Signs a client certificate for `user` into `files`.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    files: &CertFiles,
    user: &str,
    admin: bool,
    days: u32,
) -> Result<(), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(user, admin.then_some("admin"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(days));
    let cert = params.signed_by(&key, issuer)?;
    write_file(&files.key, &key.serialize_pem(), 0o600)?;
    write_file(&files.cert, &cert.pem(), 0o644)?;
    Ok(())
}

fn name(common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(unit) = unit {
        name.push(DnType::OrganizationalUnitName, unit);
    }
    name
}

fn make_dir(dir: &Path) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// Writes `contents` to `path` with `mode` from the start (a key is never readable by others,
/// not even for a moment).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(failed)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}
