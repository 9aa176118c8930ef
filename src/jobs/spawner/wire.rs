//! What warden and its spawner say to each other: one request, then one reply, each one
//! packet of a `SOCK_SEQPACKET` socket pair, with the pipes of a job's output passed along
//! with its request (`SCM_RIGHTS`).
//!
//! A packet is a tag byte and fields: numbers in native byte order (both ends are the same
//! binary on the same machine), byte strings as a `u32` length and the bytes. A packet that
//! does not decode is refused whole; nothing in it is acted on.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The largest packet either end sends: a job request is at most the 64 KiB of its body
/// plus warden's few variables, well under the socket's send buffer.
pub const MAX_PACKET: usize = 256 * 1024;

/// The largest reply: a tag and two numbers.
pub const MAX_REPLY: usize = 64;

/// Asks the spawner for something. `forget` lists leaders warden will never ask to reap
/// (their job was dropped unfinished): the spawner reaps them once they have exited.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub forget: Vec<i32>,
    pub ask: Ask,
}

/// What warden asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    /// Start a job's process; the packet carries its stdout and stderr.
    Spawn(Spawn),
    /// Reap a leader that has exited (warden saw it through its pidfd).
    Reap { pid: i32 },
}

/// How to start a job's process.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Spawn {
    /// The program, looked up in the job's `PATH` unless it holds a `/`.
    pub program: Vec<u8>,
    /// Its arguments after `argv[0]` (which is `program`).
    pub args: Vec<Vec<u8>>,
    /// Its whole environment, `NAME=value` each.
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    /// The uid and gid to switch to, when they are not the spawner's own.
    pub account: Option<(u32, u32)>,
    /// The `cgroup.procs` files to move itself into, before it switches account.
    pub cgroup_procs: Vec<Vec<u8>>,
}

/// What the spawner answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The spawner is up (its first packet).
    Ready,
    /// The process runs the job's program (it has exec'd), with this pid.
    Spawned { pid: i32 },
    /// The process could not start: which step failed, with which `errno`; it is reaped.
    NotStarted { step: Step, errno: i32 },
    /// The leader is reaped, with this wait status.
    Reaped { status: i32 },
    /// The leader has not exited yet: nothing was reaped.
    Running,
    /// The request could not be carried out (`errno`), e.g. no such child.
    Failed { errno: i32 },
}

/// A step of starting a job's process, for the error that names the one that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The request or its pipes did not arrive whole.
    Request,
    Fork,
    Cgroup,
    Account,
    Cwd,
    Exec,
}

impl Step {
    const ALL: [Self; 6] = [
        Self::Request,
        Self::Fork,
        Self::Cgroup,
        Self::Account,
        Self::Cwd,
        Self::Exec,
    ];

    /// Its code in a packet, and in the report of a job's process to the spawner.
    pub fn code(self) -> u8 {
        match self {
            Self::Request => 0,
            Self::Fork => 1,
            Self::Cgroup => 2,
            Self::Account => 3,
            Self::Cwd => 4,
            Self::Exec => 5,
        }
    }

    /// The step of `code`.
    pub fn of_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|step| step.code() == code)
    }

    /// What failed, for the job's error.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Request => "the spawner could not read the request",
            Self::Fork => "fork",
            Self::Cgroup => "joining the job's cgroup",
            Self::Account => "switching to the job's account",
            Self::Cwd => "entering the working directory",
            Self::Exec => "exec",
        }
    }
}

const TAG_SPAWN: u8 = 1;
const TAG_REAP: u8 = 2;
const TAG_READY: u8 = 10;
const TAG_SPAWNED: u8 = 11;
const TAG_NOT_STARTED: u8 = 12;
const TAG_REAPED: u8 = 13;
const TAG_RUNNING: u8 = 14;
const TAG_FAILED: u8 = 15;

impl Request {
    /// The request as a packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut packet = Packet::default();
        match &self.ask {
            Ask::Spawn(spawn) => {
                packet.u8(TAG_SPAWN);
                packet.numbers(&self.forget);
                packet.bytes(&spawn.program);
                packet.list(&spawn.args);
                packet.list(&spawn.env);
                packet.bytes(&spawn.cwd);
                match spawn.account {
                    Some((uid, gid)) => {
                        packet.u8(1);
                        packet.u32(uid);
                        packet.u32(gid);
                    }
                    None => packet.u8(0),
                }
                packet.list(&spawn.cgroup_procs);
            }
            Ask::Reap { pid } => {
                packet.u8(TAG_REAP);
                packet.numbers(&self.forget);
                packet.i32(*pid);
            }
        }
        packet.0
    }

    /// The request in `packet`, if it is one, whole.
    pub fn decode(packet: &[u8]) -> Option<Self> {
        let mut fields = Fields(packet);
        let tag = fields.u8()?;
        let forget = fields.numbers()?;
        let ask = match tag {
            TAG_SPAWN => Ask::Spawn(Spawn {
                program: fields.bytes()?,
                args: fields.list()?,
                env: fields.list()?,
                cwd: fields.bytes()?,
                account: match fields.u8()? {
                    0 => None,
                    1 => Some((fields.u32()?, fields.u32()?)),
                    _ => return None,
                },
                cgroup_procs: fields.list()?,
            }),
            TAG_REAP => Ask::Reap { pid: fields.i32()? },
            _ => return None,
        };
        fields.0.is_empty().then_some(Self { forget, ask })
    }
}

impl Reply {
    /// The reply as a packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut packet = Packet::default();
        match *self {
            Self::Ready => packet.u8(TAG_READY),
            Self::Spawned { pid } => {
                packet.u8(TAG_SPAWNED);
                packet.i32(pid);
            }
            Self::NotStarted { step, errno } => {
                packet.u8(TAG_NOT_STARTED);
                packet.u8(step.code());
                packet.i32(errno);
            }
            Self::Reaped { status } => {
                packet.u8(TAG_REAPED);
                packet.i32(status);
            }
            Self::Running => packet.u8(TAG_RUNNING),
            Self::Failed { errno } => {
                packet.u8(TAG_FAILED);
                packet.i32(errno);
            }
        }
        packet.0
    }

    /// The reply in `packet`, if it is one, whole.
    pub fn decode(packet: &[u8]) -> Option<Self> {
        let mut fields = Fields(packet);
        let reply = match fields.u8()? {
            TAG_READY => Self::Ready,
            TAG_SPAWNED => Self::Spawned { pid: fields.i32()? },
            TAG_NOT_STARTED => Self::NotStarted {
                step: Step::of_code(fields.u8()?)?,
                errno: fields.i32()?,
            },
            TAG_REAPED => Self::Reaped {
                status: fields.i32()?,
            },
            TAG_RUNNING => Self::Running,
            TAG_FAILED => Self::Failed {
                errno: fields.i32()?,
            },
            _ => return None,
        };
        fields.0.is_empty().then_some(reply)
    }
}

/// A packet being written.
#[derive(Default)]
struct Packet(Vec<u8>);

impl Packet {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn i32(&mut self, value: i32) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn len(&mut self, len: usize) {
        // Nothing sent comes near 4 GiB (MAX_PACKET); saturating keeps decode refusing it.
        self.u32(u32::try_from(len).unwrap_or(u32::MAX));
    }

    fn bytes(&mut self, value: &[u8]) {
        self.len(value.len());
        self.0.extend_from_slice(value);
    }

    fn list(&mut self, values: &[Vec<u8>]) {
        self.len(values.len());
        for value in values {
            self.bytes(value);
        }
    }

    fn numbers(&mut self, values: &[i32]) {
        self.len(values.len());
        for value in values {
            self.i32(*value);
        }
    }
}

/// The rest of a packet being read.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[byte]| byte)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_ne_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_ne_bytes)
    }

    fn len(&mut self) -> Option<usize> {
        let len = usize::try_from(self.u32()?).ok()?;
        // Every item takes at least a byte: a count past what is left is a lie.
        (len <= self.0.len()).then_some(len)
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self.len()?;
        let (value, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(value.to_vec())
    }

    fn list(&mut self) -> Option<Vec<Vec<u8>>> {
        let count = self.len()?;
        (0..count).map(|_| self.bytes()).collect()
    }

    fn numbers(&mut self) -> Option<Vec<i32>> {
        let count = self.len()?;
        (0..count).map(|_| self.i32()).collect()
    }
}

/// Sends `packet` with `fds` in one `sendmsg`.
pub fn send(socket: BorrowedFd<'_>, packet: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one packet"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(packet)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent == packet.len() {
        Ok(())
    } else {
        Err(io::Error::other("a packet was sent in part"))
    }
}

/// A received packet's length and the descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
}

/// Receives one packet into `buffer` (which bounds its size: reuse it, as zeroing a fresh
/// one costs more than the rest of a spawn), with up to two descriptors (close-on-exec).
/// `Ok(None)` is the end: the other end closed its socket. A packet or descriptors cut short
/// are an error.
pub fn receive(socket: impl AsFd, buffer: &mut [u8]) -> io::Result<Option<Received>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(io::Error::other("a packet arrived cut short"));
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    Ok(Some(Received {
        len: got.bytes,
        fds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_read_back_as_written() {
        let spawn = Request {
            forget: vec![7, 9],
            ask: Ask::Spawn(Spawn {
                program: b"sh".to_vec(),
                args: vec![b"-c".to_vec(), b"echo \xff".to_vec(), Vec::new()],
                env: vec![b"PATH=/bin".to_vec()],
                cwd: b"/".to_vec(),
                account: Some((65534, 65534)),
                cgroup_procs: vec![b"/sys/fs/cgroup/x/cgroup.procs".to_vec()],
            }),
        };
        assert_eq!(Request::decode(&spawn.encode()), Some(spawn));
        let reap = Request {
            forget: Vec::new(),
            ask: Ask::Reap { pid: 42 },
        };
        assert_eq!(Request::decode(&reap.encode()), Some(reap));
        for reply in [
            Reply::Ready,
            Reply::Spawned { pid: 3 },
            Reply::NotStarted {
                step: Step::Cwd,
                errno: 2,
            },
            Reply::Reaped { status: 256 },
            Reply::Running,
            Reply::Failed { errno: 10 },
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        }
    }

    #[test]
    fn a_packet_cut_short_or_with_extra_bytes_is_refused() {
        let packet = Request {
            forget: vec![1],
            ask: Ask::Spawn(Spawn {
                program: b"true".to_vec(),
                ..Spawn::default()
            }),
        }
        .encode();
        for end in 0..packet.len() {
            assert_eq!(Request::decode(&packet[..end]), None, "cut at {end}");
        }
        let mut longer = packet.clone();
        longer.push(0);
        assert_eq!(Request::decode(&longer), None);
        // A count far past the packet's end.
        assert_eq!(Request::decode(&[TAG_REAP, 0xff, 0xff, 0xff, 0x7f]), None);
    }
}
