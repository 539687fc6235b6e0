//! The push-mode applier: a state machine over the container's parts that
//! consumes patch bytes in any split, decodes each segment as it streams, and
//! writes the new image to a [`Sink`]. The framing (header, signature
//! section, segment heads and checks) is the [`PatchReader`]'s; the payload
//! goes to the layout's record source (`stream_source`, `split_source`),
//! whose records the one [`RecordInterpreter`] applies.
//!
//! Memory: the layout's decoders (LZMA2 or zstd) bounded by the header's window
//! (refused if the header claims more than [`ApplyOptions::memory_limit`]),
//! the interpreter's two 16 KiB buffers and a 16 KiB decoded-stream window
//! (plus a 16 KiB input buffer in pull mode), and a header accumulator of at
//! most 4 KiB (an executable-aware header, up to 68 KiB, is refused from its
//! first 8 bytes if it and the buffers exceed the limit). Passes: one over
//! the old image to verify its hash, then random reads of the old bytes the
//! records name; one pass over the patch.

use crate::error::{ApplyError, PatchPart};
use crate::patch_reader::{limits, start_from_slice, Mode, Part, PatchReader};
use crate::payload_decoder::PayloadDecoder;
use crate::predicted_old::Predictor;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::record_interpreter::{Buffers, NewWriter, RecordInterpreter, SegmentFault};
use crate::sink::Sink;
use crate::source::OldImage;
use crate::split_source::SplitStreams;
use crate::stream_source::StreamSource;
use crate::trust_policy::{TrustPolicy, Verdict};
use crate::IoError;
#[cfg(feature = "std")]
use crate::BUFFER_LEN;
use alloc::sync::Arc;
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::signature::SignatureSection;
use fwdelta_format::{
    chain, truncate_check, Checkpoint, FormatError, Layout, HASH_LEN, MAX_IMAGE_LEN,
};
#[cfg(feature = "std")]
use std::io::{self, Read};

/// Limits an applier enforces on top of the patch's own checks, and the
/// device's update policy. Start from [`ApplyOptions::default`] (no limits
/// beyond the format's, no policy) and set what the device needs with the
/// `with_*` methods (or by assigning the public fields).
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// The new image the caller expects (its BLAKE3, e.g. from a release
    /// manifest): a patch whose header names another is refused with
    /// [`ApplyError::UnexpectedNewImage`] on the header it is applied from,
    /// before the old image is read. Default: any.
    pub expected_new_hash: Option<[u8; HASH_LEN]>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            memory_limit: u64::MAX,
            max_new_len: MAX_IMAGE_LEN,
            policy: None,
            expected_new_hash: None,
        }
    }
}

impl ApplyOptions {
    /// The defaults: no limits beyond the format's, no policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse patches whose header claims more than `limit` bytes of
    /// applier memory.
    pub fn with_memory_limit(mut self, limit: u64) -> Self {
        self.memory_limit = limit;
        self
    }

    /// Refuse patches producing an image larger than `limit` bytes.
    pub fn with_max_new_len(mut self, limit: u64) -> Self {
        self.max_new_len = limit;
        self
    }

    /// Check signatures and release rules against `policy` (or, with
    /// `None`, verify nothing and only report them).
    pub fn with_policy(mut self, policy: Option<Arc<TrustPolicy>>) -> Self {
        self.policy = policy;
        self
    }

    /// Accept only a patch whose header names the new image with BLAKE3
    /// `hash` (see [`Self::expected_new_hash`]).
    pub fn with_expected_new_image(mut self, hash: Option<[u8; HASH_LEN]>) -> Self {
        self.expected_new_hash = hash;
        self
    }

    /// Check a patch against [`Self::expected_new_hash`] and [`Self::policy`]
    /// (or, without a policy, just report its release statement and
    /// signers, verifying nothing). Every applier (streaming, parallel, in
    /// place) calls this on the header it applies, before the old image.
    pub(crate) fn judge(
        &self,
        header: &Header,
        header_bytes: &[u8],
        section: Option<&SignatureSection>,
    ) -> Result<Verdict, ApplyError> {
        self.check_expected(header)?;
        self.policy_or_default()
            .check(header, header_bytes, section)
    }

    /// [`Self::judge`] with expiry set aside (see
    /// [`TrustPolicy::check_deferring_expiry`]).
    #[cfg(feature = "std")]
    pub(crate) fn judge_deferring_expiry(
        &self,
        header: &Header,
        header_bytes: &[u8],
        section: Option<&SignatureSection>,
    ) -> Result<(Verdict, Option<ApplyError>), ApplyError> {
        self.check_expected(header)?;
        self.policy_or_default()
            .check_deferring_expiry(header, header_bytes, section)
    }

    /// Refuse a patch for another new image than [`Self::expected_new_hash`].
    fn check_expected(&self, header: &Header) -> Result<(), ApplyError> {
        match self.expected_new_hash {
            Some(expected) if header.new_hash != expected => Err(ApplyError::UnexpectedNewImage {
                expected,
                actual: header.new_hash,
            }),
            _ => Ok(()),
        }
    }

    /// The policy, or the empty one (nothing verified, release rules only).
    fn policy_or_default(&self) -> &TrustPolicy {
        self.policy.as_deref().unwrap_or(&NO_POLICY)
    }
}

/// [`TrustPolicy::default`]: no keys, so signatures are not verified and
/// only the release statement's rules apply.
static NO_POLICY: TrustPolicy = TrustPolicy {
    keys: Vec::new(),
    threshold: 0,
    product: None,
    min_counter: 0,
    now: None,
    installed: Vec::new(),
};

/// What a successful apply did.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

/// The segment whose payload is being read.
pub(crate) struct Segment {
    pub(crate) head: SegmentHeader,
    /// Payload bytes not yet consumed.
    pub(crate) payload_left: u32,
    /// The segment's hash so far (bound to the header and its index).
    pub(crate) check: blake3::Hasher,
}

impl Segment {
    /// Segment `head`, whose header bytes are `head_bytes`, of the patch
    /// whose header hashes to `header_hash`.
    pub(crate) fn new(
        head: SegmentHeader,
        head_bytes: &[u8],
        header_hash: &[u8; HASH_LEN],
    ) -> Segment {
        let mut check = chain::segment_hasher(header_hash, head.index);
        check.update(head_bytes);
        Segment {
            head,
            payload_left: head.payload_len,
            check,
        }
    }
}

/// The layout's source of records, which the payload feeds.
enum Body {
    /// No segments (or the header not yet accepted).
    Empty,
    /// Layout 1: one stream, stored or compressed.
    Stream(StreamSource),
    /// Layouts 2 and 3: blocks of three streams.
    Split(Box<SplitStreams>),
}

enum Stage {
    /// The reader has the bytes: header, section, or a segment head.
    Framing,
    Payload(Box<Segment>),
    /// The reader has the bytes of this segment's stored check.
    Check(Box<Segment>),
    Done,
    Failed,
}

/// Push-mode applier. Feed it the patch in pieces of any size with
/// [`Applier::feed`], then call [`Applier::finish`].
///
/// Any error poisons it: later calls return [`ApplyError::Poisoned`], and the
/// bytes already written to the sink must be discarded.
pub struct Applier<'o, O: OldImage + ?Sized, S: Sink> {
    /// Applies the records; owns the old-image reads and the sink.
    interp: RecordInterpreter<'o, O, S>,
    opts: ApplyOptions,
    stage: Stage,
    /// The patch's framing: header, section, segment heads and checks.
    reader: PatchReader,
    /// The header and section passed the limits and the policy, and the old
    /// image verified.
    accepted: bool,
    verdict: Verdict,
    chain: [u8; HASH_LEN],
    received: u64,
    next_index: u32,
    /// The layout's record source.
    body: Body,
    /// Segment-parallel workers ([`Applier::for_segment`]): the index of the
    /// one segment this applier decodes; it is done once that segment is
    /// verified (the new image's hash is its caller's to check).
    only_segment: Option<u32>,
    /// Hash of the last segment verified (its check's source; a parallel
    /// caller chains them in order).
    last_segment_hash: Option<[u8; HASH_LEN]>,
}

impl<'o, O: OldImage + ?Sized, S: Sink> Applier<'o, O, S> {
    /// An applier that will read `old` and write the new image to `sink`.
    /// Allocates the interpreter's two 16 KiB buffers; the decoders are
    /// created only once the header has been accepted.
    pub fn new(old: &'o O, sink: S, opts: ApplyOptions) -> Self {
        let new = NewWriter {
            sink,
            hash: Some(blake3::Hasher::new()),
            produced: 0,
        };
        Applier {
            interp: RecordInterpreter::new(old, None, None, new, Buffers::new()),
            reader: PatchReader::new(limits(&opts, Mode::NewImage)),
            opts,
            stage: Stage::Framing,
            accepted: false,
            verdict: Verdict::default(),
            chain: [0; HASH_LEN],
            received: 0,
            next_index: 0,
            body: Body::Empty,
            only_segment: None,
            last_segment_hash: None,
        }
    }

    /// A worker of a segment-parallel apply (`crate::parallel_apply`): decodes
    /// segment `index` only, which starts at `patch_offset` and produces new
    /// bytes from `new_offset`, writing them to `sink`. `start_bytes` is the
    /// patch's start (header and section) that its caller has already
    /// accepted: judged by the policy, limits checked, old image verified.
    /// Nothing of that is repeated; the segment's own checks are, and the
    /// new image's hash is left to the caller (`hash` off). Allocates the
    /// layout's decoders, as an ordinary apply does.
    #[cfg(feature = "std")]
    pub(crate) fn for_segment(
        old: &'o O,
        sink: S,
        opts: ApplyOptions,
        start_bytes: &[u8],
        index: u32,
        new_offset: u64,
        patch_offset: u64,
    ) -> Result<Self, ApplyError> {
        let mut a = Applier::new(old, sink, opts);
        a.interp.new.hash = None;
        a.reader = start_from_slice(start_bytes, limits(&a.opts, Mode::NewImage))?;
        let start = a.reader.start().ok_or(ApplyError::Poisoned)?;
        if patch_offset < start.body_start || index >= start.header.segment_count {
            return Err(ApplyError::Poisoned);
        }
        a.chain = start.header_hash;
        a.configure_body()?;
        a.accepted = true;
        a.only_segment = Some(index);
        a.interp.new.produced = new_offset;
        a.received = patch_offset;
        a.next_index = index;
        a.reader.resume_at(new_offset, patch_offset);
        a.next_part()?;
        Ok(a)
    }

    /// Reuse a worker ([`Self::for_segment`]) whose segment is done for
    /// segment `index`, at `new_offset` and `patch_offset`: its decoders and
    /// buffers are kept (each segment resets them), its start is not parsed
    /// again. The caller points the sink at `new_offset`
    /// ([`Self::sink_mut`]).
    #[cfg(feature = "std")]
    pub(crate) fn next_job(
        &mut self,
        index: u32,
        new_offset: u64,
        patch_offset: u64,
    ) -> Result<(), ApplyError> {
        let count = self.reader.start().map_or(0, |s| s.header.segment_count);
        if !matches!(self.stage, Stage::Done) || self.only_segment.is_none() || index >= count {
            return Err(ApplyError::Poisoned);
        }
        self.only_segment = Some(index);
        self.last_segment_hash = None;
        self.interp.new.produced = new_offset;
        self.received = patch_offset;
        self.next_index = index;
        self.reader.resume_at(new_offset, patch_offset);
        self.next_part()
    }

    /// Whether the one segment of a worker is applied and verified.
    #[cfg(feature = "std")]
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// The sink.
    #[cfg(feature = "std")]
    pub(crate) fn sink_mut(&mut self) -> &mut S {
        &mut self.interp.new.sink
    }

    /// The hash of the last segment this applier verified.
    #[cfg(feature = "std")]
    pub(crate) fn last_segment_hash(&self) -> Option<[u8; HASH_LEN]> {
        self.last_segment_hash
    }

    /// Check the start of a patch (header and section, `start_bytes`) as an
    /// ordinary apply does before its first segment: limits, the policy,
    /// then the old image's length and BLAKE3 (one pass over `old`).
    /// Returns the verdict and the reader holding the parsed start.
    /// Allocates no decoder.
    #[cfg(feature = "std")]
    pub(crate) fn accept_start_only(
        old: &'o O,
        sink: S,
        opts: ApplyOptions,
        start_bytes: &[u8],
    ) -> Result<(Verdict, PatchReader), ApplyError> {
        let mut a = Applier::new(old, sink, opts);
        a.reader = start_from_slice(start_bytes, limits(&a.opts, Mode::NewImage))?;
        a.judge_and_verify()?;
        Ok((a.verdict, a.reader))
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
    /// (Without `std`: [`Applier::resume_with`].)
    #[cfg(feature = "std")]
    pub fn resume<R: Read>(
        old: &'o O,
        sink: S,
        opts: ApplyOptions,
        header_bytes: &[u8],
        checkpoint: &Checkpoint,
        mut produced: R,
    ) -> Result<Self, ApplyError> {
        Self::resume_with(old, sink, opts, header_bytes, checkpoint, |buf| loop {
            match produced.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                got => return Ok(got?),
            }
        })
    }

    /// [`Applier::resume`] with the new-image bytes already written read
    /// back by `read_back`, which fills a prefix of the buffer it is given
    /// with the next of them and returns its length (0: none left).
    pub fn resume_with<F>(
        old: &'o O,
        sink: S,
        opts: ApplyOptions,
        header_bytes: &[u8],
        checkpoint: &Checkpoint,
        mut read_back: F,
    ) -> Result<Self, ApplyError>
    where
        F: FnMut(&mut [u8]) -> Result<usize, IoError>,
    {
        let mut a = Applier::new(old, sink, opts);
        a.reader = start_from_slice(header_bytes, limits(&a.opts, Mode::NewImage))?;
        let start = a.reader.start().ok_or(ApplyError::Poisoned)?;
        checkpoint.validate_for(&start.header_bytes, &start.header)?;
        // A checkpoint is integrity-checked, not signed: its patch offset
        // must lie in the body (not in a signed patch's signature section,
        // whose bytes would be decoded as segment data) and leave room to
        // count the rest of the patch without overflow.
        if checkpoint.patch_offset < start.body_start || checkpoint.patch_offset > MAX_PATCH_OFFSET
        {
            return Err(fwdelta_format::FormatError::BadField {
                field: "checkpoint",
                detail: format!(
                    "patch offset {} is outside the patch body (from {})",
                    checkpoint.patch_offset, start.body_start
                ),
            }
            .into());
        }
        a.accept_start()?;

        let mut hashed = 0u64;
        let (buf, new) = a.interp.scratch_and_writer();
        while hashed < checkpoint.new_offset {
            let n = (checkpoint.new_offset - hashed).min(buf.len() as u64) as usize;
            match read_back(&mut buf[..n]).map_err(ApplyError::Sink)? {
                0 => {
                    return Err(ApplyError::Sink(IoError::short(
                        "resume: the new image already produced",
                        hashed,
                        checkpoint.new_offset,
                    )))
                }
                got => {
                    let got = got.min(n);
                    if let Some(h) = new.hash.as_mut() {
                        h.update(&buf[..got]);
                    }
                    hashed += got as u64;
                }
            }
        }
        let kept = a
            .interp
            .new
            .hash
            .as_ref()
            .map(|h| *h.clone().finalize().as_bytes());
        if kept != Some(checkpoint.new_hash) {
            return Err(ApplyError::PartialOutputDamaged {
                len: checkpoint.new_offset,
            });
        }
        a.interp.new.produced = checkpoint.new_offset;
        a.chain = checkpoint.chain;
        a.received = checkpoint.patch_offset;
        a.next_index = checkpoint.next_segment;
        a.reader
            .resume_at(checkpoint.new_offset, checkpoint.patch_offset);
        a.next_part()?;
        Ok(a)
    }

    /// The policy's verdict on the patch (its signers and, for a signed
    /// patch, its identity: what a terminal stores to refuse a replay),
    /// once the header has been read and accepted.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.accepted.then_some(&self.verdict)
    }

    /// The header, once it has been read and accepted.
    pub fn header(&self) -> Option<&Header> {
        match self.accepted {
            true => self.reader.start().map(|s| &s.header),
            false => None,
        }
    }

    /// Give up on this apply and take the sink back (e.g. to read what a
    /// resumable sink recorded before a cut download).
    pub fn into_sink(self) -> S {
        self.interp.new.sink
    }

    /// New-image bytes written to the sink so far.
    pub fn produced(&self) -> u64 {
        self.interp.new.produced
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
                let start = self.reader.into_start().ok_or(ApplyError::Poisoned)?;
                return Ok((
                    ApplyReport {
                        header: start.header,
                        patch_len: self.received,
                        already_applied: false,
                        verdict: self.verdict,
                    },
                    self.interp.new.sink,
                ));
            }
            Stage::Failed => return Err(ApplyError::Poisoned),
            Stage::Framing | Stage::Check(_) => self.reader.stage_name(),
            Stage::Payload(seg) => PatchPart::Segment(seg.head.index),
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
                Stage::Framing | Stage::Check(_) => {
                    let n = self.reader.wanted().min(data.len());
                    let part = self.reader.push(&data[..n])?;
                    data = &data[n..];
                    self.received += n as u64;
                    self.complete_part(part)?;
                }
            }
        }
        Ok(())
    }

    /// The reader completed `part`: act on it.
    fn complete_part(&mut self, part: Part) -> Result<(), ApplyError> {
        match (part, core::mem::replace(&mut self.stage, Stage::Failed)) {
            (Part::Partial, stage) => self.stage = stage,
            (Part::Start, Stage::Framing) => {
                self.accept_start()?;
                self.next_part()?;
            }
            (Part::Segment(head), Stage::Framing) => {
                match &mut self.body {
                    Body::Stream(src) => src.reset()?,
                    Body::Split(split) => split.reset(head.index)?,
                    Body::Empty => return Err(ApplyError::Poisoned),
                }
                self.interp.start_segment(&head);
                let start = self.reader.start().ok_or(ApplyError::Poisoned)?;
                self.stage = Stage::Payload(Box::new(Segment::new(
                    head,
                    self.reader.segment_bytes(),
                    &start.header_hash,
                )));
            }
            (Part::Check(stored), Stage::Check(seg)) => {
                let hash = seg.check.finalize();
                if truncate_check(&hash) != stored {
                    return Err(SegmentFault::CheckMismatch.at(seg.head.index));
                }
                self.segment_verified(&seg.head, &hash)?;
            }
            _ => return Err(ApplyError::Poisoned),
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
        self.last_segment_hash = Some(*hash.as_bytes());
        self.chain = chain::next(&self.chain, hash.as_bytes());
        self.next_index += 1;
        self.next_part()?;
        // A clone of the running hash, finalized: the bytes produced so far
        // (about 2 KB copied per segment; the running hash goes on).
        let new_hash = self
            .interp
            .new
            .hash
            .as_ref()
            .map_or([0; HASH_LEN], |h| *h.clone().finalize().as_bytes());
        let header_hash = self.reader.start().ok_or(ApplyError::Poisoned)?.header_hash;
        let checkpoint = Checkpoint {
            header_hash,
            next_segment: self.next_index,
            patch_offset: self.received,
            new_offset: self.interp.new.produced,
            chain: self.chain,
            new_hash,
        };
        self.interp
            .new
            .sink
            .segment_done(head, &checkpoint)
            .map_err(ApplyError::Sink)
    }

    /// After the header or a segment: expect the next segment, or, after the
    /// last one, check that the segments produced the new image.
    fn next_part(&mut self) -> Result<(), ApplyError> {
        if self.only_segment.is_some_and(|i| self.next_index > i) {
            self.stage = Stage::Done;
            return Ok(());
        }
        let count = self.reader.start().map_or(0, |s| s.header.segment_count);
        if self.next_index < count {
            self.stage = Stage::Framing;
            self.reader.expect_segment(self.next_index);
            Ok(())
        } else {
            self.finish_image()
        }
    }

    /// Every segment has been read and checked: the output must be the whole
    /// new image, with the header's hash.
    fn finish_image(&mut self) -> Result<(), ApplyError> {
        let header = &self.reader.start().ok_or(ApplyError::Poisoned)?.header;
        // Segment parsing already makes the last segment end at new_len; this
        // guards that invariant where the hash is about to be trusted.
        let produced = self.interp.new.produced;
        if produced != header.new_len {
            return Err(ApplyError::Format(FormatError::SegmentsCover {
                covered: produced,
                new_len: header.new_len,
            }));
        }
        let produced_hash = self
            .interp
            .new
            .hash
            .as_ref()
            .map(|h| *h.finalize().as_bytes());
        if produced_hash != Some(header.new_hash) {
            return Err(ApplyError::NewHashMismatch);
        }
        self.stage = Stage::Done;
        Ok(())
    }

    /// The header (and section) are read and within limits: check the patch
    /// against the policy (signatures, product, counter, expiry, replay),
    /// then verify the old image and create the decoders.
    fn accept_start(&mut self) -> Result<(), ApplyError> {
        self.judge_and_verify()?;
        self.configure_body()?;
        self.accepted = true;
        Ok(())
    }

    /// The policy's verdict on the start, then the old image's check.
    fn judge_and_verify(&mut self) -> Result<(), ApplyError> {
        let start = self.reader.start().ok_or(ApplyError::Poisoned)?;
        self.verdict =
            self.opts
                .judge(&start.header, &start.header_bytes, start.section.as_ref())?;
        self.chain = start.header_hash;
        crate::payload_decoder::check_codec_built(start.header.codec)?;
        verify_old(
            self.interp.old_image(),
            self.interp.scratch(),
            &start.header,
        )
    }

    /// Set up the predictor, the literal filter and the layout's decoders
    /// for the accepted header.
    fn configure_body(&mut self) -> Result<(), ApplyError> {
        let start = self.reader.start().ok_or(ApplyError::Poisoned)?;
        let header = &start.header;
        crate::payload_decoder::check_codec_built(header.codec)?;
        let predictor = header
            .code_refs
            .as_ref()
            .map(|code| Box::new(Predictor::new(code, header.old_len)));
        self.interp.configure(predictor, header.literal_filter);
        self.body = match header.layout {
            _ if header.segment_count == 0 => Body::Empty,
            Layout::Interleaved => {
                Body::Stream(StreamSource::new(PayloadDecoder::for_header(header)?))
            }
            Layout::Split | Layout::Modelled => Body::Split(Box::new(SplitStreams::new(header)?)),
        };
        Ok(())
    }

    /// Stream payload bytes (no more than the payload has left) through the
    /// layout's source and the record interpreter.
    fn payload(&mut self, chunk: &[u8]) -> Result<(), ApplyError> {
        let Stage::Payload(seg) = &mut self.stage else {
            return Err(ApplyError::Poisoned);
        };
        let n = chunk.len();
        seg.check.update(chunk);
        match &mut self.body {
            Body::Stream(src) => {
                let mut fed = src.fed(chunk, n == seg.payload_left as usize);
                self.interp.run(&mut fed)?;
                fed.done().map_err(|f| f.at(seg.head.index))?;
            }
            Body::Split(split) => split.feed(chunk, seg.payload_left, &mut self.interp)?,
            Body::Empty => return Err(ApplyError::Poisoned),
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
            let (frame_done, partial_head) = match &self.body {
                Body::Stream(src) => (src.frame_done(), src.partial_head()),
                Body::Split(split) => (split.frame_done(), false),
                Body::Empty => (false, false),
            };
            self.interp.finish_segment(frame_done, partial_head)?;
            let Stage::Payload(seg) = core::mem::replace(&mut self.stage, Stage::Failed) else {
                return Err(ApplyError::Poisoned);
            };
            let start = self.reader.start().ok_or(ApplyError::Poisoned)?;
            // Keyed on the header's signed flag, not on the section being
            // there: a signed segment without its signed check is refused.
            if start.header.is_signed() {
                let hash = seg.check.finalize();
                let expected = start
                    .section
                    .as_ref()
                    .and_then(|s| s.checks.get(seg.head.index as usize));
                if expected != Some(&truncate_check(&hash)) {
                    return Err(SegmentFault::SignedCheckMismatch.at(seg.head.index));
                }
                self.segment_verified(&seg.head, &hash)?;
            } else if start.header.segment_has_check(seg.head.index) {
                self.reader.expect_check();
                self.stage = Stage::Check(seg);
            } else {
                let hash = seg.check.finalize();
                self.segment_verified(&seg.head, &hash)?;
            }
        }
        Ok(())
    }
}

/// Largest patch offset a resume checkpoint may name (2^62: far past any
/// real patch, far enough from `u64::MAX` that counting on cannot overflow).
const MAX_PATCH_OFFSET: u64 = 1 << 62;

/// Check the old image's length and BLAKE3 against the header: one pass,
/// through the 16 KiB buffer `buf`.
fn verify_old<O: OldImage + ?Sized>(
    old: &O,
    buf: &mut [u8],
    header: &Header,
) -> Result<(), ApplyError> {
    let actual = old.len();
    if actual != header.old_len {
        return Err(ApplyError::OldLength {
            expected: header.old_len,
            actual,
        });
    }
    let mut hasher = blake3::Hasher::new();
    let mut pos = 0u64;
    while pos < actual {
        let n = (actual - pos).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        old.read_at(pos, buf).map_err(ApplyError::OldRead)?;
        hasher.update(buf);
        pos += n as u64;
    }
    crate::error::check_old_hash(&hasher.finalize(), header)
}

impl<O: OldImage + ?Sized, S: Sink> Applier<'_, O, S> {
    /// Feed everything `patch` yields (16 KiB at a time), then
    /// [`finish`](Self::finish). After [`resume`](Self::resume), `patch` must
    /// start at the checkpoint's patch offset.
    #[cfg(feature = "std")]
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

#[cfg(feature = "std")]
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
