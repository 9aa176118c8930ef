//! Load for the cost-of-security benchmark: `GET /jobs` as fast as it goes, over mutual TLS or
//! plain HTTP, on keep-alive connections or a new connection per request.
//!
//! `mtls_load URL keepalive|new SECONDS CONNECTIONS` with, for `https://`, the client files in
//! `WARDEN_CA`, `WARDEN_CERT`, `WARDEN_KEY`, and for `http://` a token in `WARDEN_TOKEN`.
//! Prints `requests/s`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{name} is not set"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    warden::security::tls::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, mode, seconds, connections] = args.as_slice() else {
        return Err("usage: mtls_load URL keepalive|new SECONDS CONNECTIONS".into());
    };
    let seconds: u64 = seconds.parse().map_err(|_| "SECONDS is a number")?;
    let connections: usize = connections.parse().map_err(|_| "CONNECTIONS is a number")?;
    let fresh_connections = mode == "new";

    let client = || -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder();
        if fresh_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        if url.starts_with("https://") {
            let tls = warden::security::tls::client_config(
                &env_path("WARDEN_CA")?,
                &env_path("WARDEN_CERT")?,
                &env_path("WARDEN_KEY")?,
            )
            .map_err(|error| error.to_string())?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        builder.build().map_err(|error| error.to_string())
    };
    let token = std::env::var("WARDEN_TOKEN").ok();
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..connections {
        let client = client()?;
        let (url, token, done) = (format!("{url}/jobs"), token.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut request = client.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        if response.bytes().await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => return Err("a request failed".to_owned()),
                }
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await.map_err(|error| error.to_string())??;
    }
    #[allow(clippy::cast_precision_loss)] // a rate to print
    let rate = done.load(Ordering::Relaxed) as f64 / seconds as f64;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_fmt(&mut out, format_args!("{rate:.0}\n"))
        .map_err(|error| error.to_string())
}
