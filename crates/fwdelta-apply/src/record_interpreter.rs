//! The one loop that applies records. Every layout decodes a segment into
//! the same three kinds of data — record heads, difference bytes and literal
//! bytes — and hands them out through [`RecordSource`]; the
//! [`RecordInterpreter`] owns everything else: the segment's cursor (where
//! in the old and new image it is, and where in the current record), the
//! reads of the old image (through the reference predictor of an
//! executable-aware patch), the literal filter, and the sink with the
//! running hash of the new image. It validates every record against the
//! segment and the old image before it reads or writes anything for it.
//!
//! The interpreter runs until its source has nothing more to give without
//! further payload bytes (push mode: the applier is fed the patch in pieces
//! of any size), then returns; its state carries over to the next run.
//!
//! Memory: two 16 KiB buffers (old bytes with a byte of context either
//! side; new bytes for difference runs and restored literals), plus the
//! predictor's window. Passes: the old bytes under each copy or difference
//! run are read once, into the old-byte buffer, and the new bytes go to the
//! sink from one buffer: old bytes are copied once on every layout, the
//! modelled one included (whose model takes its context from that same
//! read).

use crate::error::ApplyError;
use crate::predicted_old::Predictor;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::sink::Sink;
use crate::source::OldImage;
use crate::BUFFER_LEN;
use core::fmt;
use fwdelta_format::literal_filter;
use fwdelta_format::record::Record;
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::FormatError;

/// Why a segment's data is refused. Named by its segment, it becomes
/// [`ApplyError::CorruptSegment`] (whose detail is this message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SegmentFault {
    /// A record head or a block header is malformed.
    Format(FormatError),
    /// The payload decoder refused its input (the codec's message).
    Decode(String),
    /// A decoder consumed nothing and produced nothing.
    NoProgress,
    /// Bytes after the end of the (single-stream) compressed frame.
    AfterFrame,
    /// Bytes after the end of the named split stream.
    AfterStream(&'static str),
    /// The payload ended before its compressed stream(s) did.
    FrameOpen,
    /// Record data after the segment's last byte was produced.
    AfterLastRecord,
    /// The stream ended inside a record.
    InsideRecord {
        /// New bytes still to produce.
        left: u64,
        /// The segment's new length.
        len: u64,
    },
    /// A record produces more than its segment has left.
    Overrun {
        /// The record's output.
        len: u64,
        /// What the segment has left.
        left: u64,
    },
    /// A record reads past the end of the old image.
    ReadsPastOld {
        /// Old bytes it reads.
        reads: u64,
        /// From this old offset.
        at: u64,
        /// The old image's length.
        old_len: u64,
    },
    /// A record's seek leaves the old image.
    SeeksOutside {
        /// Where the cursor would go.
        after: i128,
        /// The old image's length.
        old_len: u64,
    },
    /// A split block: a record needs more difference bytes than it holds.
    MissingDiffs,
    /// A split block: a record needs more literal bytes than it holds.
    MissingLiterals,
    /// A split block: difference bytes no record uses.
    UnusedDiffs,
    /// A split block: literal bytes no record uses.
    UnusedLiterals,
    /// A split block: record-head bytes after its last record.
    HeadsAfterLast,
    /// A split block ends inside a record head.
    CutHead,
    /// A modelled block's record heads are malformed.
    Heads(&'static str),
    /// The segment's stored check does not match.
    CheckMismatch,
    /// The signature section's check of the segment does not match.
    SignedCheckMismatch,
    /// In-place: a cell reads old bytes of a cell already overwritten.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    ReadsRewrittenCell {
        /// The cell being decoded.
        cell: u64,
        /// The cell it reads.
        reads: u64,
    },
}

impl fmt::Display for SegmentFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SegmentFault::*;
        match self {
            Format(e) => write!(f, "{e}"),
            Decode(e) => write!(f, "{e}"),
            NoProgress => write!(f, "decoder made no progress"),
            AfterFrame => write!(f, "data after the end of the compressed frame"),
            AfterStream(name) => write!(f, "data after the end of the {name} stream"),
            FrameOpen => write!(f, "compressed payload ends before its frame does"),
            AfterLastRecord => write!(f, "data after the segment's last record"),
            InsideRecord { left, len } => write!(
                f,
                "stream ends inside a record, with {left} of {len} bytes still to produce"
            ),
            Overrun { len, left } => write!(
                f,
                "record of {len} bytes overruns the segment ({left} bytes left)"
            ),
            ReadsPastOld { reads, at, old_len } => write!(
                f,
                "record reads {reads} old bytes at {at}, past the {old_len}-byte old image"
            ),
            SeeksOutside { after, old_len } => write!(
                f,
                "record moves the old cursor to {after}, outside the {old_len}-byte old image"
            ),
            MissingDiffs => write!(f, "a record needs diff bytes its block does not have"),
            MissingLiterals => write!(f, "a record needs literal bytes its block does not have"),
            UnusedDiffs => write!(f, "diff bytes no record of the block uses"),
            UnusedLiterals => write!(f, "literal bytes no record of the block uses"),
            HeadsAfterLast => write!(f, "record-head bytes after the block's last record"),
            CutHead => write!(f, "block ends inside a record head"),
            Heads(why) => write!(f, "{why}"),
            CheckMismatch => write!(f, "segment check mismatch"),
            SignedCheckMismatch => write!(f, "segment check mismatch (signed table)"),
            ReadsRewrittenCell { cell, reads } => write!(
                f,
                "cell {cell} reads old bytes of cell {reads}, which an earlier segment overwrites"
            ),
        }
    }
}

impl SegmentFault {
    /// The error for segment `index`.
    pub(crate) fn at(self, index: u32) -> ApplyError {
        ApplyError::CorruptSegment {
            index,
            detail: self.to_string(),
        }
    }
}

/// A failure while running a source: the segment's data is refused, or
/// something else failed (reading the old image, writing the sink).
pub(crate) enum RunError {
    Fault(SegmentFault),
    Apply(ApplyError),
}

impl From<SegmentFault> for RunError {
    fn from(f: SegmentFault) -> Self {
        RunError::Fault(f)
    }
}

/// What a source has at the start of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// The next record.
    Record(Record),
    /// Part of a head: the rest needs more payload.
    Partial,
    /// Nothing before more payload arrives (or, in a split block, the
    /// block's records are done).
    Nothing,
}

/// Old bytes under a run of difference bytes: `bytes[first..first + len]`
/// are the old image's (as predicted) at `pos..pos + len`. When the source
/// asked for context, `bytes` starts one byte before them unless they start
/// the image, and ends one byte after them unless they end it (the diff
/// model's context); otherwise it is the run alone.
pub(crate) struct OldRun<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) first: usize,
    pub(crate) len: usize,
    pub(crate) pos: u64,
}

impl OldRun<'_> {
    /// The old bytes of the run itself.
    pub(crate) fn run(&self) -> &[u8] {
        &self.bytes[self.first..self.first + self.len]
    }
}

/// A layout's decoded segment data, handed out in record order: the narrow
/// interface between a layout and the [`RecordInterpreter`].
pub(crate) trait RecordSource {
    /// Whether [`Self::diffs`] needs the old byte either side of a run as
    /// context (the diff model). Without it the interpreter reads only the
    /// old bytes records name (in place, a byte more could be a byte of a
    /// cell already rewritten).
    fn diff_context(&self) -> bool {
        false
    }

    /// The next record head (called only between records).
    fn next_head(&mut self) -> Result<Head, SegmentFault>;

    /// Write the current record's next new bytes into `new`: each is the
    /// old byte under it in `old` plus its difference byte. Returns how many
    /// were written, at most `min(old.len, new.len())`; 0 when the rest
    /// needs more payload.
    fn diffs(&mut self, old: &OldRun<'_>, new: &mut [u8]) -> Result<usize, SegmentFault>;

    /// The current record's next literal bytes, at most `max`; empty when
    /// they need more payload.
    fn literals(&mut self, max: usize) -> Result<&[u8], SegmentFault>;
}

/// Where the interpreter is in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Head,
    /// Producing diff bytes, then `literal` literal bytes, then moving by `seek`.
    Diff {
        left: u64,
        literal: u64,
        seek: i64,
    },
    /// Copying literal bytes, then moving by `seek`.
    Literal {
        left: u64,
        seek: i64,
    },
}

/// The segment being applied.
#[derive(Debug, Clone)]
struct Cursor {
    index: u32,
    new_offset: u64,
    new_len: u64,
    remaining: u64,
    old_pos: u64,
    at: At,
    /// Literal bytes of an aligned word not yet complete (literal filter
    /// only): held back until the word is whole, so it can be restored.
    lit_carry: [u8; literal_filter::MAX_HELD],
    lit_carry_len: usize,
}

impl Cursor {
    fn new(head: &SegmentHeader) -> Cursor {
        Cursor {
            index: head.index,
            new_offset: head.new_offset,
            new_len: head.new_len,
            remaining: head.new_len,
            old_pos: head.old_start,
            at: At::Head,
            lit_carry: [0; literal_filter::MAX_HELD],
            lit_carry_len: 0,
        }
    }

    /// New-image offset of the next byte this segment hands to the sink.
    fn new_pos(&self) -> u64 {
        self.new_offset + (self.new_len - self.remaining)
    }
}

/// Reads of the old image, through the predictor of an executable-aware
/// patch, into one buffer that remembers what it holds, so a run handed out
/// in pieces is read once.
pub(crate) struct OldReader<'o, O: ?Sized> {
    old: &'o O,
    predictor: Option<Box<Predictor>>,
    /// `BUFFER_LEN` bytes.
    buf: Vec<u8>,
    /// The old-image range `buf[..held.1 - held.0]` holds.
    held: (u64, u64),
}

impl<'o, O: OldImage + ?Sized> OldReader<'o, O> {
    fn new(old: &'o O, predictor: Option<Box<Predictor>>, buf: Vec<u8>) -> Self {
        OldReader {
            old,
            predictor,
            buf,
            held: (0, 0),
        }
    }

    /// The old image's length.
    pub(crate) fn len(&self) -> u64 {
        self.old.len()
    }

    /// Old bytes at `pos`, at least one and at most `want` (the caller
    /// checked the range is in the image), with a byte of context either
    /// side when `context` is set. Reuses what the buffer holds; otherwise
    /// reads up to `want` bytes (and the context), as many as the buffer
    /// takes, or a whole buffer from there where the image reads ahead
    /// ([`OldImage::read_ahead`]).
    fn run(&mut self, pos: u64, want: usize, context: bool) -> Result<OldRun<'_>, ApplyError> {
        let want = want.min(self.buf.len() - 2 * usize::from(context));
        let len = self.old.len();
        let lo = if context { pos.saturating_sub(1) } else { pos };
        let (hs, he) = self.held;
        // What the held bytes give: up to one byte before their end (the
        // context after the run) unless they end the image.
        let usable_end = if context && he < len {
            he.saturating_sub(1)
        } else {
            he
        };
        let end = if hs <= lo && pos < usable_end {
            usable_end.min(pos + want as u64)
        } else {
            let need = pos + want as u64 + u64::from(context);
            let to = match self.old.read_ahead() && self.predictor.is_none() {
                true => need.max(lo + self.buf.len() as u64),
                false => need,
            }
            .min(len);
            let n = (to - lo) as usize;
            let buf = &mut self.buf[..n];
            self.held = (0, 0);
            match self.predictor.as_deref_mut() {
                Some(p) => p.read(self.old, lo, buf),
                None => self.old.read_at(lo, buf),
            }
            .map_err(ApplyError::OldRead)?;
            self.held = (lo, to);
            (pos + want as u64).min(to)
        };
        let (hs, he) = self.held;
        let stop = if context { (end + 1).min(he) } else { end };
        Ok(OldRun {
            bytes: &self.buf[(lo - hs) as usize..(stop - hs) as usize],
            first: (pos - lo) as usize,
            len: (end - pos) as usize,
            pos,
        })
    }
}

/// The interpreter's two buffers, kept between interpreters by a caller
/// that makes one per segment (the in-place applier, whose sink changes).
pub(crate) struct Buffers {
    old: Vec<u8>,
    new: Vec<u8>,
}

impl Buffers {
    /// Allocates 32 KiB.
    pub(crate) fn new() -> Buffers {
        Buffers {
            old: vec![0; BUFFER_LEN],
            new: vec![0; BUFFER_LEN],
        }
    }
}

/// The new image's receiver: the sink, and what went into it.
pub(crate) struct NewWriter<S> {
    pub(crate) sink: S,
    /// Hash of everything produced (the streaming applier checks it against
    /// the header); `None` where the caller verifies otherwise.
    pub(crate) hash: Option<blake3::Hasher>,
    /// Bytes produced.
    pub(crate) produced: u64,
}

impl<S: Sink> NewWriter<S> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        self.sink.write(bytes).map_err(ApplyError::Sink)?;
        if let Some(h) = self.hash.as_mut() {
            h.update(bytes);
        }
        self.produced += bytes.len() as u64;
        Ok(())
    }
}

/// The record interpreter; see the module documentation.
pub(crate) struct RecordInterpreter<'o, O: ?Sized, S> {
    old: OldReader<'o, O>,
    pub(crate) new: NewWriter<S>,
    /// New bytes of a difference run, or restored literals.
    new_buf: Vec<u8>,
    /// The instruction set whose literal filter literal runs are stored
    /// through (see [`fwdelta_format::literal_filter`]).
    literal_filter: Option<Arch>,
    cursor: Option<Cursor>,
}

impl<'o, O: OldImage + ?Sized, S: Sink> RecordInterpreter<'o, O, S> {
    /// An interpreter reading `old` (through `predictor`, if given),
    /// restoring literals through `literal_filter`'s filter, writing to
    /// `new`, working in `buffers`.
    pub(crate) fn new(
        old: &'o O,
        predictor: Option<Box<Predictor>>,
        literal_filter: Option<Arch>,
        new: NewWriter<S>,
        buffers: Buffers,
    ) -> Self {
        RecordInterpreter {
            old: OldReader::new(old, predictor, buffers.old),
            new,
            new_buf: buffers.new,
            literal_filter,
            cursor: None,
        }
    }

    /// Give the buffers back (the interpreter is done).
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn into_buffers(self) -> Buffers {
        Buffers {
            old: self.old.buf,
            new: self.new_buf,
        }
    }

    /// Set the predictor and the literal filter (once the header is known).
    pub(crate) fn configure(&mut self, predictor: Option<Box<Predictor>>, filter: Option<Arch>) {
        self.old.predictor = predictor;
        self.old.held = (0, 0);
        self.literal_filter = filter;
    }

    /// The scratch buffer (16 KiB), for work between segments (verifying
    /// the old image).
    pub(crate) fn scratch(&mut self) -> &mut [u8] {
        &mut self.new_buf
    }

    /// The scratch buffer and the writer (hashing kept output on a resume).
    pub(crate) fn scratch_and_writer(&mut self) -> (&mut [u8], &mut NewWriter<S>) {
        (&mut self.new_buf, &mut self.new)
    }

    /// The old image.
    pub(crate) fn old_image(&self) -> &'o O {
        self.old.old
    }

    /// Start applying segment `head`.
    pub(crate) fn start_segment(&mut self, head: &SegmentHeader) {
        self.cursor = Some(Cursor::new(head));
        // The old image may have changed since (in place, between cells).
        self.old.held = (0, 0);
    }

    /// Whether the current segment's stream stands between records.
    pub(crate) fn at_head(&self) -> bool {
        self.cursor.as_ref().is_none_or(|c| c.at == At::Head)
    }

    /// Apply records from `src` until it needs more payload. Errors name
    /// the segment.
    pub(crate) fn run<R: RecordSource + ?Sized>(&mut self, src: &mut R) -> Result<(), ApplyError> {
        let Some(mut cur) = self.cursor.take() else {
            return Err(ApplyError::Poisoned);
        };
        let index = cur.index;
        let result = self.run_on(&mut cur, src);
        self.cursor = Some(cur);
        result.map_err(|e| match e {
            RunError::Fault(f) => f.at(index),
            RunError::Apply(e) => e,
        })
    }

    fn run_on<R: RecordSource + ?Sized>(
        &mut self,
        cur: &mut Cursor,
        src: &mut R,
    ) -> Result<(), RunError> {
        loop {
            match cur.at {
                At::Head => match src.next_head()? {
                    Head::Record(_) | Head::Partial if cur.remaining == 0 => {
                        return Err(SegmentFault::AfterLastRecord.into())
                    }
                    Head::Record(rec) => self.start_record(cur, rec)?,
                    Head::Partial | Head::Nothing => return Ok(()),
                },
                At::Diff {
                    left,
                    literal,
                    seek,
                } => {
                    let want = left.min(BUFFER_LEN as u64) as usize;
                    let old = self
                        .old
                        .run(cur.old_pos, want, src.diff_context())
                        .map_err(RunError::Apply)?;
                    let n = old.len;
                    let k = src.diffs(&old, &mut self.new_buf[..n])?;
                    if k == 0 {
                        return Ok(());
                    }
                    let k = k.min(n);
                    self.new
                        .write(&self.new_buf[..k])
                        .map_err(RunError::Apply)?;
                    cur.remaining -= k as u64;
                    cur.old_pos += k as u64;
                    let left = left - k as u64;
                    cur.at = if left > 0 {
                        At::Diff {
                            left,
                            literal,
                            seek,
                        }
                    } else if literal > 0 {
                        At::Literal {
                            left: literal,
                            seek,
                        }
                    } else {
                        Self::finish_record(cur, seek);
                        At::Head
                    };
                }
                At::Literal { left, seek } => {
                    let max = match self.literal_filter {
                        None => left.min(usize::MAX as u64) as usize,
                        // Room for the held-back bytes in the buffer.
                        Some(_) => {
                            left.min((BUFFER_LEN - literal_filter::MAX_HELD) as u64) as usize
                        }
                    };
                    let chunk = src.literals(max)?;
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    let n = chunk.len().min(max);
                    let chunk = &chunk[..n];
                    match self.literal_filter {
                        None => {
                            self.new.write(chunk).map_err(RunError::Apply)?;
                            cur.remaining -= n as u64;
                        }
                        Some(arch) => {
                            let ends = n as u64 == left;
                            Self::restore_literals(
                                cur,
                                &mut self.new,
                                &mut self.new_buf,
                                chunk,
                                ends,
                                arch,
                            )?;
                        }
                    }
                    let left = left - n as u64;
                    cur.at = if left > 0 {
                        At::Literal { left, seek }
                    } else {
                        Self::finish_record(cur, seek);
                        At::Head
                    };
                }
            }
        }
    }

    /// Restore and emit stored literal bytes `chunk` of the current run (see
    /// [`fwdelta_format::literal_filter`]): whole aligned words are restored;
    /// a trailing partial word is held back while the run goes on, and
    /// emitted as it is when the run ends here. Cost: one copy through the
    /// new-byte buffer.
    fn restore_literals(
        cur: &mut Cursor,
        new: &mut NewWriter<S>,
        buf: &mut [u8],
        chunk: &[u8],
        run_ends: bool,
        arch: Arch,
    ) -> Result<(), RunError> {
        let held = cur.lit_carry_len;
        let total = held + chunk.len();
        buf[..held].copy_from_slice(&cur.lit_carry[..held]);
        buf[held..total].copy_from_slice(chunk);
        // The held-back bytes start an aligned word inside the run, so
        // restoring from their offset follows the format's rule.
        let keep = match literal_filter::unfilter(arch, &mut buf[..total], cur.new_pos()) {
            Some(partial) if !run_ends => partial,
            _ => total,
        };
        cur.lit_carry_len = total - keep;
        cur.lit_carry[..total - keep].copy_from_slice(&buf[keep..total]);
        new.write(&buf[..keep]).map_err(RunError::Apply)?;
        cur.remaining -= keep as u64;
        Ok(())
    }

    /// Validate a record against the segment and the old image, copy its
    /// verbatim old bytes, then enter its diff or literal part.
    fn start_record(&mut self, cur: &mut Cursor, rec: Record) -> Result<(), RunError> {
        if rec.output_len() > cur.remaining {
            return Err(SegmentFault::Overrun {
                len: rec.output_len(),
                left: cur.remaining,
            }
            .into());
        }
        let old_len = self.old.len();
        let reads = rec.old_read_len();
        let Some(read_end) = cur.old_pos.checked_add(reads).filter(|&e| e <= old_len) else {
            return Err(SegmentFault::ReadsPastOld {
                reads,
                at: cur.old_pos,
                old_len,
            }
            .into());
        };
        let after = i128::from(read_end) + i128::from(rec.seek);
        if after < 0 || after > i128::from(old_len) {
            return Err(SegmentFault::SeeksOutside { after, old_len }.into());
        }
        let mut left = rec.copy_len;
        while left > 0 {
            let want = left.min(BUFFER_LEN as u64) as usize;
            let old = self
                .old
                .run(cur.old_pos, want, false)
                .map_err(RunError::Apply)?;
            let n = old.len;
            self.new.write(old.run()).map_err(RunError::Apply)?;
            cur.remaining -= n as u64;
            cur.old_pos += n as u64;
            left -= n as u64;
        }
        cur.at = if rec.diff_len > 0 {
            At::Diff {
                left: rec.diff_len,
                literal: rec.literal_len,
                seek: rec.seek,
            }
        } else if rec.literal_len > 0 {
            At::Literal {
                left: rec.literal_len,
                seek: rec.seek,
            }
        } else {
            Self::finish_record(cur, rec.seek);
            At::Head
        };
        Ok(())
    }

    fn finish_record(cur: &mut Cursor, seek: i64) {
        // Range checked in `start_record`.
        cur.old_pos = (i128::from(cur.old_pos) + i128::from(seek)) as u64;
    }

    /// At the end of the payload: the source's frame (`frame_done`) and the
    /// record stream (no record or head cut short: `partial_head`) must both
    /// be complete; the segment's bytes its records did not produce are
    /// copied from the old cursor (the implied tail copy), which must stay
    /// inside the old image.
    pub(crate) fn finish_segment(
        &mut self,
        frame_done: bool,
        partial_head: bool,
    ) -> Result<(), ApplyError> {
        let Some(mut cur) = self.cursor.take() else {
            return Err(ApplyError::Poisoned);
        };
        let index = cur.index;
        if !frame_done {
            return Err(SegmentFault::FrameOpen.at(index));
        }
        if cur.at != At::Head || partial_head {
            return Err(SegmentFault::InsideRecord {
                left: cur.remaining,
                len: cur.new_len,
            }
            .at(index));
        }
        if cur.remaining > 0 {
            let tail = Record {
                copy_len: cur.remaining,
                diff_len: 0,
                literal_len: 0,
                seek: 0,
            };
            self.start_record(&mut cur, tail).map_err(|e| match e {
                RunError::Fault(f) => f.at(index),
                RunError::Apply(e) => e,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the sequence of runs asked for, each is the image's
        /// bytes at its offset, at least one and at most what was asked,
        /// with the context bytes that were asked for.
        #[test]
        fn old_runs_are_the_images_bytes_with_their_context(
            len in 1usize..40_000,
            asks in proptest::collection::vec((0.0f64..1.0, 1usize..20_000, any::<bool>()), 1..40),
        ) {
            let old: Vec<u8> = (0..len).map(|i| (i * 31 + i / 251) as u8).collect();
            let mut r = OldReader::new(&old[..], None, vec![0; BUFFER_LEN]);
            for (at, want, context) in asks {
                let pos = ((len - 1) as f64 * at) as usize;
                let want = want.min(len - pos);
                let run = r.run(pos as u64, want, context).unwrap();
                prop_assert!(run.len >= 1 && run.len <= want);
                prop_assert_eq!(run.pos, pos as u64);
                prop_assert_eq!(run.run(), &old[pos..pos + run.len]);
                if context {
                    let before = pos.min(1);
                    prop_assert_eq!(run.first, before);
                    let end = (pos + run.len + 1).min(len);
                    prop_assert_eq!(run.bytes, &old[pos - before..end]);
                } else {
                    prop_assert_eq!(run.bytes, run.run());
                }
            }
        }
    }
}
