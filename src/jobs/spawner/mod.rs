//! warden's job spawner: a small process of its own (`warden job-spawner`, see [`serve`])
//! that forks every job's process, because a fork of warden itself costs much of the jobs
//! rate (see that module), and reaps each one when warden says so: asked for its status, or
//! told to [`Spawner::forget`] it once warden has read the status from its zombie (see
//! [`crate::jobs::process`]).
//!
//! warden holds one [`Spawner`]: one request at a time on one socket pair, each answered
//! within [`REPLY_TIMEOUT`]. A spawner that ends, or stops answering, is killed and started
//! again for the next request; the request it failed fails (its job ends `failed`), and so
//! does the reap of a leader it had started (its wait status is lost with it; the leader is
//! killed with its job all the same, through its pidfd and its cgroup or marker).

pub mod serve;
mod wire;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::sandbox::markers;
use wire::{Ask, Reply, Request};
pub use wire::{Spawn, Step};

/// How long the spawner may take to answer a request: a fork and an exec take well under a
/// millisecond, so this is only ever reached by a spawner that is stuck (e.g. on an exec
/// from a hung network filesystem).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a spawner may take to say it is up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a job's process did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnFailure {
    /// It was forked, and this step failed before its program ran; nothing of it is left.
    #[error("{}: {source}", .step.describe())]
    NotStarted { step: Step, source: io::Error },
    /// The spawner failed (it is started again for the next job): whether the process was
    /// forked is unknown.
    #[error("the job spawner failed: {0}")]
    Spawner(io::Error),
}

/// The running spawner, and what warden has for it to do.
#[derive(Debug)]
pub struct Spawner {
    /// `warden job-spawner`'s binary and its first arguments.
    program: PathBuf,
    args: Vec<String>,
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// Leaders of jobs dropped unfinished, for the spawner to reap once they exit.
    forgotten: Mutex<Vec<i32>>,
}

/// One spawner process and warden's end of its socket.
#[derive(Debug)]
struct Connection {
    socket: AsyncFd<OwnedFd>,
    process: Child,
}

impl Spawner {
    /// Starts `program job-spawner ARGS…` and waits until it is up.
    pub async fn start(program: PathBuf, args: Vec<String>) -> Result<Self, String> {
        let connection = Connection::start(&program, &args).await.map_err(|error| {
            format!(
                "cannot start the job spawner {} job-spawner: {error}",
                program.display()
            )
        })?;
        Ok(Self {
            program,
            args,
            connection: tokio::sync::Mutex::new(Some(connection)),
            forgotten: Mutex::new(Vec::new()),
        })
    }

    /// Starts a job's process with `stdout` and `stderr` as its own; its pid, which stays
    /// its until warden asks to [`Spawner::reap`] it.
    pub async fn spawn(
        &self,
        spawn: Spawn,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<i32, SpawnFailure> {
        let reply = self
            .ask(Ask::Spawn(spawn), &[stdout, stderr])
            .await
            .map_err(SpawnFailure::Spawner)?;
        match reply {
            Reply::Spawned { pid } => Ok(pid),
            Reply::NotStarted { step, errno } => Err(SpawnFailure::NotStarted {
                step,
                source: io::Error::from_raw_os_error(errno),
            }),
            other => Err(SpawnFailure::Spawner(unexpected(&other))),
        }
    }

    /// Reaps leader `pid` once it has exited (warden saw that through its pidfd); how it
    /// ended.
    pub async fn reap(&self, pid: i32) -> io::Result<ExitStatus> {
        let mut wait = Duration::from_micros(100);
        loop {
            match self.ask(Ask::Reap { pid }, &[]).await? {
                Reply::Reaped { status } => return Ok(ExitStatus::from_raw(status)),
                Reply::Failed { errno } if errno == nix::libc::ECHILD => {
                    return Err(io::Error::other(
                        "its exit status was lost with the job spawner that started it",
                    ));
                }
                Reply::Failed { errno } => return Err(io::Error::from_raw_os_error(errno)),
                // Its pidfd said it exited; the kernel is a moment behind.
                Reply::Running => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Leaves leader `pid` (killed, or being killed, or exited with its status read) for the
    /// spawner to reap at its next request: nothing waits for its status.
    pub fn forget(&self, pid: i32) {
        self.forgotten
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pid);
    }

    /// Sends `ask` (with `fds`) and returns the reply, starting the spawner first if the last
    /// one failed; a spawner that fails here is killed.
    async fn ask(&self, ask: Ask, fds: &[OwnedFd]) -> io::Result<Reply> {
        let mut connection = self.connection.lock().await;
        let forget = std::mem::take(
            &mut *self
                .forgotten
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let packet = Request { forget, ask }.encode();
        // A spawner that ended since the last request is found out by the send, before it
        // could act on this one: another is started and asked in its place, once.
        for retry in [true, false] {
            let current = match connection.as_mut() {
                Some(current) => current,
                None => connection.insert(Connection::start(&self.program, &self.args).await?),
            };
            let answered = tokio::time::timeout(REPLY_TIMEOUT, current.exchange(&packet, fds))
                .await
                .unwrap_or_else(|_| {
                    Err(Exchange::Unanswered(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the job spawner did not answer",
                    )))
                });
            let error = match answered {
                Ok(reply) => return Ok(reply),
                Err(error) => error,
            };
            *connection = None;
            match error {
                Exchange::Unsent(error) if retry => {
                    tracing::warn!(%error, "the job spawner had ended; starting another");
                }
                Exchange::Unsent(error) | Exchange::Unanswered(error) => {
                    tracing::error!(%error, "the job spawner failed; another is started for the next job");
                    return Err(error);
                }
            }
        }
        Err(io::Error::other("the job spawner could not be reached"))
    }
}

/// How an exchange with the spawner failed.
#[derive(Debug)]
enum Exchange {
    /// The request was not sent: the spawner did nothing of it.
    Unsent(io::Error),
    /// It was sent, and the spawner may have acted on it.
    Unanswered(io::Error),
}

fn unexpected(reply: &Reply) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the job spawner answered out of turn: {reply:?}"),
    )
}

impl Connection {
    async fn start(program: &Path, args: &[String]) -> io::Result<Self> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        let mut command = std::process::Command::new(program);
        command
            .arg0("warden")
            .arg("job-spawner")
            .args(args.iter().map(OsStr::new))
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Out of the terminal's foreground group: a Ctrl-C for warden is not for it.
            .process_group(0);
        let process = markers::spawn_own_child(&mut command)?;
        let mut connection = Self {
            socket: watch(ours, Interest::READABLE | Interest::WRITABLE)?,
            process,
        };
        let ready = tokio::time::timeout(START_TIMEOUT, connection.receive()).await;
        match ready {
            Ok(Ok(Reply::Ready)) => Ok(connection),
            Ok(Ok(other)) => Err(unexpected(&other)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "it did not say it was up",
            )),
        }
    }

    async fn exchange(&mut self, packet: &[u8], fds: &[OwnedFd]) -> Result<Reply, Exchange> {
        let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        self.socket
            .async_io(Interest::WRITABLE, |socket| {
                wire::send(socket.as_fd(), packet, &fds)
            })
            .await
            .map_err(Exchange::Unsent)?;
        self.receive().await.map_err(Exchange::Unanswered)
    }

    async fn receive(&mut self) -> io::Result<Reply> {
        let mut buffer = [0; wire::MAX_REPLY];
        let received = self
            .socket
            .async_io(Interest::READABLE, |socket| {
                wire::receive(socket, &mut buffer)
            })
            .await?;
        let received = received.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the job spawner has ended")
        })?;
        Reply::decode(&buffer[..received.len]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the job spawner's reply is garbled",
            )
        })
    }
}

impl Drop for Connection {
    /// Ends the spawner (the jobs it started run on: they lead groups of their own) and
    /// reaps it.
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        markers::forget_own_child(self.process.id());
    }
}

/// Registers `fd` with the runtime, to wait until it is ready for `interest`.
#[expect(
    unsafe_code,
    reason = "tokio registers a raw fd only through an unsafe call"
)]
pub fn watch(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the fd, so it stays open (and is not replaced) for as long as
    // it is registered, and is closed only when the AsyncFd drops.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|error| error.into_parts().1)
}
