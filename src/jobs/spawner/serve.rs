//! The spawner process (`warden job-spawner`, started by warden with its end of the socket
//! pair as stdin): it forks each job's process and reaps it when warden says so.
//!
//! It exists because forking warden itself is slow: a fork copies the page tables of the
//! whole service (its runtime, its threads' stacks, SQLite's cache) and then makes every page
//! warden writes before the child execs a copy. This process is single-threaded and small,
//! so its forks are cheap, and between fork and exec its child may do whatever it needs
//! (no other thread can hold a lock the child would wait on forever).
//!
//! Invariants: it never reaps a leader warden has not asked it to reap (so warden may signal
//! a leader's group until then, with no risk that the group's id was reused); it answers
//! every request with exactly one reply; it ends when warden's end of the socket closes,
//! leaving the jobs it started running (warden, or the next warden, kills them whole).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use rustix::process::WaitOptions;

use super::wire::{self, Ask, Reply, Request, Spawn, Step};

/// Where to look for a program when the job's environment has no `PATH`.
const FALLBACK_PATH: &[u8] = b"/usr/bin:/bin";

/// Serves warden's requests on stdin until warden closes its end.
pub fn run() -> ExitCode {
    let socket = io::stdin();
    let socket = socket.as_fd();
    let devnull = match File::open("/dev/null") {
        Ok(devnull) => devnull,
        Err(error) => {
            eprintln!("warden job-spawner: cannot open /dev/null: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = wire::send(socket, &Reply::Ready.encode(), &[]) {
        eprintln!("warden job-spawner: cannot reach warden: {error}");
        return ExitCode::FAILURE;
    }
    let mut forgotten = Vec::new();
    let mut buffer = vec![0; wire::MAX_PACKET];
    loop {
        let received = match wire::receive(socket, &mut buffer) {
            Ok(Some(received)) => received,
            Ok(None) => return ExitCode::SUCCESS,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                eprintln!("warden job-spawner: cannot read from warden: {error}");
                return ExitCode::FAILURE;
            }
        };
        let reply = match Request::decode(&buffer[..received.len]) {
            Some(Request { forget, ask }) => {
                forgotten.extend(forget);
                reap_forgotten(&mut forgotten);
                match ask {
                    Ask::Spawn(spawn) => start(&spawn, received.fds, &devnull),
                    Ask::Reap { pid } => reap(pid),
                }
            }
            None => Reply::NotStarted {
                step: Step::Request,
                errno: Errno::EINVAL as i32,
            },
        };
        if let Err(error) = wire::send(socket, &reply.encode(), &[]) {
            eprintln!("warden job-spawner: cannot answer warden: {error}");
            return ExitCode::FAILURE;
        }
    }
}

/// Reaps leader `pid` if it has exited.
fn reap(pid: i32) -> Reply {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return Reply::Failed {
            errno: Errno::EINVAL as i32,
        };
    };
    match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Reply::Reaped {
            status: status.as_raw(),
        },
        Ok(None) => Reply::Running,
        Err(error) => Reply::Failed {
            errno: error.raw_os_error(),
        },
    }
}

/// Reaps the forgotten leaders that have exited; keeps the others for the next request.
fn reap_forgotten(forgotten: &mut Vec<i32>) {
    forgotten.retain(|pid| matches!(reap(*pid), Reply::Running));
}

/// What a job's process needs after the fork, all of it made before.
struct Prepared {
    /// Where the program may be, in the order to try.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    account: Option<(Uid, Gid)>,
    cgroup_procs: Vec<File>,
}

/// Starts `spawn` with `fds` (its stdout and stderr) and stdin from `devnull`, and waits
/// until it has exec'd its program or failed to.
fn start(spawn: &Spawn, fds: Vec<OwnedFd>, devnull: &File) -> Reply {
    let not_started = |step: Step, errno: Errno| Reply::NotStarted {
        step,
        errno: errno as i32,
    };
    let [stdout, stderr] = match <[OwnedFd; 2]>::try_from(fds) {
        Ok(fds) => fds,
        Err(_) => return not_started(Step::Request, Errno::EBADF),
    };
    let job = match prepare(spawn) {
        Ok(job) => job,
        Err((step, errno)) => return not_started(step, errno),
    };
    let (report_from, report_to) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(errno) => return not_started(Step::Fork, errno),
    };
    match fork() {
        Err(errno) => not_started(Step::Fork, errno),
        Ok(ForkResult::Child) => {
            let stdio = [devnull.as_fd(), stdout.as_fd(), stderr.as_fd()];
            become_job(&job, stdio, report_to.as_fd())
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report_to);
            match read_report(report_from) {
                // The report pipe closed on exec: the job's program runs.
                None => Reply::Spawned {
                    pid: child.as_raw(),
                },
                Some((step, errno)) => {
                    // It exits right after its report.
                    let _ = nix::sys::wait::waitpid(child, None);
                    Reply::NotStarted { step, errno }
                }
            }
        }
    }
}

/// Everything [`become_job`] needs, made before the fork; the step and `errno` of what
/// cannot be.
fn prepare(spawn: &Spawn) -> Result<Prepared, (Step, Errno)> {
    let c_string = |bytes: &[u8]| CString::new(bytes).map_err(|_| (Step::Request, Errno::EINVAL));
    let program = c_string(&spawn.program)?;
    let candidates = if spawn.program.contains(&b'/') {
        vec![program.clone()]
    } else {
        let path = spawn
            .env
            .iter()
            .find_map(|variable| variable.strip_prefix(b"PATH="))
            .unwrap_or(FALLBACK_PATH);
        path.split(|byte| *byte == b':')
            .map(|dir| {
                // An empty entry is the working directory, as for a shell.
                let dir = if dir.is_empty() { &b"."[..] } else { dir };
                c_string(&[dir, b"/", &spawn.program].concat())
            })
            .collect::<Result<_, _>>()?
    };
    let argv = std::iter::once(Ok(program))
        .chain(spawn.args.iter().map(|arg| c_string(arg)))
        .collect::<Result<_, _>>()?;
    let envp = spawn
        .env
        .iter()
        .map(|variable| c_string(variable))
        .collect::<Result<_, _>>()?;
    let cgroup_procs = spawn
        .cgroup_procs
        .iter()
        .map(|path| {
            OpenOptions::new()
                .write(true)
                .open(std::ffi::OsStr::from_bytes(path))
                .map_err(|error| (Step::Cgroup, errno_of(&error)))
        })
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        candidates,
        argv,
        envp,
        cwd: c_string(&spawn.cwd)?,
        account: spawn
            .account
            .map(|(uid, gid)| (Uid::from_raw(uid), Gid::from_raw(gid))),
        cgroup_procs,
    })
}

fn errno_of(error: &io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(Errno::EIO as i32))
}

/// The step and `errno` a failed child reported, or `None` once the pipe closed without a
/// report (its exec closed it).
fn read_report(from: OwnedFd) -> Option<(Step, i32)> {
    let mut report = [0_u8; 5];
    let mut got = 0;
    let mut from = File::from(from);
    while got < report.len() {
        match from.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(read) => got += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Some((Step::Fork, errno_of(&error) as i32)),
        }
    }
    match got {
        0 => None,
        5 => {
            let [step, errno @ ..] = report;
            Some((
                Step::of_code(step).unwrap_or(Step::Exec),
                i32::from_ne_bytes(errno),
            ))
        }
        _ => Some((Step::Fork, Errno::EPIPE as i32)),
    }
}

/// Forks this single-threaded process.
#[expect(
    unsafe_code,
    reason = "a job's process is a fork of the spawner, settled before its exec"
)]
fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the spawner runs no other thread (it is `warden job-spawner`, which starts no
    // runtime), so the child inherits no lock another thread held, and may allocate.
    unsafe { nix::unistd::fork() }
}

/// In the forked child: settles into the job and execs its program, in this order: it moves
/// itself into each cgroup (writing `0` moves the writer) while still as privileged as
/// warden; leads a process group of its own; takes its stdin, stdout and stderr; drops every
/// supplementary group and switches to the job's account; enters `cwd` as that account;
/// restores the signals a Rust program ignores or blocks. So the program, and all it ever
/// starts, run in the job's cgroup and as its account from their first instruction. A step
/// that fails is reported on `report` (its step and `errno`), and the child exits.
fn become_job(job: &Prepared, stdio: [BorrowedFd<'_>; 3], report: BorrowedFd<'_>) -> ! {
    let errno = match settle(job, stdio) {
        Err(failed) => failed,
        Ok(()) => (Step::Exec, exec(job)),
    };
    let (step, errno) = errno;
    let mut packet = [0_u8; 5];
    packet[0] = step.code();
    packet[1..].copy_from_slice(&(errno as i32).to_ne_bytes());
    let _ = nix::unistd::write(report, &packet);
    // `exit` rather than `_exit` is sound here: the spawner registers no exit handler and
    // buffers nothing of its own.
    std::process::exit(127)
}

fn settle(
    job: &Prepared,
    [stdin, stdout, stderr]: [BorrowedFd<'_>; 3],
) -> Result<(), (Step, Errno)> {
    for file in &job.cgroup_procs {
        nix::unistd::write(file, b"0").map_err(|errno| (Step::Cgroup, errno))?;
    }
    let fork = |errno| (Step::Fork, errno);
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(fork)?;
    nix::unistd::dup2_stdin(stdin).map_err(fork)?;
    nix::unistd::dup2_stdout(stdout).map_err(fork)?;
    nix::unistd::dup2_stderr(stderr).map_err(fork)?;
    if let Some((uid, gid)) = job.account {
        let account = |errno| (Step::Account, errno);
        nix::unistd::setgroups(&[]).map_err(account)?;
        nix::unistd::setgid(gid).map_err(account)?;
        nix::unistd::setuid(uid).map_err(account)?;
    }
    nix::unistd::chdir(job.cwd.as_c_str()).map_err(|errno| (Step::Cwd, errno))?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(fork)?;
    default_sigpipe().map_err(fork)
}

/// Puts SIGPIPE back to its default: the Rust runtime ignores it, and an ignored signal
/// stays ignored across exec, where a job's `yes | head` expects it to end `yes`.
#[expect(
    unsafe_code,
    reason = "setting a signal's disposition is unsafe in nix"
)]
fn default_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_DFL installs no handler of ours, so no code runs in signal context.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(|_| ())
}

/// Execs the first candidate that is there, as `execvp` does; the `errno` of the most
/// telling failure when none is (a candidate that is there but may not run says more than
/// the ones that are not).
fn exec(job: &Prepared) -> Errno {
    let mut failed = Errno::ENOENT;
    for candidate in &job.candidates {
        let Err(errno) = nix::unistd::execve(candidate, &job.argv, &job.envp);
        match errno {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => failed = Errno::EACCES,
            other => return other,
        }
    }
    failed
}
