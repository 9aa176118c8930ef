//! Security: who a caller is. Bearer tokens for now; mutual TLS comes next.

pub mod tokens;
