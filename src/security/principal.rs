//! Who a caller is: a [`Principal`] with a [`Role`], and the extractor that reads one from a
//! request on the jobs listener.
//!
//! Over mutual TLS the principal is the verified client certificate's (its Common Name, and
//! `admin` if its subject has an organisational unit `admin`); a bearer token, if sent as
//! well, must name the same user. Over plain HTTP (`--jobs-tls off`) the token is the only
//! credential.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::tls::ClientIdentity;
use super::tokens::{TokenError, TokenKeys};
use crate::error::Error;

/// What a principal may do: a `user` sees and stops only its own jobs; an `admin` all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
    /// Whether this principal may see and stop a job owned by `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.user == owner
    }

    /// The owner whose jobs this principal's lists are limited to: `None` for an admin.
    pub fn only_owner(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(self.user.as_str())
    }
}

/// A user name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
pub fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._@-".contains(&byte))
}

/// The authenticated caller: the client certificate's identity (set by the TLS listener)
/// and/or `Authorization: Bearer <token>`; 401 when neither is there or they disagree.
impl<S> FromRequestParts<S> for Principal
where
    TokenKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(header) => {
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Error::Unauthorized("use `Authorization: Bearer <token>`".into())
                    })?;
                let principal = TokenKeys::from_ref(state)
                    .verify(token)
                    .map_err(|error: TokenError| Error::Unauthorized(error.to_string()))?;
                Some(principal)
            }
        };
        match (parts.extensions.get::<ClientIdentity>(), token) {
            (Some(identity), Some(token)) if token.user != identity.user => {
                Err(Error::Unauthorized(
                    "the bearer token names another user than the client certificate".into(),
                ))
            }
            (Some(identity), _) => Ok(Self {
                user: identity.user.clone(),
                role: identity.role,
            }),
            (None, Some(token)) => Ok(token),
            (None, None) => Err(Error::Unauthorized("a bearer token is required".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_reaches_only_its_own_jobs_and_an_admin_all() {
        let alice = Principal {
            user: "alice".into(),
            role: Role::User,
        };
        assert!(alice.may_access("alice"));
        assert!(!alice.may_access("bob"));
        assert_eq!(alice.only_owner(), Some("alice"));
        let root = Principal {
            user: "root".into(),
            role: Role::Admin,
        };
        assert!(root.may_access("bob"));
        assert_eq!(root.only_owner(), None);
    }

    #[test]
    fn user_names_are_short_and_plain() {
        assert!(valid_user("alice.b_c@example-1"));
        assert!(valid_user(&"a".repeat(64)));
        assert!(!valid_user(&"a".repeat(65)));
        assert!(!valid_user(""));
        assert!(!valid_user("al ice"));
        assert!(!valid_user("ålice"));
    }
}
