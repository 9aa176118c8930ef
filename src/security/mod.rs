//! Security: who a caller is. Bearer tokens for now; mutual TLS comes next.

pub mod pki;
pub mod tls;
pub mod tokens;
