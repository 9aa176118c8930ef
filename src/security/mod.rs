//! Security: who a caller is and how that is proven. Mutual TLS on the jobs listener (the
//! client certificate names the user), bearer tokens beside or instead of it, and the
//! development PKI that `serve` makes on first start.

pub mod pki;
pub mod principal;
pub mod tls;
pub mod tokens;
