//! A job's output: the pump that carries it from the process's pipes into SQLite, the
//! followers' window of recent output ([`Progress`]), and the [`OutputReader`] that serves it
//! back to clients.
//!
//! Invariants: bytes are stored in arrival order at their offset in the whole output; only
//! committed bytes are ever served; a follower is woken by a watch channel when output is
//! committed, never by polling; memory per job and per reader is bounded (a few chunks)
//! however fast the job writes or however slow a client reads; every reader is cut short
//! when the drain begins.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use sqlx::SqlitePool;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::live::Following;
use super::store::{self, OutputChunk, Stored};
use crate::db::Writer;

/// How much output one chunk holds at most.
const CHUNK: usize = 64 * 1024;
/// How many chunks of one job may wait for their commit at once (bounds memory per job).
const IN_FLIGHT: usize = 16;
/// How many of a job's latest committed chunks stay in memory for its followers.
const RECENT_CHUNKS: usize = 32;
/// How many output chunks a reader takes at a time (at most 512 KiB).
const READ_CHUNKS: usize = 8;

/// What followers of a job know: whether it has ended, and its latest committed output.
#[derive(Debug, Default)]
pub struct Progress {
    pub finished: bool,
    /// The latest committed chunks (start offset, bytes), in offset order: one copy for all
    /// followers, so that a follower at the live edge reads memory, not SQLite.
    recent: VecDeque<(i64, Bytes)>,
}

impl Progress {
    /// Adds a chunk that is now committed, forgetting the oldest past [`RECENT_CHUNKS`].
    fn committed(&mut self, start_offset: i64, bytes: Bytes) {
        if self.recent.len() == RECENT_CHUNKS {
            self.recent.pop_front();
        }
        self.recent.push_back((start_offset, bytes));
    }

    /// Up to `limit` committed chunks from `offset` on, if memory still holds everything
    /// from `offset`: `None` when the caller must read SQLite (it is behind what memory
    /// holds, or memory holds nothing), an empty list when nothing past `offset` is
    /// committed yet. The first chunk may begin before `offset`.
    fn recent_from(&self, offset: i64, limit: usize) -> Option<Vec<(i64, Bytes)>> {
        let &(first, _) = self.recent.front()?;
        if offset < first {
            return None;
        }
        let end = |&(start, ref bytes): &(i64, Bytes)| start + length(bytes);
        let from = self.recent.partition_point(|chunk| end(chunk) <= offset);
        Some(self.recent.range(from..).take(limit).cloned().collect())
    }
}

/// A buffer's length as an output offset. In-memory lengths always fit an `i64`; were one
/// not to, saturating keeps offsets moving forward, so nothing is ever served twice.
fn length(bytes: &[u8]) -> i64 {
    i64::try_from(bytes.len()).unwrap_or(i64::MAX)
}

/// What the output pump saw.
#[derive(Debug)]
pub struct PumpSummary {
    /// Output was dropped: past the limit, or lost to a failed commit.
    pub truncated: bool,
}

/// Reads stdout and stderr as they come, in arrival order, coalesces them into chunks and
/// sends them through the writer, several in flight; each commit moves `progress` on. Bytes
/// past `limit` are read (so the job never blocks on a full pipe) and dropped, and so is
/// everything after a chunk that could not be stored: what is stored stays a prefix.
pub async fn pump(
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    job_seq: i64,
    writer: Writer<OutputChunk, Stored>,
    progress: watch::Sender<Progress>,
    limit: u64,
) -> PumpSummary {
    let (pieces, mut arriving) = mpsc::channel::<Bytes>(IN_FLIGHT);
    if let Some(stdout) = stdout {
        tokio::spawn(read_pipe(stdout, pieces.clone()));
    }
    if let Some(stderr) = stderr {
        tokio::spawn(read_pipe(stderr, pieces.clone()));
    }
    drop(pieces);

    let mut pending = Vec::with_capacity(CHUNK);
    let mut accepted: u64 = 0;
    let mut truncated = false;
    let mut in_flight = FuturesOrdered::new();
    let mut open = true;
    // A chunk was lost or refused: the rest is read and dropped.
    let mut storing = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(committed) = in_flight.next(), if !in_flight.is_empty() => {
                match committed {
                    Ok((Stored::Kept, start_offset, bytes)) => progress
                        .send_modify(|progress| progress.committed(start_offset, bytes)),
                    Ok((Stored::Dropped, ..)) => {
                        truncated = true;
                        storing = false;
                    }
                    Err(fault) => {
                        // The bytes are gone; say so on the job rather than pretend.
                        truncated = true;
                        storing = false;
                        tracing::error!(%fault, job_seq, "job output could not be stored; the rest is dropped");
                    }
                }
            }
            piece = arriving.recv(), if open && in_flight.len() < IN_FLIGHT => {
                let Some(piece) = piece else {
                    open = false;
                    continue;
                };
                let mut accept = |piece: &Bytes, pending: &mut Vec<u8>| {
                    if !storing {
                        return;
                    }
                    // Room past u64::MAX or usize::MAX is room for the whole piece.
                    let room = usize::try_from(limit.saturating_sub(accepted)).unwrap_or(usize::MAX);
                    let kept = piece.len().min(room);
                    truncated |= kept < piece.len();
                    accepted += kept as u64;
                    pending.extend_from_slice(&piece[..kept]);
                };
                accept(&piece, &mut pending);
                // Take what else has already arrived, up to a chunk, without waiting.
                while pending.len() < CHUNK {
                    match arriving.try_recv() {
                        Ok(piece) => accept(&piece, &mut pending),
                        Err(_) => break,
                    }
                }
                if pending.is_empty() {
                    continue;
                }
                let bytes = if pending.len() < CHUNK / 2 {
                    // A trickle: copy it out rather than keep a whole chunk's allocation
                    // alive in the queue and in the followers' memory.
                    let bytes = Bytes::copy_from_slice(&pending);
                    pending.clear();
                    bytes
                } else {
                    Bytes::from(std::mem::replace(&mut pending, Vec::with_capacity(CHUNK)))
                };
                let start_offset =
                    i64::try_from(accepted).unwrap_or(i64::MAX) - length(&bytes);
                let writer = writer.clone();
                let chunk = OutputChunk { job_seq, start_offset, bytes: bytes.clone(), truncated };
                in_flight.push_back(async move {
                    writer.submit(chunk).await.map(|stored| (stored, start_offset, bytes))
                });
            }
        }
    }
    PumpSummary { truncated }
}

async fn read_pipe(mut pipe: impl AsyncRead + Unpin, pieces: mpsc::Sender<Bytes>) {
    let mut buffer = BytesMut::with_capacity(CHUNK);
    loop {
        match pipe.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if pieces.send(buffer.split().freeze()).await.is_err() {
                    return;
                }
                if buffer.capacity() < CHUNK / 4 {
                    buffer = BytesMut::with_capacity(CHUNK);
                }
            }
        }
    }
}

/// Reads a job's output a few chunks at a time, as the client takes it: from the followers'
/// window at the live edge, from SQLite behind it. Memory stays bounded however slow the
/// client; a client that goes away just drops this (and with it its [`Following`]).
///
/// Once the drain begins, every reader, following or not, ends where it is, with an error:
/// the response is cut short rather than ended, so no client takes what it got for the whole
/// output (it can come back for the rest with `?offset=`), and no stream holds the drain open.
pub struct OutputReader {
    reads: SqlitePool,
    seq: i64,
    offset: i64,
    /// Present while following a job that has not ended.
    following: Option<Following>,
    shutdown: CancellationToken,
    ready: VecDeque<Bytes>,
    done: bool,
}

impl OutputReader {
    /// A reader of job `seq`'s output from `offset`; with `following`, it goes on as output
    /// is committed and ends when the job does. Either way it is cut short when `shutdown`
    /// is cancelled.
    pub fn new(
        reads: SqlitePool,
        seq: i64,
        offset: i64,
        following: Option<Following>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            reads,
            seq,
            offset,
            following,
            shutdown,
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// The bytes as a stream, for a response body.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, Self::next)
    }

    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        loop {
            if self.shutdown.is_cancelled() && !self.done {
                self.done = true;
                self.ready.clear();
                return Some((Err(std::io::Error::other("warden is shutting down")), self));
            }
            if let Some(bytes) = self.ready.pop_front() {
                return Some((Ok(bytes), self));
            }
            if self.done {
                return None;
            }
            // At the live edge the chunks are still in memory; behind it, in SQLite.
            let recent = self.following.as_mut().and_then(|following| {
                following
                    .progress()
                    .borrow_and_update()
                    .recent_from(self.offset, READ_CHUNKS)
            });
            let chunks = match recent {
                Some(chunks) => Ok(chunks),
                None => store::read_output(&self.reads, self.seq, self.offset, READ_CHUNKS)
                    .await
                    .map(|chunks| {
                        chunks
                            .into_iter()
                            .map(|(start, bytes)| (start, Bytes::from(bytes)))
                            .collect()
                    }),
            };
            match chunks {
                Ok(chunks) => self.take(chunks),
                Err(error) => {
                    tracing::error!(%error, "reading job output failed; ending the stream");
                    self.done = true;
                    return Some((
                        Err(std::io::Error::other("the output could not be read")),
                        self,
                    ));
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            let Some(following) = &mut self.following else {
                return None;
            };
            if following.progress().borrow().finished {
                // Everything was committed before `finished`: one more read, then the end.
                self.following = None;
                continue;
            }
            tokio::select! {
                changed = following.progress().changed() => {
                    if changed.is_err() {
                        self.following = None;
                    }
                }
                // Shutting down: the top of the loop cuts the stream.
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Queues what of `chunks` lies at or past `offset`, moving `offset` on.
    fn take(&mut self, chunks: Vec<(i64, Bytes)>) {
        for (start, bytes) in chunks {
            // A chunk past `offset` means bytes that were never stored (the job says
            // `outputTruncated`): go on from where stored output resumes.
            self.offset = self.offset.max(start);
            // Never negative (offset >= start); were it unrepresentable, skip the whole
            // chunk rather than serve bytes twice.
            let skip = usize::try_from(self.offset - start).unwrap_or(usize::MAX);
            if skip < bytes.len() {
                let bytes = bytes.slice(skip..);
                self.offset += length(&bytes);
                self.ready.push_back(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(chunks: &[(i64, Bytes)]) -> Vec<i64> {
        chunks.iter().map(|&(start, _)| start).collect()
    }

    #[test]
    fn followers_read_memory_only_while_it_holds_everything_from_their_offset() {
        let mut progress = Progress::default();
        assert_eq!(
            progress.recent_from(0, 8),
            None,
            "nothing held: read SQLite"
        );
        for start in (0..40).map(|n| n * 10) {
            progress.committed(start, Bytes::from(vec![b'x'; 10]));
        }
        // The oldest eight of forty chunks are forgotten: 80..400 is held.
        assert_eq!(
            progress.recent_from(79, 8),
            None,
            "behind memory: read SQLite"
        );
        assert_eq!(starts(&progress.recent_from(80, 3).unwrap()), [80, 90, 100]);
        // An offset inside a chunk gets that chunk (the caller skips what it has).
        assert_eq!(starts(&progress.recent_from(395, 8).unwrap()), [390]);
        assert_eq!(
            progress.recent_from(400, 8),
            Some(Vec::new()),
            "at the edge"
        );
    }

    #[test]
    fn a_chunk_lost_to_a_failed_commit_leaves_a_gap_followers_skip() {
        let mut progress = Progress::default();
        progress.committed(0, Bytes::from_static(b"abc"));
        progress.committed(10, Bytes::from_static(b"def"));
        assert_eq!(starts(&progress.recent_from(3, 8).unwrap()), [10]);
    }
}
