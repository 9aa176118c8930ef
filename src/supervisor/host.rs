//! What warden takes from the host it starts on: the jobs listener's TLS files (or the dev
//! PKI it makes), the volume's free space for the default `--max-db-size`, and room under the
//! open-file limit for every listener's connections.

use std::sync::Arc;

use super::StartError;
use crate::config::Config;
use crate::db::Database;
use crate::security::pki::DevPki;
use crate::security::tls::server_config;

/// File descriptors warden needs beside its connections: the database, logs, job pipes.
const FILES_BESIDE_CONNECTIONS: usize = 256;

/// `--max-db-size`, or by default the database's size now plus 80% of the free space on its
/// volume; unbounded if the volume cannot be asked.
pub async fn max_db_size(config: &Config, db: &Database) -> u64 {
    if let Some(size) = config.max_db_size {
        return size;
    }
    let used = db.used_bytes().await.unwrap_or(0);
    match crate::db::free_space(&config.data_dir) {
        Ok(free) => {
            let size = used.saturating_add(free / 5 * 4);
            tracing::info!(
                max_db_size = size,
                "job output is refused past this database size"
            );
            size
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the volume's free space; --max-db-size is unbounded");
            u64::MAX
        }
    }
}

/// Raises the soft open-file limit as far as `connections` (every listener's cap) and warden's
/// own files need, within the hard limit; warns if that is still too low, since past it an
/// `accept()` fails (new clients wait) and jobs cannot get their pipes.
pub fn make_room_for_connections(connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted =
        u64::try_from(connections.saturating_add(FILES_BESIDE_CONNECTIONS)).unwrap_or(u64::MAX);
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard).is_ok() {
        soft = wanted.min(hard);
    }
    if soft < wanted {
        tracing::warn!(
            open_files = soft,
            wanted,
            "the open-file limit is below what --max-connections allows on every listener: \
             past it new connections wait and jobs may fail to start; lower \
             --max-connections or raise `ulimit -n`"
        );
    }
}

/// The jobs listener's TLS: the operator's files where given, the dev PKI (made on first
/// start) for the rest.
pub fn jobs_tls(config: &Config) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let pki = DevPki::of(&config.data_dir);
    let needs_pki = config.tls_cert.is_none() || config.client_ca.is_none();
    if needs_pki && pki.ensure()? {
        tracing::info!(dir = %pki.dir.display(), "made a development PKI");
    }
    let server = pki.server();
    let cert = config.tls_cert.clone().unwrap_or(server.cert);
    let key = config.tls_key.clone().unwrap_or(server.key);
    let client_ca = config.client_ca.clone().unwrap_or_else(|| pki.ca());
    Ok(server_config(&cert, &key, &client_ca)?)
}
