//! What a job may use: memory, CPU, processes and time. The server's settings are both each
//! job's default and the most a request may ask for; a request may only ask for less.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a job may use; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Bytes of memory (RAM and swap) the job's processes may hold together; past it the
    /// kernel kills one of them, and the job fails with an out-of-memory error.
    #[schema(minimum = 1)]
    pub memory_bytes: Option<u64>,
    /// The share of one CPU core the job may use (0.5 is half a core, 2 two cores).
    #[schema(exclusive_minimum = 0, maximum = 1024)]
    pub cpu: Option<f64>,
    /// How many processes and threads the job may have at once; past it `fork` fails.
    #[schema(minimum = 1)]
    pub pids: Option<u64>,
    /// How long the job may run, in milliseconds; then it is killed and fails.
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

/// The most processes a Linux system can have (`PID_MAX_LIMIT` on 64-bit kernels).
pub const MAX_PIDS: u64 = 1 << 22;
/// The most bytes or milliseconds a limit may name: what SQLite's integers hold.
const MAX_BYTES: u64 = i64::MAX as u64;

/// Which limits this host can enforce: the timeout always; the others where warden has the
/// cgroup controller for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforceable {
    pub memory: bool,
    pub cpu: bool,
    pub pids: bool,
}

impl Limits {
    /// The server's limits from its settings.
    pub fn of_settings(
        memory_bytes: Option<u64>,
        cpu: Option<f64>,
        pids: Option<u64>,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            memory_bytes,
            cpu,
            pids,
            timeout_ms: timeout
                .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The job's timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// The limits a job runs with when its request asked for `asked`, under the server's
    /// `self`: each one asked for if it is within the server's, else the server's; 400 for one
    /// past the server's, out of range, or one this host cannot enforce.
    pub fn for_request(&self, asked: &Self, host: Enforceable) -> Result<Self> {
        let bad = |message: String| Err(Error::BadRequest(message));
        for (name, value, enforced) in [
            (
                "memoryBytes",
                asked.memory_bytes.map(|v| v as f64),
                host.memory,
            ),
            ("cpu", asked.cpu, host.cpu),
            ("pids", asked.pids.map(|v| v as f64), host.pids),
            ("timeoutMs", asked.timeout_ms.map(|v| v as f64), true),
        ] {
            let Some(value) = value else { continue };
            if !value.is_finite() || value <= 0.0 {
                return bad(format!("`limits.{name}` must be more than 0"));
            }
            if !enforced {
                return bad(format!(
                    "`limits.{name}` cannot be enforced on this host: warden has no cgroup \
                     controller for it (GET /healthz on the admin listener says which it has)"
                ));
            }
        }
        if asked.cpu.is_some_and(|cpu| cpu > 1024.0) {
            return bad("`limits.cpu` must be at most 1024 cores".to_owned());
        }
        if asked.pids.is_some_and(|pids| pids > MAX_PIDS) {
            return bad(format!(
                "`limits.pids` must be at most {MAX_PIDS}, the kernel's most"
            ));
        }
        if asked.memory_bytes.is_some_and(|bytes| bytes > MAX_BYTES)
            || asked.timeout_ms.is_some_and(|ms| ms > MAX_BYTES)
        {
            return bad(format!(
                "`limits.memoryBytes` and `limits.timeoutMs` must be at most {MAX_BYTES}"
            ));
        }
        Ok(Self {
            memory_bytes: within("memoryBytes", asked.memory_bytes, self.memory_bytes)?,
            cpu: within("cpu", asked.cpu, self.cpu)?,
            pids: within("pids", asked.pids, self.pids)?,
            timeout_ms: within("timeoutMs", asked.timeout_ms, self.timeout_ms)?,
        })
    }
}

/// `asked` if it is at most `max`, `max` if nothing was asked; 400 past `max`.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    asked: Option<T>,
    max: Option<T>,
) -> Result<Option<T>> {
    match (asked, max) {
        (Some(asked), Some(max)) if asked > max => Err(Error::BadRequest(format!(
            "`limits.{name}` is {asked}, past this server's maximum of {max}"
        ))),
        (Some(asked), _) => Ok(Some(asked)),
        (None, max) => Ok(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Enforceable = Enforceable {
        memory: true,
        cpu: true,
        pids: true,
    };

    #[test]
    fn a_request_takes_the_servers_limits_unless_it_asks_for_less() {
        let server = Limits::of_settings(Some(1 << 30), Some(1.0), None, None);
        let asked = Limits {
            memory_bytes: Some(1 << 20),
            pids: Some(8),
            ..Limits::default()
        };
        let limits = server.for_request(&asked, ALL).unwrap();
        assert_eq!(limits.memory_bytes, Some(1 << 20));
        assert_eq!(limits.cpu, Some(1.0));
        assert_eq!(limits.pids, Some(8));
        assert_eq!(limits.timeout_ms, None);
    }

    #[test]
    fn past_the_maximum_zero_or_unenforceable_is_refused() {
        let server = Limits::of_settings(Some(1 << 20), None, None, Some(Duration::from_secs(1)));
        for (asked, host) in [
            (
                Limits {
                    memory_bytes: Some(2 << 20),
                    ..Limits::default()
                },
                ALL,
            ),
            (
                Limits {
                    timeout_ms: Some(1001),
                    ..Limits::default()
                },
                ALL,
            ),
            (
                Limits {
                    pids: Some(0),
                    ..Limits::default()
                },
                ALL,
            ),
            (
                Limits {
                    cpu: Some(f64::NAN),
                    ..Limits::default()
                },
                ALL,
            ),
            (
                Limits {
                    cpu: Some(0.5),
                    ..Limits::default()
                },
                Enforceable::default(),
            ),
        ] {
            assert!(server.for_request(&asked, host).is_err(), "{asked:?}");
        }
    }
}
