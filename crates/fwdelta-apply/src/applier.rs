//! The push-mode applier: a state machine over the container's parts that
//! consumes patch bytes in any split, decodes each segment as it streams, and
//! writes the new image to a [`Sink`].
//!
//! Memory: one payload decoder (LZMA2 or zstd) bounded by the header's window
//! (refused if the header claims more than [`ApplyOptions::memory_limit`]), three 16 KiB buffers, and a
//! header accumulator of at most 4 KiB (an executable-aware header, up to 68
//! KiB, is refused from its first 8 bytes if it and the buffers exceed the
//! limit). Passes: one over the old image to verify its hash, then random reads
//! of the old bytes the records name; one pass over the patch.

use crate::error::ApplyError;
use crate::payload_decoder::PayloadDecoder;
use crate::predicted_old::Predictor;
use crate::sink::Sink;
use crate::source::OldImage;
use crate::split_streams::SplitStreams;
use crate::trust_policy::{TrustPolicy, Verdict};
use crate::BUFFER_LEN;
use fwdelta_format::header::Header;
use fwdelta_format::literal_filter;
use fwdelta_format::record::{Record, MAX_HEAD_LEN};
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::signature::SignatureSection;
use fwdelta_format::{
    chain, truncate_check, Checkpoint, FormatError, Layout, CHECK_LEN, HASH_LEN, MAX_IMAGE_LEN,
};
use std::io::{self, Read};
use std::sync::Arc;

/// Limits an applier enforces on top of the patch's own checks, and the
/// device's update policy.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Refuse patches whose header claims more applier memory than this.
    /// Default: no limit beyond the format's.
    pub memory_limit: u64,
    /// Refuse patches producing a larger image (e.g. the flash partition size).
    /// Default: the format limit, 1 TiB.
    pub max_new_len: u64,
    /// Whose signatures count, which product, counter, expiry and replays
    /// to refuse (checked before the old image is read). Default: none, so
    /// signatures are not verified and no release rule applies.
    pub policy: Option<Arc<TrustPolicy>>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            memory_limit: u64::MAX,
            max_new_len: MAX_IMAGE_LEN,
            policy: None,
        }
    }
}

impl ApplyOptions {
    /// Check a patch against [`Self::policy`] (or, without one, just report
    /// its release statement and signers, verifying nothing).
    pub(crate) fn judge(
        &self,
        header: &Header,
        header_bytes: &[u8],
        section: Option<&SignatureSection>,
    ) -> Result<Verdict, ApplyError> {
        match self.policy.as_deref() {
            Some(p) => p.check(header, header_bytes, section),
            None => TrustPolicy::default().check(header, header_bytes, section),
        }
    }
}

/// What a successful apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// The verified patch header.
    pub header: Header,
    /// Patch bytes consumed.
    pub patch_len: u64,
    /// In-place only: the image already was the new image (an earlier apply
    /// finished but its caller did not learn of it), so nothing was written.
    pub already_applied: bool,
    /// What the policy established (release statement, verified signers).
    pub verdict: Verdict,
}

/// Where in a record the decoded stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rec {
    /// Collecting a record head (partial bytes in `head_buf`).
    Head,
    /// Producing diff bytes, then `literal` literal bytes, then moving by `seek`.
    Diff { left: u64, literal: u64, seek: i64 },
    /// Copying literal bytes, then moving by `seek`.
    Literal { left: u64, seek: i64 },
}

/// State of the segment being decoded.
pub(crate) struct Segment {
    head: SegmentHeader,
    /// Payload bytes not yet consumed.
    pub(crate) payload_left: u32,
    remaining_out: u64,
    pub(crate) old_pos: u64,
    /// Where the record interpreter is.
    pub(crate) rec: Rec,
    head_buf: [u8; MAX_HEAD_LEN],
    head_len: usize,
    check: blake3::Hasher,
    /// The payload may end here (its compressed streams are complete).
    pub(crate) frame_done: bool,
    /// Literal bytes of an aligned word not yet complete (literal filter
    /// only): held back until the word is whole, so it can be restored.
    lit_carry: [u8; literal_filter::MAX_HELD],
    lit_carry_len: usize,
}

impl Segment {
    /// State for decoding segment `head`, whose header bytes are `head_bytes`,
    /// of the patch whose header hashes to `header_hash`.
    fn new(head: SegmentHeader, head_bytes: &[u8], header_hash: &[u8; HASH_LEN]) -> Segment {
        let mut check = chain::segment_hasher(header_hash, head.index);
        check.update(head_bytes);
        Segment {
            head,
            payload_left: head.payload_len,
            remaining_out: head.new_len,
            old_pos: head.old_start,
            rec: Rec::Head,
            head_buf: [0; MAX_HEAD_LEN],
            head_len: 0,
            check,
            frame_done: false,
            lit_carry: [0; literal_filter::MAX_HELD],
            lit_carry_len: 0,
        }
    }

    /// New-image offset of the next byte this segment hands to the sink.
    fn new_pos(&self) -> u64 {
        self.head.new_offset + (self.head.new_len - self.remaining_out)
    }

    /// This segment is corrupt, for the reason `detail`.
    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> ApplyError {
        ApplyError::CorruptSegment {
            index: self.head.index,
            detail: detail.into(),
        }
    }
}

enum Stage {
    Prefix,
    Header,
    /// A signed patch's signature section (first its table and count, then
    /// the signatures).
    Section,
    SegmentHead,
    Payload(Box<Segment>),
    SegmentCheck(Box<Segment>),
    Done,
    Failed,
}

/// Everything that produces output: the old image, the sink, and running totals.
pub(crate) struct Output<'o, O: ?Sized, S> {
    old: &'o O,
    sink: S,
    old_buf: Vec<u8>,
    /// Hash of everything produced (the streaming applier checks it against
    /// the header); `None` where the caller verifies otherwise.
    hash: Option<blake3::Hasher>,
    produced: u64,
    /// Reads old bytes through the patch's reference predictions
    /// (executable-aware patches only).
    predictor: Option<Box<Predictor>>,
    /// The instruction set whose literal filter literal runs are stored
    /// through (see [`fwdelta_format::literal_filter`]).
    literal_filter: Option<Arch>,
    /// The last range of old bytes read for the diff model's context (layout
    /// 3), so the diff bytes apply without reading them again: its offset
    /// and bytes (at most a 16 KiB read and two bytes around it).
    base_cache: (u64, Vec<u8>),
}

impl<O: OldImage + ?Sized, S: Sink> Output<'_, O, S> {
    /// At the end of the payload: the frame and the record stream must both be
    /// complete (no record cut short); the segment's bytes its records did not
    /// produce are copied from the old cursor (the implied tail copy), which
    /// must stay inside the old image.
    pub(crate) fn finish_segment(&mut self, seg: &mut Segment) -> Result<(), ApplyError> {
        if !seg.frame_done {
            return Err(seg.corrupt("compressed payload ends before its frame does"));
        }
        if seg.rec != Rec::Head || seg.head_len != 0 {
            return Err(seg.corrupt(format!(
                "stream ends inside a record, with {} of {} bytes still to produce",
                seg.remaining_out, seg.head.new_len
            )));
        }
        if seg.remaining_out > 0 {
            let tail = Record {
                copy_len: seg.remaining_out,
                diff_len: 0,
                literal_len: 0,
                seek: 0,
            };
            self.start_record(seg, tail)?;
        }
        Ok(())
    }

    fn emit(&mut self, seg: &mut Segment, bytes: &[u8]) -> Result<(), ApplyError> {
        self.sink.write(bytes).map_err(ApplyError::Sink)?;
        if let Some(h) = self.hash.as_mut() {
            h.update(bytes);
        }
        self.produced += bytes.len() as u64;
        seg.remaining_out -= bytes.len() as u64;
        Ok(())
    }

    /// Run decoded stream bytes through the record interpreter.
    pub(crate) fn consume(
        &mut self,
        seg: &mut Segment,
        mut bytes: &[u8],
    ) -> Result<(), ApplyError> {
        while !bytes.is_empty() {
            match seg.rec {
                Rec::Head => {
                    if seg.remaining_out == 0 {
                        return Err(seg.corrupt("data after the segment's last record"));
                    }
                    let before = seg.head_len;
                    let take = (MAX_HEAD_LEN - before).min(bytes.len());
                    seg.head_buf[before..before + take].copy_from_slice(&bytes[..take]);
                    seg.head_len += take;
                    match Record::parse_head(&seg.head_buf[..seg.head_len]) {
                        Err(e) => return Err(seg.corrupt(e.to_string())),
                        Ok(None) => {
                            // `take` filled what was free; a full buffer always parses or errors.
                            bytes = &bytes[take..];
                        }
                        Ok(Some((rec, used))) => {
                            bytes = &bytes[used - before..];
                            seg.head_len = 0;
                            self.start_record(seg, rec)?;
                        }
                    }
                }
                Rec::Diff {
                    left,
                    literal,
                    seek,
                } => {
                    let n = (left.min(bytes.len() as u64) as usize).min(self.old_buf.len());
                    let (chunk, rest) = bytes.split_at(n);
                    let mut buf = std::mem::take(&mut self.old_buf);
                    let result = self.old_chunk(seg, &mut buf[..n], Some(chunk));
                    self.old_buf = buf;
                    result?;
                    bytes = rest;
                    let left = left - n as u64;
                    seg.rec = if left > 0 {
                        Rec::Diff {
                            left,
                            literal,
                            seek,
                        }
                    } else if literal > 0 {
                        Rec::Literal {
                            left: literal,
                            seek,
                        }
                    } else {
                        Self::finish_record(seg, seek);
                        Rec::Head
                    };
                }
                Rec::Literal { left, seek } => {
                    let n = left.min(bytes.len() as u64) as usize;
                    let n = match self.literal_filter {
                        None => {
                            self.emit(seg, &bytes[..n])?;
                            n
                        }
                        Some(arch) => {
                            // Room for the held-back bytes in the scratch buffer.
                            let n = n.min(self.old_buf.len() - literal_filter::MAX_HELD);
                            self.emit_literals(seg, &bytes[..n], n as u64 == left, arch)?;
                            n
                        }
                    };
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    seg.rec = if left > 0 {
                        Rec::Literal { left, seek }
                    } else {
                        Self::finish_record(seg, seek);
                        Rec::Head
                    };
                }
            }
        }
        Ok(())
    }

    /// Restore and emit stored literal bytes `chunk` of the current run (see
    /// [`fwdelta_format::literal_filter`]): whole aligned words are restored;
    /// a trailing partial word is held back while the run goes on, and
    /// emitted as it is when the run ends here. Cost: one copy through the
    /// scratch buffer.
    fn emit_literals(
        &mut self,
        seg: &mut Segment,
        chunk: &[u8],
        run_ends: bool,
        arch: Arch,
    ) -> Result<(), ApplyError> {
        let held = seg.lit_carry_len;
        let total = held + chunk.len();
        let mut buf = std::mem::take(&mut self.old_buf);
        buf[..held].copy_from_slice(&seg.lit_carry[..held]);
        buf[held..total].copy_from_slice(chunk);
        // The held-back bytes start an aligned word inside the run, so
        // restoring from their offset follows the format's rule.
        let keep = match literal_filter::unfilter(arch, &mut buf[..total], seg.new_pos()) {
            Some(partial) if !run_ends => partial,
            _ => total,
        };
        seg.lit_carry_len = total - keep;
        seg.lit_carry[..total - keep].copy_from_slice(&buf[keep..total]);
        let result = self.emit(seg, &buf[..keep]);
        self.old_buf = buf;
        result
    }

    /// Validate a record against the segment and the old image, copy its
    /// verbatim old bytes, then enter its diff or literal part.
    fn start_record(&mut self, seg: &mut Segment, rec: Record) -> Result<(), ApplyError> {
        if rec.output_len() > seg.remaining_out {
            return Err(seg.corrupt(format!(
                "record of {} bytes overruns the segment ({} bytes left)",
                rec.output_len(),
                seg.remaining_out
            )));
        }
        let old_len = self.old.len();
        let reads = rec.old_read_len();
        let Some(read_end) = seg.old_pos.checked_add(reads).filter(|&e| e <= old_len) else {
            return Err(seg.corrupt(format!(
                "record reads {reads} old bytes at {}, past the {old_len}-byte old image",
                seg.old_pos
            )));
        };
        let after = i128::from(read_end) + i128::from(rec.seek);
        if after < 0 || after > i128::from(old_len) {
            return Err(seg.corrupt(format!(
                "record moves the old cursor to {after}, outside the {old_len}-byte old image"
            )));
        }
        let mut left = rec.copy_len;
        while left > 0 {
            let n = left.min(self.old_buf.len() as u64) as usize;
            let mut buf = std::mem::take(&mut self.old_buf);
            let result = self.old_chunk(seg, &mut buf[..n], None);
            self.old_buf = buf;
            result?;
            left -= n as u64;
        }
        seg.rec = if rec.diff_len > 0 {
            Rec::Diff {
                left: rec.diff_len,
                literal: rec.literal_len,
                seek: rec.seek,
            }
        } else if rec.literal_len > 0 {
            Rec::Literal {
                left: rec.literal_len,
                seek: rec.seek,
            }
        } else {
            Self::finish_record(seg, rec.seek);
            Rec::Head
        };
        Ok(())
    }

    fn finish_record(seg: &mut Segment, seek: i64) {
        // Range checked in `start_record`.
        seg.old_pos = (i128::from(seg.old_pos) + i128::from(seek)) as u64;
    }

    /// Length of the old image.
    pub(crate) fn old_len(&self) -> u64 {
        self.old.len()
    }

    /// Read the old bytes at `offset..offset + len` as the diff bytes apply
    /// to them, and keep them: the next [`Self::read_base`] inside the range
    /// copies them instead of reading the old image again. `len` is at most
    /// the applier's buffer and two bytes.
    pub(crate) fn read_base_kept(&mut self, offset: u64, len: usize) -> Result<&[u8], ApplyError> {
        // Taken out, so nothing is kept if the read fails.
        let mut kept = std::mem::take(&mut self.base_cache.1);
        kept.resize(len, 0);
        self.read_base(offset, &mut kept)?;
        self.base_cache = (offset, kept);
        Ok(&self.base_cache.1)
    }

    /// Read the old bytes at `offset..offset + buf.len()` as the diff bytes
    /// apply to them (through the predictor of an executable-aware patch).
    pub(crate) fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ApplyError> {
        let (at, kept) = &self.base_cache;
        if let Some(from) = offset.checked_sub(*at) {
            if let Some(src) = usize::try_from(from)
                .ok()
                .and_then(|f| kept.get(f..f.checked_add(buf.len())?))
            {
                buf.copy_from_slice(src);
                return Ok(());
            }
        }
        match self.predictor.as_deref_mut() {
            Some(p) => p.read(self.old, offset, buf),
            None => self.old.read_at(offset, buf),
        }
        .map_err(ApplyError::OldRead)
    }

    /// Read `buf.len()` old bytes at the cursor, add `diff` if given, emit them.
    fn old_chunk(
        &mut self,
        seg: &mut Segment,
        buf: &mut [u8],
        diff: Option<&[u8]>,
    ) -> Result<(), ApplyError> {
        self.read_base(seg.old_pos, buf)?;
        if let Some(diff) = diff {
            for (o, d) in buf.iter_mut().zip(diff) {
                *o = o.wrapping_add(*d);
            }
        }
        seg.old_pos += buf.len() as u64;
        self.emit(seg, buf)
    }
}

/// Push-mode applier. Feed it the patch in pieces of any size with
/// [`Applier::feed`], then call [`Applier::finish`].
///
/// Any error poisons it: later calls return [`ApplyError::Poisoned`], and the
/// bytes already written to the sink must be discarded.
pub struct Applier<'o, O: OldImage + ?Sized, S: Sink> {
    out: Output<'o, O, S>,
    opts: ApplyOptions,
    stage: Stage,
    acc: Vec<u8>,
    want: usize,
    header: Option<Header>,
    /// The header's bytes (what signatures sign, with the check table).
    header_bytes: Vec<u8>,
    header_hash: [u8; HASH_LEN],
    /// Every segment's check (signed patches: the signature section's table).
    checks: Vec<[u8; CHECK_LEN]>,
    verdict: Verdict,
    chain: [u8; HASH_LEN],
    received: u64,
    next_index: u32,
    decoder: Option<PayloadDecoder>,
    dec_buf: Vec<u8>,
    /// The split-layout reader (split-stream patches only).
    split: Option<Box<SplitStreams>>,
}

impl<'o, O: OldImage + ?Sized, S: Sink> Applier<'o, O, S> {
    /// An applier that will read `old` and write the new image to `sink`.
    /// Allocates its two 16 KiB buffers; the decoder is created only once the
    /// header has been accepted.
    pub fn new(old: &'o O, sink: S, opts: ApplyOptions) -> Self {
        Applier {
            out: Output {
                old,
                sink,
                old_buf: vec![0; BUFFER_LEN],
                hash: Some(blake3::Hasher::new()),
                produced: 0,
                predictor: None,
                literal_filter: None,
                base_cache: (0, Vec::new()),
            },
            opts,
            stage: Stage::Prefix,
            acc: Vec::with_capacity(Header::PREFIX_LEN),
            want: Header::PREFIX_LEN,
            header: None,
            header_bytes: Vec::new(),
            header_hash: [0; HASH_LEN],
            checks: Vec::new(),
            verdict: Verdict::default(),
            chain: [0; HASH_LEN],
            received: 0,
            next_index: 0,
            decoder: None,
            dec_buf: Vec::new(),
            split: None,
        }
    }

    /// Continue an apply that was interrupted after a durable segment.
    ///
    /// `header_bytes` is the start of the patch: at least its header and,
    /// for a signed patch, its signature section (see
    /// [`crate::inspect::read_patch_start`]); `checkpoint` the last one the
    /// sink persisted, and `produced`
    /// reads back the new-image bytes already written (the first
    /// `checkpoint.new_offset` are hashed again, through a 16 KiB buffer, and
    /// must match the checkpoint's `new_hash`, else
    /// [`ApplyError::PartialOutputDamaged`]: start over). The old image is
    /// verified again. Afterwards, feed the patch from
    /// `checkpoint.patch_offset` on; `sink` must append after those bytes.
    pub fn resume<R: Read>(
        old: &'o O,
        sink: S,
        opts: ApplyOptions,
        header_bytes: &[u8],
        checkpoint: &Checkpoint,
        mut produced: R,
    ) -> Result<Self, ApplyError> {
        let patch_start = header_bytes;
        let mut a = Applier::new(old, sink, opts);
        let mut prefix = [0u8; Header::PREFIX_LEN];
        let given =
            header_bytes
                .get(..Header::PREFIX_LEN)
                .ok_or_else(|| ApplyError::Truncated {
                    stage: "inside the header".into(),
                    offset: header_bytes.len() as u64,
                })?;
        prefix.copy_from_slice(given);
        let len = Header::parse_prefix(&prefix)?;
        let header_bytes = header_bytes
            .get(..len)
            .ok_or_else(|| ApplyError::Truncated {
                stage: "inside the header".into(),
                offset: header_bytes.len() as u64,
            })?;
        let header = Header::parse(header_bytes)?;
        checkpoint.validate_for(header_bytes, &header)?;
        a.check_limits(&header)?;
        a.header_bytes = header_bytes.to_vec();
        let section = if header.is_signed() {
            let rest = &patch_start[len..];
            let fixed = SignatureSection::fixed_len(&header);
            let count = *rest.get(fixed - 1).ok_or_else(|| ApplyError::Truncated {
                stage: "inside the signature section".into(),
                offset: patch_start.len() as u64,
            })?;
            let end = fixed + SignatureSection::signatures_len(count)?;
            let bytes = rest.get(..end).ok_or_else(|| ApplyError::Truncated {
                stage: "inside the signature section".into(),
                offset: patch_start.len() as u64,
            })?;
            Some(SignatureSection::parse(&header, bytes)?)
        } else {
            None
        };
        a.accept_release(&header, section)?;
        a.accept_body(&header)?;

        let mut hashed = 0u64;
        let buf = &mut a.out.old_buf;
        while hashed < checkpoint.new_offset {
            let n = (checkpoint.new_offset - hashed).min(buf.len() as u64) as usize;
            match produced.read(&mut buf[..n]) {
                Ok(0) => {
                    return Err(ApplyError::Sink(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                        "resume: only {hashed} of the {} bytes already produced could be read back",
                        checkpoint.new_offset
                    ),
                    )))
                }
                Ok(got) => {
                    if let Some(h) = a.out.hash.as_mut() {
                        h.update(&buf[..got]);
                    }
                    hashed += got as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::Sink(e)),
            }
        }
        let kept = a
            .out
            .hash
            .as_ref()
            .map(|h| *h.clone().finalize().as_bytes());
        if kept != Some(checkpoint.new_hash) {
            return Err(ApplyError::PartialOutputDamaged {
                len: checkpoint.new_offset,
            });
        }
        a.out.produced = checkpoint.new_offset;
        a.header_hash = checkpoint.header_hash;
        a.chain = checkpoint.chain;
        a.received = checkpoint.patch_offset;
        a.next_index = checkpoint.next_segment;
        a.header = Some(header);
        a.next_part()?;
        Ok(a)
    }

    /// The header, once it has been read and accepted.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Give up on this apply and take the sink back (e.g. to read what a
    /// resumable sink recorded before a cut download).
    pub fn into_sink(self) -> S {
        self.out.sink
    }

    /// New-image bytes written to the sink so far.
    pub fn produced(&self) -> u64 {
        self.out.produced
    }

    /// Consume the next patch bytes. Returns once they are all processed.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), ApplyError> {
        if matches!(self.stage, Stage::Failed) {
            return Err(ApplyError::Poisoned);
        }
        let result = self.feed_inner(data);
        if result.is_err() {
            self.stage = Stage::Failed;
        }
        result
    }

    /// Declare the patch complete. Succeeds only if every segment the header
    /// announced was read and every check passed; returns the report and the
    /// sink.
    pub fn finish(self) -> Result<(ApplyReport, S), ApplyError> {
        let stage = match &self.stage {
            Stage::Done => {
                let header = self.header.ok_or(ApplyError::Poisoned)?;
                return Ok((
                    ApplyReport {
                        header,
                        patch_len: self.received,
                        already_applied: false,
                        verdict: self.verdict,
                    },
                    self.out.sink,
                ));
            }
            Stage::Failed => return Err(ApplyError::Poisoned),
            Stage::Prefix | Stage::Header => "inside the header".to_string(),
            Stage::Section => "inside the signature section".to_string(),
            Stage::SegmentHead if self.acc.is_empty() => {
                format!("before segment {}", self.next_index)
            }
            Stage::SegmentHead => format!("inside the header of segment {}", self.next_index),
            Stage::Payload(seg) => format!("inside segment {}", seg.head.index),
            Stage::SegmentCheck(seg) => format!("inside the check of segment {}", seg.head.index),
        };
        Err(ApplyError::Truncated {
            stage,
            offset: self.received,
        })
    }

    fn feed_inner(&mut self, mut data: &[u8]) -> Result<(), ApplyError> {
        while !data.is_empty() {
            match &mut self.stage {
                Stage::Payload(seg) => {
                    // Counted first: a segment without a check is finished
                    // (and its checkpoint taken) inside `payload`.
                    let n = data.len().min(seg.payload_left as usize);
                    self.received += n as u64;
                    self.payload(&data[..n])?;
                    data = &data[n..];
                }
                Stage::Done => return Err(ApplyError::TrailingData),
                Stage::Failed => return Err(ApplyError::Poisoned),
                _ => {
                    let n = (self.want - self.acc.len()).min(data.len());
                    self.acc.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.received += n as u64;
                    if self.acc.len() == self.want {
                        self.complete_part()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A part (`acc`) is complete, or (segment headers, whose length is only
    /// known once their varints end) one byte longer: act on it.
    fn complete_part(&mut self) -> Result<(), ApplyError> {
        match std::mem::replace(&mut self.stage, Stage::Failed) {
            Stage::Prefix => {
                let mut prefix = [0u8; Header::PREFIX_LEN];
                prefix.copy_from_slice(&self.acc);
                self.want = Header::parse_prefix(&prefix)?;
                // Only executable-aware headers exceed the plain limit, and
                // their claim counts the header on top of the applier's
                // buffers: if that already breaks the limit, refuse before
                // buffering it.
                let floor = self.want as u64 + fwdelta_format::MemoryModel::APPLIER_BUFFERS;
                if self.want > Header::PLAIN_MAX_LEN && floor > self.opts.memory_limit {
                    return Err(ApplyError::MemoryBudget {
                        needed: floor,
                        limit: self.opts.memory_limit,
                    });
                }
                self.stage = Stage::Header;
            }
            Stage::Header => {
                let header = Header::parse(&self.acc)?;
                self.header_hash = chain::start(&self.acc);
                self.chain = self.header_hash;
                self.check_limits(&header)?;
                self.header_bytes = std::mem::take(&mut self.acc);
                if header.is_signed() {
                    // Bounded: the memory claim checked above covers it.
                    self.want = SignatureSection::fixed_len(&header);
                    self.header = Some(header);
                    self.stage = Stage::Section;
                } else {
                    self.accept_release(&header, None)?;
                    self.accept_body(&header)?;
                    self.header = Some(header);
                    self.next_part()?;
                }
            }
            Stage::Section => {
                let header = self.header.take().ok_or(ApplyError::Poisoned)?;
                let fixed = SignatureSection::fixed_len(&header);
                let count = self.acc[fixed - 1];
                let signatures = SignatureSection::signatures_len(count)?;
                if self.acc.len() == fixed && signatures > 0 {
                    self.want = fixed + signatures;
                    self.header = Some(header);
                    self.stage = Stage::Section;
                    return Ok(());
                }
                let section = SignatureSection::parse(&header, &self.acc)?;
                self.accept_release(&header, Some(section))?;
                self.accept_body(&header)?;
                self.header = Some(header);
                self.next_part()?;
            }
            Stage::SegmentHead => {
                let header = self.header.as_ref().ok_or(ApplyError::Poisoned)?;
                if SegmentHeader::complete_len(&self.acc, header, self.next_index)?.is_none() {
                    // A varint is still open: take one more byte.
                    self.want += 1;
                    self.stage = Stage::SegmentHead;
                    return Ok(());
                }
                let head =
                    SegmentHeader::parse(&self.acc, header, self.next_index, self.out.produced)?;
                if let Some(dec) = self.decoder.as_mut() {
                    dec.reset()?;
                }
                if let Some(split) = self.split.as_mut() {
                    split.reset()?;
                }
                self.stage =
                    Stage::Payload(Box::new(Segment::new(head, &self.acc, &self.header_hash)));
                self.acc.clear();
            }
            Stage::SegmentCheck(seg) => {
                let hash = seg.check.finalize();
                if truncate_check(&hash) != self.acc[..] {
                    return Err(seg.corrupt("segment check mismatch"));
                }
                self.segment_verified(&seg.head, &hash)?;
            }
            Stage::Payload(_) | Stage::Done | Stage::Failed => return Err(ApplyError::Poisoned),
        }
        Ok(())
    }

    /// Segment `head`, whose bytes hash to `hash`, is verified: advance the
    /// digest, expect the next segment (after the last one: check the new
    /// image's hash, which is what verifies a segment without a check), then
    /// hand the sink its checkpoint.
    fn segment_verified(
        &mut self,
        head: &SegmentHeader,
        hash: &blake3::Hash,
    ) -> Result<(), ApplyError> {
        self.chain = chain::next(&self.chain, hash.as_bytes());
        self.next_index += 1;
        self.next_part()?;
        // A clone of the running hash, finalized: the bytes produced so far
        // (about 2 KB copied per segment; the running hash goes on).
        let new_hash = self
            .out
            .hash
            .as_ref()
            .map_or([0; HASH_LEN], |h| *h.clone().finalize().as_bytes());
        let checkpoint = Checkpoint {
            header_hash: self.header_hash,
            next_segment: self.next_index,
            patch_offset: self.received,
            new_offset: self.out.produced,
            chain: self.chain,
            new_hash,
        };
        self.out
            .sink
            .segment_done(head, &checkpoint)
            .map_err(ApplyError::Sink)
    }

    /// After the header or a segment: expect the next segment, or, after the
    /// last one, check that the segments produced the new image.
    fn next_part(&mut self) -> Result<(), ApplyError> {
        let count = self.header.as_ref().map_or(0, |h| h.segment_count);
        self.acc.clear();
        if self.next_index < count {
            self.stage = Stage::SegmentHead;
            self.want = 1;
            Ok(())
        } else {
            self.finish_image()
        }
    }

    /// Every segment has been read and checked: the output must be the whole
    /// new image, with the header's hash.
    fn finish_image(&mut self) -> Result<(), ApplyError> {
        let header = self.header.as_ref().ok_or(ApplyError::Poisoned)?;
        // Segment parsing already makes the last segment end at new_len; this
        // guards that invariant where the hash is about to be trusted.
        if self.out.produced != header.new_len {
            return Err(ApplyError::Format(FormatError::BadField {
                field: "segments",
                detail: format!(
                    "cover {} of {} new bytes",
                    self.out.produced, header.new_len
                ),
            }));
        }
        let produced_hash = self.out.hash.as_ref().map(|h| *h.finalize().as_bytes());
        if produced_hash != Some(header.new_hash) {
            return Err(ApplyError::NewHashMismatch);
        }
        self.stage = Stage::Done;
        Ok(())
    }

    /// Enforce this applier's limits (before anything sized by the header is
    /// read or allocated).
    fn check_limits(&mut self, header: &Header) -> Result<(), ApplyError> {
        if header.cell_log.is_some() {
            return Err(ApplyError::WrongMode(
                "this is an in-place patch: apply it in place (fwdelta apply --in-place)",
            ));
        }
        if header.apply_memory > self.opts.memory_limit {
            return Err(ApplyError::MemoryBudget {
                needed: header.apply_memory,
                limit: self.opts.memory_limit,
            });
        }
        if header.new_len > self.opts.max_new_len {
            return Err(ApplyError::NewTooLarge {
                len: header.new_len,
                limit: self.opts.max_new_len,
            });
        }
        Ok(())
    }

    /// Check the patch against the policy (signatures, product, counter,
    /// expiry, replay) and keep a signed patch's segment checks.
    fn accept_release(
        &mut self,
        header: &Header,
        section: Option<SignatureSection>,
    ) -> Result<(), ApplyError> {
        self.verdict = self
            .opts
            .judge(header, &self.header_bytes, section.as_ref())?;
        if let Some(section) = section {
            self.checks = section.checks;
        }
        Ok(())
    }

    /// Verify the old image and create the decoders.
    fn accept_body(&mut self, header: &Header) -> Result<(), ApplyError> {
        self.verify_old(header)?;
        if let Some(code) = &header.code_refs {
            self.out.predictor = Some(Box::new(Predictor::new(code, header.old_len)));
        }
        self.out.literal_filter = header.literal_filter;
        match header.layout {
            Layout::Interleaved if header.segment_count > 0 => {
                self.decoder = PayloadDecoder::for_header(header)?;
                if self.decoder.is_some() {
                    self.dec_buf = vec![0; BUFFER_LEN];
                }
            }
            Layout::Split | Layout::Modelled if header.segment_count > 0 => {
                self.split = Some(Box::new(SplitStreams::new(header)?));
            }
            Layout::Interleaved | Layout::Split | Layout::Modelled => {}
        }
        Ok(())
    }

    /// Check the old image's length and BLAKE3 against the header: one pass,
    /// through the 16 KiB read buffer.
    fn verify_old(&mut self, header: &Header) -> Result<(), ApplyError> {
        let actual = self.out.old.len();
        if actual != header.old_len {
            return Err(ApplyError::OldLength {
                expected: header.old_len,
                actual,
            });
        }
        let mut hasher = blake3::Hasher::new();
        let mut pos = 0u64;
        while pos < actual {
            let n = (actual - pos).min(self.out.old_buf.len() as u64) as usize;
            let buf = &mut self.out.old_buf[..n];
            self.out
                .old
                .read_at(pos, buf)
                .map_err(ApplyError::OldRead)?;
            hasher.update(buf);
            pos += n as u64;
        }
        crate::error::check_old_hash(&hasher.finalize(), header)
    }

    /// Stream payload bytes (no more than the payload has left) through the
    /// decoder and the record interpreter.
    fn payload(&mut self, chunk: &[u8]) -> Result<(), ApplyError> {
        let Stage::Payload(seg) = &mut self.stage else {
            return Err(ApplyError::Poisoned);
        };
        let n = chunk.len();
        seg.check.update(chunk);
        if let Some(split) = self.split.as_mut() {
            split.feed(chunk, &mut self.out, seg)?;
            return self.end_payload_chunk(n);
        }
        match self.decoder.as_mut() {
            // Stored payload: the stream itself.
            None => {
                self.out.consume(seg, chunk)?;
                if n == seg.payload_left as usize {
                    seg.frame_done = true;
                }
            }
            Some(dec) => decode_chunk(dec, &mut self.dec_buf, &mut self.out, seg, chunk)?,
        }
        self.end_payload_chunk(n)
    }

    /// Account for `n` payload bytes; at the end of the payload, check the
    /// segment's stream is complete and expect its check (or, for the last
    /// segment, which has none, finish the image).
    fn end_payload_chunk(&mut self, n: usize) -> Result<(), ApplyError> {
        let Stage::Payload(seg) = &mut self.stage else {
            return Err(ApplyError::Poisoned);
        };
        seg.payload_left -= n as u32;
        if seg.payload_left == 0 {
            self.out.finish_segment(seg)?;
            let Stage::Payload(seg) = std::mem::replace(&mut self.stage, Stage::Failed) else {
                return Err(ApplyError::Poisoned);
            };
            let header = self.header.as_ref().ok_or(ApplyError::Poisoned)?;
            if header.is_signed() {
                let hash = seg.check.finalize();
                let expected = self.checks.get(seg.head.index as usize);
                if expected != Some(&truncate_check(&hash)) {
                    return Err(seg.corrupt("segment check mismatch (signed table)"));
                }
                self.segment_verified(&seg.head, &hash)?;
            } else if header.segment_has_check(seg.head.index) {
                self.stage = Stage::SegmentCheck(seg);
                self.want = CHECK_LEN;
                self.acc.clear();
            } else {
                let hash = seg.check.finalize();
                self.segment_verified(&seg.head, &hash)?;
            }
        }
        Ok(())
    }
}

/// Run one chunk of a compressed payload through the decoder and the record
/// interpreter.
fn decode_chunk<O: OldImage + ?Sized, S: Sink>(
    dec: &mut PayloadDecoder,
    dec_buf: &mut [u8],
    out: &mut Output<'_, O, S>,
    seg: &mut Segment,
    chunk: &[u8],
) -> Result<(), ApplyError> {
    let mut at = 0;
    loop {
        if seg.frame_done {
            if at < chunk.len() {
                return Err(seg.corrupt("data after the end of the compressed frame"));
            }
            break;
        }
        let step = dec.run(&chunk[at..], dec_buf).map_err(|e| seg.corrupt(e))?;
        at += step.read;
        out.consume(seg, &dec_buf[..step.written])?;
        if step.done {
            seg.frame_done = true;
        }
        if at == chunk.len() && step.written < dec_buf.len() {
            break;
        }
        if step.written == 0 && step.read == 0 {
            return Err(seg.corrupt("decoder made no progress"));
        }
    }
    Ok(())
}

/// Decodes whole segments one at a time from a reader: the building block of
/// the in-place applier, which visits segments in its own order. Holds a
/// payload decoder (unless payloads are stored) and three 16 KiB buffers.
pub(crate) struct SegmentRunner {
    decoder: Option<PayloadDecoder>,
    dec_buf: Vec<u8>,
    old_buf: Vec<u8>,
    in_buf: Vec<u8>,
    header_hash: [u8; HASH_LEN],
}

impl SegmentRunner {
    /// A runner for the segments of the patch with `header`, whose bytes hash
    /// to `header_hash` (segment checks bind to it).
    pub(crate) fn new(
        header: &Header,
        header_hash: [u8; HASH_LEN],
    ) -> Result<SegmentRunner, ApplyError> {
        // The header parser refuses split in-place patches; this runner only
        // knows the interleaved layout.
        if header.layout != Layout::Interleaved {
            return Err(ApplyError::Format(FormatError::BadField {
                field: "layout",
                detail: "in-place patches use the interleaved layout".into(),
            }));
        }
        let decoder = PayloadDecoder::for_header(header)?;
        Ok(SegmentRunner {
            dec_buf: if decoder.is_some() {
                vec![0; BUFFER_LEN]
            } else {
                Vec::new()
            },
            decoder,
            old_buf: vec![0; BUFFER_LEN],
            in_buf: vec![0; BUFFER_LEN],
            header_hash,
        })
    }

    /// Decode segment `head` (encoded as `head_bytes`), whose payload is next
    /// in `patch`, reading `old` and writing to `sink`. Returns the segment's
    /// hash (bound to the patch header and the segment's index); the caller
    /// checks it against the stored check. Validates the stream as the push
    /// applier does.
    pub(crate) fn run<O: OldImage + ?Sized, S: Sink, R: Read>(
        &mut self,
        head: SegmentHeader,
        head_bytes: &[u8],
        patch: &mut R,
        old: &O,
        sink: S,
    ) -> Result<blake3::Hash, ApplyError> {
        if let Some(dec) = self.decoder.as_mut() {
            dec.reset()?;
        }
        let mut seg = Segment::new(head, head_bytes, &self.header_hash);
        let mut out = Output {
            old,
            sink,
            old_buf: std::mem::take(&mut self.old_buf),
            // Segment output is checked by the caller (dry-run hash, final
            // region hash); hashing it here too would be wasted.
            hash: None,
            produced: 0,
            predictor: None,
            // The header refuses a literal filter in in-place patches.
            literal_filter: None,
            base_cache: (0, Vec::new()),
        };
        let result = self
            .pump(&mut seg, &mut out, patch)
            .and_then(|()| out.finish_segment(&mut seg));
        self.old_buf = out.old_buf;
        result?;
        Ok(seg.check.finalize())
    }

    fn pump<O: OldImage + ?Sized, S: Sink, R: Read>(
        &mut self,
        seg: &mut Segment,
        out: &mut Output<'_, O, S>,
        patch: &mut R,
    ) -> Result<(), ApplyError> {
        while seg.payload_left > 0 {
            let want = (seg.payload_left as usize).min(self.in_buf.len());
            let n = match patch.read(&mut self.in_buf[..want]) {
                Ok(0) => {
                    return Err(ApplyError::Truncated {
                        stage: format!("inside segment {}", seg.head.index),
                        offset: 0,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::PatchRead(e)),
            };
            let chunk = &self.in_buf[..n];
            seg.check.update(chunk);
            match self.decoder.as_mut() {
                None => {
                    out.consume(seg, chunk)?;
                    if n == seg.payload_left as usize {
                        seg.frame_done = true;
                    }
                }
                Some(dec) => decode_chunk(dec, &mut self.dec_buf, out, seg, chunk)?,
            }
            seg.payload_left -= n as u32;
        }
        Ok(())
    }
}

impl<O: OldImage + ?Sized, S: Sink> Applier<'_, O, S> {
    /// Feed everything `patch` yields (16 KiB at a time), then
    /// [`finish`](Self::finish). After [`resume`](Self::resume), `patch` must
    /// start at the checkpoint's patch offset.
    pub fn finish_from<R: Read>(mut self, mut patch: R) -> Result<(ApplyReport, S), ApplyError> {
        let mut buf = vec![0u8; BUFFER_LEN];
        loop {
            match patch.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.feed(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::PatchRead(e)),
            }
        }
        self.finish()
    }
}

/// Pull-mode apply: read the whole patch from `patch` (16 KiB at a time) and
/// write the new image to `sink`. Returns the report and the sink.
///
/// Memory and passes as for [`Applier`].
pub fn apply<O: OldImage + ?Sized, R: Read, S: Sink>(
    old: &O,
    patch: R,
    sink: S,
    opts: ApplyOptions,
) -> Result<(ApplyReport, S), ApplyError> {
    Applier::new(old, sink, opts).finish_from(patch)
}
