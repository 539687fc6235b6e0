//! Segment-parallel apply, for a terminal (or a server) with more than one
//! core and memory for more than one set of decoders: a patch's segments are
//! independent (each resets its decoders and models, names its old start and
//! its new offset), so up to `threads` of them are decoded at once, each by
//! an ordinary [`Applier`] limited to one segment at a time, writing its bytes
//! at their offset in the output file.
//!
//! Nothing is trusted earlier than in the streaming applier: the start of the
//! patch is read under the options' limits and judged (policy, signatures)
//! and the old image verified before any segment is touched. A walker reads
//! the segment heads and checks in order (the framing, not the payloads) and
//! hands each segment to the next free worker, which decodes and verifies it
//! exactly as the streaming applier would. A coordinator takes the segments
//! back in order, reads their new bytes back to hash the new image and gives
//! the sink, after each one, the checkpoint a streaming apply gives, in the
//! same order: after the last segment only once the new image's hash (which
//! covers that segment: an ordinary patch stores no check for it) matched.
//! The error reported is the one of the first segment that failed, as the
//! streaming applier would report it.
//!
//! Memory: `threads` workers, each the patch's claim (its decoders and
//! buffers, kept from one segment to the next), a 16 KiB feed buffer, a
//! 16 KiB output buffer (one `pwrite` per 16 KiB, not per record) and, for
//! an executable-aware patch from an image that reads ahead, 16 KiB of raw
//! old bytes read ahead; the
//! patch's start (header and section) once; the walker's framing buffers and
//! a 16 KiB read-back buffer. [`parallel_threads`] counts all of it against
//! [`ApplyOptions::memory_limit`]; below two workers' worth the patch is
//! applied by the streaming applier. Workers run at most a window of
//! `2 × threads` segments ahead of the coordinator. Passes: one over the old
//! image to verify it, one over the patch, and one over the new image to
//! hash it (from the page cache, just written).

use crate::applier::{Applier, ApplyOptions, ApplyReport};
use crate::atomic_file::Writeback;
use crate::error::{ApplyError, PatchPart};
use crate::patch_reader::{limits, read_start, Mode, Part, PatchReader, ReadParts};
use crate::sink::Sink;
use crate::source::OldImage;
use crate::{IoError, BUFFER_LEN};
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::{chain, Checkpoint, FormatError, MemoryModel, HASH_LEN};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

/// Patches with more segments than this are applied by the streaming
/// applier (a bound on the signature section the workers each hold).
pub const MAX_PARALLEL_SEGMENTS: u32 = 1 << 16;

/// Most threads a parallel apply starts, whatever it is asked for.
pub const MAX_THREADS: usize = 64;

/// Bytes the walker reads at once from a segment's framing (its head, its
/// check): most heads fit.
const FRAMING_READ: usize = 64;

/// What a worker needs beyond the patch's claim: its feed buffer, its
/// output buffer and the predictor's read-ahead (an executable-aware patch
/// from an image that reads ahead).
const WORKER_EXTRA: u64 = 3 * BUFFER_LEN as u64;

/// What the coordinator and the walker need besides the workers, for a
/// patch whose header is `header`: the patch's start kept for the workers
/// (header and signature section), the walker's framing buffers and the
/// read-back buffer.
fn coordinator_reserve(header: &Header) -> u64 {
    let section = match header.is_signed() {
        true => MemoryModel::signed_extra(u64::from(header.segment_count)),
        false => 0,
    };
    header.encoded_len_bound() as u64 + section + 2 * BUFFER_LEN as u64
}

/// How many segments of the patch whose header is `header` to decode at
/// once with up to `threads` threads under `opts`: at most one per segment,
/// [`MAX_THREADS`], and as many workers as `opts.memory_limit` holds besides
/// the coordinator (see the module doc). 1 means: apply it with the
/// streaming applier (in-place patches, patches of one segment, or of more
/// than [`MAX_PARALLEL_SEGMENTS`]). No I/O.
pub fn parallel_threads(header: &Header, opts: &ApplyOptions, threads: usize) -> usize {
    if header.cell_len().is_some()
        || header.segment_count < 2
        || header.segment_count > MAX_PARALLEL_SEGMENTS
    {
        return 1;
    }
    let each = header.apply_memory.saturating_add(WORKER_EXTRA).max(1);
    let by_memory = opts
        .memory_limit
        .saturating_sub(coordinator_reserve(header))
        / each;
    let n = (threads.min(MAX_THREADS) as u64)
        .min(by_memory)
        .min(u64::from(header.segment_count));
    n.max(1) as usize
}

/// Reads a file from an offset by `pread`, leaving its position alone.
struct FileAt<'f> {
    file: &'f File,
    pos: u64,
}

impl Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A worker's output: its segment's bytes, gathered into pieces of up to
/// `cap` bytes and written at their offset (a `pwrite` per record would
/// cost a system call for every few bytes). [`WriteAt::flush`] writes what
/// is held.
struct WriteAt<'f> {
    file: &'f File,
    /// Offset of `held[0]` in the output.
    at: u64,
    held: Vec<u8>,
    cap: usize,
    writeback: Writeback,
}

impl<'f> WriteAt<'f> {
    /// Output to `file` from offset `at`; holds up to `BUFFER_LEN` bytes.
    fn new(file: &'f File, at: u64) -> Self {
        Self::with_capacity(file, at, BUFFER_LEN)
    }

    /// Output to `file` from offset `at`; holds up to `cap` bytes (0:
    /// every write goes straight to the file).
    fn with_capacity(file: &'f File, at: u64, cap: usize) -> Self {
        WriteAt {
            file,
            at,
            held: Vec::with_capacity(cap),
            cap,
            writeback: Writeback::at(at),
        }
    }

    /// Write `data` at `*at` and move `*at` past it (the fields it needs,
    /// so the held bytes can be written from `self.held`).
    fn put(
        file: &File,
        at: &mut u64,
        writeback: &mut Writeback,
        data: &[u8],
    ) -> Result<(), IoError> {
        file.write_all_at(data, *at)?;
        writeback.wrote(file, *at, data.len() as u64);
        *at += data.len() as u64;
        Ok(())
    }

    /// Write out what is held; the next byte goes to `at` (where the held
    /// bytes ended if `None`).
    fn flush_to(&mut self, at: Option<u64>) -> Result<(), IoError> {
        if !self.held.is_empty() {
            Self::put(self.file, &mut self.at, &mut self.writeback, &self.held)?;
            self.held.clear();
        }
        if let Some(at) = at {
            self.at = at;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.flush_to(None)
    }
}

impl Sink for WriteAt<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        if self.held.len() + data.len() > self.cap {
            self.flush()?;
        }
        if data.len() >= self.cap {
            Self::put(self.file, &mut self.at, &mut self.writeback, data)?;
        } else {
            self.held.extend_from_slice(data);
        }
        Ok(())
    }
    fn segment_done(&mut self, _: &SegmentHeader, _: &Checkpoint) -> Result<(), IoError> {
        self.flush()
    }
}

/// The streaming applier's output when it stands in: bytes into `out` in
/// order, checkpoints to the caller's sink.
struct Forward<'f, S: ?Sized> {
    out: WriteAt<'f>,
    sink: &'f mut S,
}

impl<S: Sink + ?Sized> Sink for Forward<'_, S> {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        self.out.write(data)
    }
    fn segment_done(&mut self, seg: &SegmentHeader, cp: &Checkpoint) -> Result<(), IoError> {
        // The checkpoint promises the bytes before it: write them first.
        self.out.flush()?;
        self.sink.segment_done(seg, cp)
    }
}

/// One segment for a worker: its head and its patch bytes `at..end`.
#[derive(Clone, Copy)]
struct Job {
    seg: SegmentHeader,
    at: u64,
    end: u64,
}

/// What a worker or the walker reports for a segment: its hash once it is
/// applied and verified, `None` if it stopped because another one failed.
type Outcome = Result<Option<[u8; HASH_LEN]>, ApplyError>;

/// How far the coordinator has taken segments back, for the workers'
/// window; and whether to stop.
struct Progress {
    in_order: Mutex<u32>,
    moved: Condvar,
    stop: AtomicBool,
}

impl Progress {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.moved.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Wait until segment `index` is within `window` of the coordinator
    /// (or the apply stopped); returns whether to go on.
    fn wait_for_turn(&self, index: u32, window: u32) -> bool {
        let mut at = self.in_order.lock().unwrap_or_else(|e| e.into_inner());
        while !self.stopped() && index >= at.saturating_add(window) {
            at = self.moved.wait(at).unwrap_or_else(|e| e.into_inner());
        }
        !self.stopped()
    }

    fn advance(&self, to: u32) {
        *self.in_order.lock().unwrap_or_else(|e| e.into_inner()) = to;
        self.moved.notify_all();
    }
}

/// Apply the patch in the file `patch` to `old`, decoding up to `threads`
/// segments at once (see [`parallel_threads`]) and writing the new image
/// into `out` (a file the caller created, empty) by offset. `sink` is told
/// of each checkpoint as segments finish in order (e.g. a
/// [`crate::ResumableFile`] whose partial file `out` is): its `write` is
/// never called. Where [`parallel_threads`] says 1, the streaming applier
/// does the work, into `out` and `sink` the same way.
///
/// On an error `out` holds garbage (the caller discards it, as after a
/// failed streaming apply), and the error is the streaming applier's for the
/// first segment that failed (or for the start).
pub fn apply_parallel<O, S>(
    old: &O,
    patch: &File,
    out: &File,
    sink: &mut S,
    opts: ApplyOptions,
    threads: usize,
) -> Result<ApplyReport, ApplyError>
where
    O: OldImage + Sync + ?Sized,
    S: Sink + ?Sized,
{
    // The start, read as the streaming applier reads it (under the limits).
    let first = read_start(
        &mut FileAt {
            file: patch,
            pos: 0,
        },
        limits(&opts, Mode::NewImage),
    )?;
    let start = first.start().ok_or(ApplyError::Poisoned)?;
    let threads = parallel_threads(&start.header, &opts, threads);
    let body_start = start.body_start;
    // The streaming applier stands in: its output buffer only if the
    // memory limit leaves room for it besides the patch's claim.
    let room = opts.memory_limit.saturating_sub(start.header.apply_memory);
    drop(first);
    if threads <= 1 {
        let cap = room.min(BUFFER_LEN as u64) as usize;
        let forward = Forward {
            out: WriteAt::with_capacity(out, 0, cap),
            sink,
        };
        let a = Applier::new(old, forward, opts);
        let (report, mut forward) = a.finish_from(FileAt {
            file: patch,
            pos: 0,
        })?;
        forward.out.flush().map_err(ApplyError::Sink)?;
        return Ok(report);
    }
    let mut start_bytes = vec![0u8; usize::try_from(body_start).map_err(|_| ApplyError::Poisoned)?];
    patch
        .read_exact_at(&mut start_bytes, 0)
        .map_err(ApplyError::PatchRead)?;
    // Limits, policy, signatures, old image: before any segment.
    let (verdict, mut framing) =
        Applier::accept_start_only(old, Vec::new(), opts.clone(), &start_bytes)?;
    // The workers hold the check table; the walker needs only the header.
    framing.take_section();
    let (header, header_hash) = match framing.start() {
        Some(s) => (s.header.clone(), s.header_hash),
        None => return Err(ApplyError::Poisoned),
    };
    let patch_len = patch.metadata().map_err(ApplyError::PatchRead)?.len();
    let count = header.segment_count;
    let window = (2 * threads) as u32;

    let progress = Progress {
        in_order: Mutex::new(0),
        moved: Condvar::new(),
        stop: AtomicBool::new(false),
    };
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(u32, Outcome, Option<Job>)>();
    let mut first_error: Option<(u32, ApplyError)> = None;

    std::thread::scope(|scope| {
        let walker = std::thread::Builder::new().spawn_scoped(scope, {
            let (done, progress) = (done_tx.clone(), &progress);
            move || walk(framing, patch, patch_len, job_tx, &done, progress)
        });
        if let Err(e) = walker {
            first_error = Some((0, ApplyError::PatchRead(e)));
            progress.stop();
        }
        for _ in 0..threads {
            let done = done_tx.clone();
            let (job_rx, progress, opts, start_bytes) = (&job_rx, &progress, &opts, &start_bytes);
            let spawned = std::thread::Builder::new().spawn_scoped(scope, move || {
                work(
                    old,
                    patch,
                    out,
                    opts,
                    start_bytes,
                    job_rx,
                    &done,
                    progress,
                    window,
                )
            });
            if let Err(e) = spawned {
                if first_error.is_none() {
                    first_error = Some((0, ApplyError::Sink(e.into())));
                }
                progress.stop();
                break;
            }
        }
        drop(done_tx);

        // Take segments back in order: hash their new bytes, chain their
        // hashes, check the new image before the last checkpoint, hand out
        // the checkpoints.
        let mut finished: BTreeMap<u32, ([u8; HASH_LEN], Job)> = BTreeMap::new();
        let mut in_order = 0u32;
        let mut produced = 0u64;
        let mut chain = header_hash;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; BUFFER_LEN];
        for (index, outcome, job) in done_rx {
            match (outcome, job) {
                (Ok(Some(hash)), Some(job)) => {
                    finished.insert(index, (hash, job));
                }
                (Ok(_), _) => continue,
                (Err(e), _) => {
                    if first_error.as_ref().is_none_or(|(j, _)| index < *j) {
                        first_error = Some((index, e));
                    }
                    progress.stop();
                    continue;
                }
            }
            while first_error.is_none() {
                let Some((hash, job)) = finished.remove(&in_order) else {
                    break;
                };
                let step = take_back(
                    out,
                    &mut hasher,
                    &mut buf,
                    &header,
                    produced,
                    &job,
                    in_order + 1 == count,
                )
                .and_then(|new_hash| {
                    produced += job.seg.new_len;
                    chain = chain::next(&chain, &hash);
                    let checkpoint = Checkpoint {
                        header_hash,
                        next_segment: in_order + 1,
                        patch_offset: job.end,
                        new_offset: produced,
                        chain,
                        new_hash,
                    };
                    sink.segment_done(&job.seg, &checkpoint)
                        .map_err(ApplyError::Sink)
                });
                if let Err(e) = step {
                    first_error = Some((in_order, e));
                    progress.stop();
                    break;
                }
                in_order += 1;
                progress.advance(in_order);
            }
        }
    });
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    Ok(ApplyReport {
        header,
        patch_len,
        already_applied: false,
        verdict,
    })
}

/// Hash the new bytes of the segment `job` (at `from` in `out`); for the
/// last segment, check that the segments covered the new image and that it
/// has the header's hash (what verifies a last segment without a check).
/// Returns the hash of the new image so far (for the checkpoint).
#[allow(clippy::too_many_arguments)]
fn take_back(
    out: &File,
    hasher: &mut blake3::Hasher,
    buf: &mut [u8],
    header: &Header,
    from: u64,
    job: &Job,
    last: bool,
) -> Result<[u8; HASH_LEN], ApplyError> {
    let end = from + job.seg.new_len;
    let mut pos = from;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        out.read_exact_at(&mut buf[..n], pos)
            .map_err(|e| ApplyError::Sink(e.into()))?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    let so_far = *hasher.clone().finalize().as_bytes();
    if last {
        if end != header.new_len {
            return Err(FormatError::SegmentsCover {
                covered: end,
                new_len: header.new_len,
            }
            .into());
        }
        if so_far != header.new_hash {
            return Err(ApplyError::NewHashMismatch);
        }
    }
    Ok(so_far)
}

/// The walker: read every segment's head (and stored check) in order from
/// `patch` with `framing` (a reader past the patch's start), and hand each
/// segment to the workers. A framing error, a payload past the end of the
/// file, or bytes after the last segment are reported for the segment they
/// belong to (after the last: as the segment count).
fn walk(
    mut framing: PatchReader,
    patch: &File,
    patch_len: u64,
    jobs: mpsc::SyncSender<Job>,
    done: &mpsc::Sender<(u32, Outcome, Option<Job>)>,
    progress: &Progress,
) {
    let Some(header) = framing.start().map(|s| s.header.clone()) else {
        return;
    };
    for index in 0..header.segment_count {
        if progress.stopped() {
            return;
        }
        let step = frame_segment(&mut framing, &header, patch, patch_len, index);
        let mut job = match step {
            Ok(job) => job,
            Err(e) => {
                let _ = done.send((index, Err(e), None));
                return;
            }
        };
        // Hand it over; while every worker is busy, wait (and give up if
        // the apply stopped, so a walker never outlives a failed apply).
        loop {
            match jobs.try_send(job) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(j)) => {
                    if progress.stopped() {
                        return;
                    }
                    job = j;
                    let at = progress.in_order.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = progress
                        .moved
                        .wait_timeout(at, std::time::Duration::from_millis(5));
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
    }
    if framing.offset() != patch_len {
        let _ = done.send((header.segment_count, Err(ApplyError::TrailingData), None));
    }
}

/// Read segment `index`'s head (and stored check) with `framing`, which
/// stands where the segment starts; the payload is skipped, only its
/// presence in the file checked.
fn frame_segment(
    framing: &mut PatchReader,
    header: &Header,
    patch: &File,
    patch_len: u64,
    index: u32,
) -> Result<Job, ApplyError> {
    let at = framing.offset();
    // Framing is read a byte at a time: through a small buffer, not a
    // system call a byte.
    let reader = |pos| io::BufReader::with_capacity(FRAMING_READ, FileAt { file: patch, pos });
    let mut r = reader(at);
    framing.expect_segment(index);
    let Part::Segment(seg) = framing.read_part(&mut r)? else {
        return Err(ApplyError::Poisoned);
    };
    let payload_end = framing.offset() + u64::from(seg.payload_len);
    if payload_end > patch_len {
        return Err(ApplyError::Truncated {
            stage: PatchPart::Segment(index),
            offset: patch_len,
        });
    }
    framing.skipped(u64::from(seg.payload_len));
    if !header.is_signed() && header.segment_has_check(index) {
        framing.expect_check();
        let Part::Check(_) = framing.read_part(&mut reader(payload_end))? else {
            return Err(ApplyError::Poisoned);
        };
    }
    Ok(Job {
        seg,
        at,
        end: framing.offset(),
    })
}

/// A worker: take segments from `jobs` and apply each with one applier
/// (made for the first, reused for the next), at most `window` segments
/// ahead of the coordinator.
#[allow(clippy::too_many_arguments)]
fn work<O: OldImage + ?Sized>(
    old: &O,
    patch: &File,
    out: &File,
    opts: &ApplyOptions,
    start_bytes: &[u8],
    jobs: &Mutex<mpsc::Receiver<Job>>,
    done: &mpsc::Sender<(u32, Outcome, Option<Job>)>,
    progress: &Progress,
    window: u32,
) {
    let mut applier: Option<Applier<'_, O, WriteAt<'_>>> = None;
    let mut buf = vec![0u8; BUFFER_LEN];
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv_timeout(std::time::Duration::from_millis(5))
        };
        let job = match job {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) if !progress.stopped() => continue,
            Err(_) => return,
        };
        if !progress.wait_for_turn(job.seg.index, window) {
            return;
        }
        let outcome = apply_one(
            &mut applier,
            old,
            patch,
            out,
            opts,
            start_bytes,
            &job,
            &mut buf,
            progress,
        );
        if outcome.is_err() {
            applier = None;
        }
        if done.send((job.seg.index, outcome, Some(job))).is_err() {
            return;
        }
    }
}

/// Apply segment `job` with `applier` (made if there is none), reading its
/// patch bytes through `buf`. `Ok(None)`: stopped because another segment
/// failed.
#[allow(clippy::too_many_arguments)]
fn apply_one<'o, 'f, O: OldImage + ?Sized>(
    applier: &mut Option<Applier<'o, O, WriteAt<'f>>>,
    old: &'o O,
    patch: &File,
    out: &'f File,
    opts: &ApplyOptions,
    start_bytes: &[u8],
    job: &Job,
    buf: &mut [u8],
    progress: &Progress,
) -> Outcome {
    let seg = &job.seg;
    let a = match applier {
        Some(a) => {
            a.next_job(seg.index, seg.new_offset, job.at)?;
            a.sink_mut()
                .flush_to(Some(seg.new_offset))
                .map_err(ApplyError::Sink)?;
            a
        }
        None => applier.insert(Applier::for_segment(
            old,
            WriteAt::new(out, seg.new_offset),
            opts.clone(),
            start_bytes,
            seg.index,
            seg.new_offset,
            job.at,
        )?),
    };
    let mut pos = job.at;
    while pos < job.end {
        if progress.stopped() {
            return Ok(None);
        }
        let n = (job.end - pos).min(buf.len() as u64) as usize;
        patch.read_exact_at(&mut buf[..n], pos).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ApplyError::Truncated {
                    stage: PatchPart::Segment(seg.index),
                    offset: pos,
                }
            } else {
                ApplyError::PatchRead(e)
            }
        })?;
        a.feed(&buf[..n])?;
        pos += n as u64;
    }
    // The coordinator reads the segment back from the file.
    a.sink_mut().flush().map_err(ApplyError::Sink)?;
    match (a.is_done(), a.last_segment_hash()) {
        (true, Some(hash)) => Ok(Some(hash)),
        _ => Err(ApplyError::Truncated {
            stage: PatchPart::Segment(seg.index),
            offset: job.end,
        }),
    }
}
