//! Segment-parallel apply, for a terminal (or a server) with more than one
//! core and memory for more than one set of decoders: a patch's segments are
//! independent (each resets its decoders and models, names its old start and
//! its new offset), so up to `threads` of them are decoded at once, each by an
//! ordinary [`Applier`] that applies one segment and writes its bytes at
//! their offset in the output file.
//!
//! Nothing is trusted earlier than in the streaming applier: the start of the
//! patch is judged (limits, policy, signatures) and the old image verified
//! before any segment is decoded, every segment's framing and check is
//! verified (the walk of [`crate::inspect_each`] and again by its worker), and
//! a coordinator takes the segments back in order as they finish, reading the
//! new bytes back to hash the new image: after each one (a segment whose
//! predecessors are all done) the sink gets the same checkpoint a streaming
//! apply would have given it, so [`Applier::resume`] can continue after a
//! kill. The new image's hash (which also covers the last segment, stored
//! without a check in ordinary patches) is compared at the end.
//!
//! Memory: `threads` times the patch's decoders ([`ApplyOptions::memory_limit`]
//! must hold them all: [`parallel_threads`]), 40 bytes per segment for the
//! walk, and one 64 KiB read-back buffer. Passes: one over the old image to
//! verify it, one over the patch to walk it, one over the patch to decode it,
//! and one over the new image to hash it.

use crate::applier::{Applier, ApplyOptions, ApplyReport};
use crate::error::ApplyError;
use crate::inspect::inspect_each;
use crate::patch_reader::{read_start, Limits};
use crate::sink::Sink;
use crate::source::OldImage;
use crate::BUFFER_LEN;
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::{chain, Checkpoint, HASH_LEN};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Most segments a parallel apply walks (their heads are kept: 40 bytes
/// each); a patch with more is applied by the streaming applier.
pub const MAX_PARALLEL_SEGMENTS: u32 = 1 << 16;

/// Read-back buffer of the coordinator.
const READ_BACK: usize = 64 * 1024;

/// How many segments of the patch whose header is `header` to decode at
/// once with up to `threads` threads under `opts`: at most one per segment,
/// and as many as `opts.memory_limit` holds decoders for. 1 means: apply it
/// with the streaming applier. No I/O.
pub fn parallel_threads(header: &Header, opts: &ApplyOptions, threads: usize) -> usize {
    let each = header.apply_memory.max(1);
    let by_memory = (opts.memory_limit / each).max(1);
    let segments = match header.cell_len() {
        Some(_) => 1,
        None if header.segment_count > MAX_PARALLEL_SEGMENTS => 1,
        None => u64::from(header.segment_count),
    };
    (threads as u64).min(by_memory).min(segments).max(1) as usize
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

/// A worker's output: its segment's bytes, written at their offset.
struct WriteAt<'f> {
    file: &'f File,
    at: u64,
}

impl Sink for WriteAt<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.at)?;
        self.at += data.len() as u64;
        Ok(())
    }
}

/// Apply the patch in the file `patch` to `old`, decoding up to `threads`
/// segments at once (see [`parallel_threads`]) and writing the new image
/// into `out` (a file the caller created, empty) by offset. `sink` is told
/// of each checkpoint as segments finish in order (e.g. a
/// [`crate::ResumableFile`] whose partial file `out` is): its `write` is
/// never called.
///
/// On an error, `out` holds garbage (the caller discards it, as after a
/// failed streaming apply); the error is the one the streaming applier
/// would give for the first failing segment, or for the start.
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
    // The start: read as the streaming applier reads it, then accepted
    // (limits, policy, old image) before anything else.
    let start = read_start(
        &mut FileAt {
            file: patch,
            pos: 0,
        },
        Limits::none(),
    )?;
    let body_start = start.start().ok_or(ApplyError::Poisoned)?.body_start;
    let mut start_bytes = vec![0u8; usize::try_from(body_start).map_err(|_| ApplyError::Poisoned)?];
    FileAt {
        file: patch,
        pos: 0,
    }
    .read_exact(&mut start_bytes)
    .map_err(ApplyError::PatchRead)?;
    let (verdict, reader) =
        Applier::accept_start_only(old, Vec::new(), opts.clone(), &start_bytes)?;
    let start = reader.into_start().ok_or(ApplyError::Poisoned)?;
    let header = start.header;
    let threads = parallel_threads(&header, &opts, threads);

    // The segments: framing, checks and cover verified, trailing bytes refused.
    let mut segments: Vec<(SegmentHeader, u64)> = Vec::new();
    let summary = inspect_each(
        FileAt {
            file: patch,
            pos: 0,
        },
        |seg, at| segments.push((*seg, at)),
    )?;
    if summary.header_bytes != start.header_bytes {
        // The file changed under us between two reads.
        return Err(ApplyError::Poisoned);
    }
    let ends: Vec<u64> = segments
        .iter()
        .skip(1)
        .map(|s| s.1)
        .chain([summary.patch_len])
        .collect();

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<[u8; HASH_LEN], ApplyError>)>();
    let mut first_error: Option<(usize, ApplyError)> = None;
    let mut hasher = blake3::Hasher::new();
    let mut chain = start.header_hash;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let (next, stop, segments, ends) = (&next, &stop, &segments, &ends);
            let (opts, start_bytes) = (&opts, &start_bytes);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= segments.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let (seg, at) = segments[i];
                let result = apply_one(old, patch, out, opts, start_bytes, &seg, at, ends[i]);
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                if done_tx.send((i, result)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        // Take finished segments back in order: hash their new bytes, chain
        // their hashes, hand the sink its checkpoint.
        let mut finished: Vec<Option<[u8; HASH_LEN]>> = vec![None; segments.len()];
        let mut in_order = 0usize;
        let mut produced = 0u64;
        let mut buf = vec![0u8; READ_BACK];
        for (i, result) in done_rx {
            match result {
                Ok(hash) => finished[i] = Some(hash),
                Err(e) => {
                    if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_error = Some((i, e));
                    }
                    continue;
                }
            }
            if first_error.is_some() {
                continue;
            }
            while let Some(Some(hash)) = finished.get(in_order) {
                let (seg, _) = segments[in_order];
                let step =
                    read_back(out, &mut hasher, &mut buf, produced, seg.new_len).and_then(|()| {
                        produced += seg.new_len;
                        chain = chain::next(&chain, hash);
                        let checkpoint = Checkpoint {
                            header_hash: start.header_hash,
                            next_segment: in_order as u32 + 1,
                            patch_offset: ends[in_order],
                            new_offset: produced,
                            chain,
                            new_hash: *hasher.clone().finalize().as_bytes(),
                        };
                        sink.segment_done(&seg, &checkpoint)
                            .map_err(ApplyError::Sink)
                    });
                if let Err(e) = step {
                    stop.store(true, Ordering::Relaxed);
                    first_error = Some((in_order, e));
                    break;
                }
                in_order += 1;
            }
        }
    });
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    if *hasher.finalize().as_bytes() != header.new_hash {
        return Err(ApplyError::NewHashMismatch);
    }
    Ok(ApplyReport {
        header,
        patch_len: summary.patch_len,
        already_applied: false,
        verdict,
    })
}

/// Decode segment `seg` (patch bytes `at..end`) into `out` at its offset;
/// returns the segment's hash once its checks passed.
#[allow(clippy::too_many_arguments)]
fn apply_one<O: OldImage + ?Sized>(
    old: &O,
    patch: &File,
    out: &File,
    opts: &ApplyOptions,
    start_bytes: &[u8],
    seg: &SegmentHeader,
    at: u64,
    end: u64,
) -> Result<[u8; HASH_LEN], ApplyError> {
    let sink = WriteAt {
        file: out,
        at: seg.new_offset,
    };
    let mut a = Applier::for_segment(
        old,
        sink,
        opts.clone(),
        start_bytes,
        seg.index,
        seg.new_offset,
        at,
    )?;
    let mut buf = vec![0u8; BUFFER_LEN];
    let mut pos = at;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        patch
            .read_exact_at(&mut buf[..n], pos)
            .map_err(ApplyError::PatchRead)?;
        a.feed(&buf[..n])?;
        pos += n as u64;
    }
    let hash = a.last_segment_hash();
    a.finish()?;
    hash.ok_or(ApplyError::Poisoned)
}

/// Hash `len` bytes of `out` from `from` into `hasher`.
fn read_back(
    out: &File,
    hasher: &mut blake3::Hasher,
    buf: &mut [u8],
    from: u64,
    len: u64,
) -> Result<(), ApplyError> {
    let mut pos = from;
    let end = from + len;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        out.read_exact_at(&mut buf[..n], pos)
            .map_err(ApplyError::Sink)?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}
