//! Bearer tokens: HS256 JWTs with claims `user`, `role` and `exp`.
//!
//! The signing key is 32 random bytes made on first start and kept in the database (table
//! `token_signing_key`), never in a log or an error. Verification accepts HS256 only (so
//! `alg: none` and every other algorithm are refused) and requires `exp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use super::principal::{Principal, Role, valid_user};
use crate::db::Database;
use crate::error::StorageFault;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    user: String,
    role: Role,
    exp: u64,
}

/// Why a token was refused. Deliberately vague: the reason goes to the client, the token
/// never does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid")]
    Invalid,
}

/// The keys that sign and verify tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Loads the signing key from the database, making it first if there is none yet.
    pub async fn load_or_create(db: &Database, now_ms: i64) -> Result<Self, StorageFault> {
        if let Some(secret) = stored_secret(&db.reads).await? {
            return Ok(Self::from_secret(&secret));
        }
        let mut secret = [0_u8; 32];
        getrandom::fill(&mut secret).map_err(|error| {
            tracing::error!(%error, "no randomness for the token signing key");
            StorageFault::Failed
        })?;
        let secret = secret.to_vec();
        {
            let mut conn = db.write_connection().await?;
            // Two processes may race to make the key: the first one wins, both use it.
            sqlx::query!(
                "INSERT INTO token_signing_key (id, secret, created_at_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO NOTHING",
                secret,
                now_ms
            )
            .execute(&mut *conn)
            .await
            .map_err(|error| StorageFault::of(&error))?;
        }
        let secret = stored_secret(&db.reads)
            .await?
            .ok_or(StorageFault::Failed)?;
        Ok(Self::from_secret(&secret))
    }

    fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `user` with `role`, valid for `ttl` from now.
    pub fn issue(&self, user: &str, role: Role, ttl: Duration) -> Result<String, TokenError> {
        let exp = SystemTime::now()
            .checked_add(ttl)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .ok_or(TokenError::Invalid)?
            .as_secs();
        self.issue_expiring_at(user, role, exp)
    }

    /// A token for `user` with `role` that expires at `exp` (seconds since the epoch).
    pub fn issue_expiring_at(
        &self,
        user: &str,
        role: Role,
        exp: u64,
    ) -> Result<String, TokenError> {
        let claims = Claims {
            user: user.to_owned(),
            role,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    /// The principal a token names, if it is signed by this key, HS256, and not expired.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            },
        )?;
        if !valid_user(&data.claims.user) {
            return Err(TokenError::Invalid);
        }
        Ok(Principal {
            user: data.claims.user,
            role: data.claims.role,
        })
    }
}

async fn stored_secret(reads: &SqlitePool) -> Result<Option<Vec<u8>>, StorageFault> {
    sqlx::query_scalar!("SELECT secret FROM token_signing_key WHERE id = 1")
        .fetch_optional(reads)
        .await
        .map_err(|error| StorageFault::of(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8]) -> TokenKeys {
        TokenKeys::from_secret(secret)
    }

    #[test]
    fn a_token_names_its_user_and_role() {
        let keys = keys(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .issue("alice", Role::User, Duration::from_secs(60))
            .unwrap();
        let principal = keys.verify(&token).unwrap();
        assert_eq!(principal.user, "alice");
        assert_eq!(principal.role, Role::User);
        assert!(principal.may_access("alice"));
        assert!(!principal.may_access("bob"));
    }

    #[test]
    fn expired_foreign_and_unsigned_tokens_are_refused() {
        let ours = keys(b"0123456789abcdef0123456789abcdef");
        let theirs = keys(b"fedcba9876543210fedcba9876543210");
        let expired = ours.issue_expiring_at("alice", Role::Admin, 1_000).unwrap();
        assert_eq!(ours.verify(&expired), Err(TokenError::Expired));
        let foreign = theirs
            .issue("alice", Role::Admin, Duration::from_secs(60))
            .unwrap();
        assert_eq!(ours.verify(&foreign), Err(TokenError::Invalid));
        // {"alg":"none","typ":"JWT"} . {"user":"alice","role":"admin","exp":99999999999} .
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                        eyJ1c2VyIjoiYWxpY2UiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjk5OTk5OTk5OTk5fQ.";
        assert_eq!(ours.verify(unsigned), Err(TokenError::Invalid));
        assert_eq!(ours.verify("not a token"), Err(TokenError::Invalid));
    }
}
