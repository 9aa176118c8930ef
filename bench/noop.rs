//! The benchmark's ceiling: an axum server whose one route does nothing, on the same runtime
//! settings as warden. `cargo run --release --example noop -- 127.0.0.1:18000`

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18000".to_owned())
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new().route("/", get(|| async { "ok" }).post(|| async { "ok" }));
    axum::serve(listener, app).await
}
