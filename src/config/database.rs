//! The settings of the shared database (`--database` and its companions), which `serve` and
//! `migrate` both take.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sqlx::postgres::PgSslMode;

use super::parse_positive_duration;
use crate::db::PgSettings;

/// Where the hash service and the registry keep their state when many nodes share it: the
/// settings of `serve` and `migrate` alike.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// A Postgres that many warden nodes share for the hash service and the registry
    /// (`postgres://user:password@host:5432/db`); jobs stay in this node's SQLite file
    /// [default: none: everything is in this node's SQLite file].
    #[arg(long = "database", env = "WARDEN_DATABASE_URL", hide_env_values = true)]
    pub url: Option<DatabaseUrl>,

    /// The most connections this node opens to the shared database.
    #[arg(long = "database-pool", env = "WARDEN_DATABASE_POOL", default_value = "16",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// The longest a statement on the shared database may run; past it the request
    /// answers 503.
    #[arg(long = "database-statement-timeout", env = "WARDEN_DATABASE_STATEMENT_TIMEOUT",
          default_value = "5s", value_parser = parse_positive_duration)]
    pub statement_timeout: Duration,

    /// TLS to the shared database; overrides the URL's `sslmode` [default: the URL's, else
    /// `prefer`].
    #[arg(long = "database-sslmode", env = "WARDEN_DATABASE_SSLMODE")]
    pub ssl_mode: Option<SslMode>,

    /// CA (PEM) that signs the shared database's certificate, for `verify-ca` and
    /// `verify-full`.
    #[arg(long = "database-ca", env = "WARDEN_DATABASE_CA")]
    pub ssl_root_cert: Option<PathBuf>,
}

impl DatabaseArgs {
    /// Rejects a URL that is not Postgres's, without repeating it.
    pub fn check(&self) -> Result<(), String> {
        match &self.url {
            Some(DatabaseUrl(url))
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
            {
                Err("invalid --database (WARDEN_DATABASE_URL): must be a postgres:// URL".into())
            }
            _ => Ok(()),
        }
    }

    /// The shared database's settings, when one is named.
    pub fn shared(&self) -> Option<PgSettings> {
        let url = self.url.as_ref()?;
        Some(PgSettings {
            url: url.0.clone(),
            pool_size: self.pool_size,
            statement_timeout: self.statement_timeout,
            ssl_mode: self.ssl_mode.map(SslMode::of),
            ssl_root_cert: self.ssl_root_cert.clone(),
        })
    }
}

/// A database URL: it may hold a password, so it never prints.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    /// Takes any text: [`DatabaseArgs::check`] judges it, since a parse error of clap's would
    /// repeat the value, password and all.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// How warden speaks TLS to the shared database, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn of(self) -> PgSslMode {
        match self {
            Self::Disable => PgSslMode::Disable,
            Self::Allow => PgSslMode::Allow,
            Self::Prefer => PgSslMode::Prefer,
            Self::Require => PgSslMode::Require,
            Self::VerifyCa => PgSslMode::VerifyCa,
            Self::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}
