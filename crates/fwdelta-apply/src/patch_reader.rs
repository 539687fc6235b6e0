//! The one reader of a patch's framing: the header, a signed patch's
//! signature section, segment heads and stored segment checks, with this
//! applier's limits checked as soon as the bytes that decide them are in.
//!
//! It does no I/O: it is told how many bytes it wants next
//! ([`PatchReader::wanted`]) and is handed them ([`PatchReader::push`]), so the
//! push-mode [`crate::Applier`] feeds it what arrives and the pull-mode
//! callers (resume, inspect, in-place) drive it from a reader or a slice
//! ([`PatchReader::read_start`], [`PatchReader::read_part`]). Payload bytes
//! never pass through it: its callers stream them to the decoders.
//!
//! Memory: the header's bytes (at most 4 KiB, or an executable-aware
//! header, refused from its first 8 bytes unless it and the applier's buffers
//! fit the memory limit) and the signature section (8 bytes a segment, which
//! the header's memory claim counts and the limit bounds), both kept for the
//! patch's lifetime; a segment head of at most 30 bytes.

use crate::error::{ApplyError, PatchPart};
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::signature::SignatureSection;
use fwdelta_format::{chain, MemoryModel, CHECK_LEN, HASH_LEN, MAX_IMAGE_LEN};
use std::io::{self, Read};

/// Which kind of patch the caller can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Ordinary patches, to a new image (in-place patches are refused).
    NewImage,
    /// In-place patches only.
    InPlace,
    /// Either (inspection: nothing is applied).
    Any,
}

/// The limits a patch is checked against, all in one place: the memory the
/// header claims, the new image's size, and the apply mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) memory_limit: u64,
    pub(crate) max_new_len: u64,
    pub(crate) mode: Mode,
}

impl Limits {
    /// No limits beyond the format's (inspection).
    pub(crate) fn none() -> Limits {
        Limits {
            memory_limit: u64::MAX,
            max_new_len: MAX_IMAGE_LEN,
            mode: Mode::Any,
        }
    }

    /// The options' limits, for `mode`.
    pub(crate) fn of(opts: &crate::ApplyOptions, mode: Mode) -> Limits {
        Limits {
            memory_limit: opts.memory_limit,
            max_new_len: opts.max_new_len,
            mode,
        }
    }

    /// A header of `len` bytes is about to be buffered. Only
    /// executable-aware headers exceed the plain limit, and their claim
    /// counts the header on top of the applier's buffers: if that already
    /// breaks the limit, refuse before buffering it.
    fn check_header_len(&self, len: usize) -> Result<(), ApplyError> {
        let floor = len as u64 + MemoryModel::APPLIER_BUFFERS;
        if len > Header::PLAIN_MAX_LEN && floor > self.memory_limit {
            return Err(ApplyError::MemoryBudget {
                needed: floor,
                limit: self.memory_limit,
            });
        }
        Ok(())
    }

    /// Check a parsed header (before anything it sizes is read or allocated).
    fn check_header(&self, header: &Header) -> Result<(), ApplyError> {
        match self.mode {
            Mode::NewImage if header.cell_log.is_some() => {
                return Err(ApplyError::WrongMode(
                    "this is an in-place patch: apply it in place (fwdelta apply --in-place)",
                ))
            }
            Mode::InPlace if header.cell_log.is_none() => {
                return Err(ApplyError::WrongMode(
                    "this patch is not an in-place patch: apply it to a new file",
                ))
            }
            _ => {}
        }
        if header.apply_memory > self.memory_limit {
            return Err(ApplyError::MemoryBudget {
                needed: header.apply_memory,
                limit: self.memory_limit,
            });
        }
        if header.new_len > self.max_new_len {
            return Err(ApplyError::NewTooLarge {
                len: header.new_len,
                limit: self.max_new_len,
            });
        }
        Ok(())
    }
}

/// The start of a patch, as [`PatchReader`] read and checked it.
#[derive(Debug, Clone)]
pub(crate) struct PatchStart {
    /// The validated header.
    pub(crate) header: Header,
    /// Its bytes (what signatures sign, with the check table).
    pub(crate) header_bytes: Vec<u8>,
    /// Its hash, which segment checks and the chain bind to.
    pub(crate) header_hash: [u8; HASH_LEN],
    /// A signed patch's signature section (not verified here).
    pub(crate) section: Option<SignatureSection>,
    /// Where segment 0 starts: after the header and the section.
    pub(crate) body_start: u64,
}

/// What [`PatchReader::push`] completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Nothing yet: more bytes are wanted.
    Partial,
    /// The header and, if signed, the signature section are read and the
    /// limits hold: see [`PatchReader::start`].
    Start,
    /// A segment head; its bytes are [`PatchReader::segment_bytes`]. The
    /// payload follows and is the caller's to read.
    Segment(SegmentHeader),
    /// The stored check after a segment's payload.
    Check([u8; CHECK_LEN]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prefix,
    Header,
    /// The check table and the signature count, then the signatures.
    Section,
    SegmentHead,
    Check,
    /// Waiting for its caller (inside a payload, or after the last segment).
    Idle,
}

/// Sans-I/O reader of a patch's framing; see the module documentation.
pub(crate) struct PatchReader {
    limits: Limits,
    stage: Stage,
    acc: Vec<u8>,
    want: usize,
    /// Patch bytes pushed so far.
    offset: u64,
    start: Option<PatchStart>,
    /// Index of the segment whose head or check comes next.
    index: u32,
    /// New-image offset where the next segment starts (ordinary patches).
    new_offset: u64,
}

impl PatchReader {
    /// A reader at the start of a patch, checking `limits`.
    pub(crate) fn new(limits: Limits) -> PatchReader {
        PatchReader {
            limits,
            stage: Stage::Prefix,
            acc: Vec::with_capacity(Header::PREFIX_LEN),
            want: Header::PREFIX_LEN,
            offset: 0,
            start: None,
            index: 0,
            new_offset: 0,
        }
    }

    /// Bytes the reader wants before it can complete its next part (0 while
    /// it waits for its caller).
    pub(crate) fn wanted(&self) -> usize {
        self.want - self.acc.len()
    }

    /// Patch bytes pushed so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The header and section, once [`Part::Start`] was returned.
    pub(crate) fn start(&self) -> Option<&PatchStart> {
        self.start.as_ref()
    }

    /// Take a signed patch's signature section out (for a caller that holds
    /// the check table itself).
    pub(crate) fn take_section(&mut self) -> Option<SignatureSection> {
        self.start.as_mut().and_then(|s| s.section.take())
    }

    /// Take the start out (the reader is of no further use).
    pub(crate) fn into_start(self) -> Option<PatchStart> {
        self.start
    }

    /// The bytes of the segment head just returned.
    pub(crate) fn segment_bytes(&self) -> &[u8] {
        &self.acc
    }

    /// Where in the patch the reader stands, as a truncation error names it.
    pub(crate) fn stage_name(&self) -> PatchPart {
        match self.stage {
            Stage::Prefix | Stage::Header => PatchPart::Header,
            Stage::Section => PatchPart::SignatureSection,
            Stage::SegmentHead if self.acc.is_empty() => PatchPart::BeforeSegment(self.index),
            Stage::SegmentHead => PatchPart::SegmentHeader(self.index),
            Stage::Check => PatchPart::SegmentCheck(self.index),
            Stage::Idle => PatchPart::Segment(self.index),
        }
    }

    /// Expect the head of segment `index` next (ordinary patches: segments
    /// come in order, and the reader knows where each one starts in the new
    /// image; in-place patches name their cell, so any index may be asked
    /// for, after a seek).
    pub(crate) fn expect_segment(&mut self, index: u32) {
        self.index = index;
        self.stage = Stage::SegmentHead;
        self.acc.clear();
        self.want = 1;
    }

    /// Expect the stored check of the segment whose head was read last.
    pub(crate) fn expect_check(&mut self) {
        self.stage = Stage::Check;
        self.acc.clear();
        self.want = CHECK_LEN;
    }

    /// Hand the reader the next patch bytes, at most [`Self::wanted`].
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Part, ApplyError> {
        let n = bytes.len().min(self.wanted());
        self.acc.extend_from_slice(&bytes[..n]);
        self.offset += n as u64;
        if self.want == 0 || self.acc.len() < self.want {
            return Ok(Part::Partial);
        }
        self.complete()
    }

    /// `acc` holds what the stage wanted: act on it.
    fn complete(&mut self) -> Result<Part, ApplyError> {
        match self.stage {
            Stage::Prefix => {
                let mut prefix = [0u8; Header::PREFIX_LEN];
                prefix.copy_from_slice(&self.acc);
                let len = Header::parse_prefix(&prefix)?;
                self.limits.check_header_len(len)?;
                self.want = len;
                self.stage = Stage::Header;
                Ok(Part::Partial)
            }
            Stage::Header => {
                let header = Header::parse(&self.acc)?;
                self.limits.check_header(&header)?;
                let header_bytes = std::mem::take(&mut self.acc);
                if header.is_signed() {
                    // Bounded: the memory claim checked above covers it.
                    self.want = SignatureSection::fixed_len(&header);
                    self.stage = Stage::Section;
                }
                self.start = Some(PatchStart {
                    header_hash: chain::start(&header_bytes),
                    header_bytes,
                    header,
                    section: None,
                    body_start: self.offset,
                });
                if self.stage == Stage::Section {
                    return Ok(Part::Partial);
                }
                self.idle();
                Ok(Part::Start)
            }
            Stage::Section => {
                let start = self.start.as_mut().ok_or(ApplyError::Poisoned)?;
                let header = &start.header;
                let fixed = SignatureSection::fixed_len(header);
                let count = self.acc[fixed - 1];
                let signatures = SignatureSection::signatures_len(count)?;
                if self.acc.len() == fixed && signatures > 0 {
                    self.want = fixed + signatures;
                    return Ok(Part::Partial);
                }
                start.section = Some(SignatureSection::parse(header, &self.acc)?);
                start.body_start = self.offset;
                self.idle();
                Ok(Part::Start)
            }
            Stage::SegmentHead => {
                let header = &self.start.as_ref().ok_or(ApplyError::Poisoned)?.header;
                if SegmentHeader::complete_len(&self.acc, header, self.index)?.is_none() {
                    // A varint is still open: take one more byte.
                    self.want += 1;
                    return Ok(Part::Partial);
                }
                let head = if header.cell_log.is_some() {
                    SegmentHeader::parse_cell(&self.acc, header, self.index)?.0
                } else {
                    SegmentHeader::parse(&self.acc, header, self.index, self.new_offset)?
                };
                self.new_offset = head.new_offset + head.new_len;
                // Keep the head's bytes for the caller (the segment check
                // covers them) until the next part starts.
                self.stage = Stage::Idle;
                self.want = self.acc.len();
                Ok(Part::Segment(head))
            }
            Stage::Check => {
                let mut c = [0u8; CHECK_LEN];
                c.copy_from_slice(&self.acc);
                self.idle();
                Ok(Part::Check(c))
            }
            Stage::Idle => Err(ApplyError::Poisoned),
        }
    }

    fn idle(&mut self) {
        self.stage = Stage::Idle;
        self.acc.clear();
        self.want = 0;
    }

    /// Read the start of a patch (header and section) from `r`, which is
    /// left where segment 0 begins. Cost: the buffers of the module
    /// documentation; `r` is read in pieces of at most what is wanted.
    pub(crate) fn read_start<R: Read + ?Sized>(
        r: &mut R,
        limits: Limits,
    ) -> Result<PatchReader, ApplyError> {
        let mut reader = PatchReader::new(limits);
        match reader.read_part(r)? {
            Part::Start => Ok(reader),
            _ => Err(ApplyError::Poisoned),
        }
    }

    /// Read the start of a patch from the front of `bytes` (a resume's copy
    /// of it); bytes after the start are ignored.
    pub(crate) fn start_from_slice(
        bytes: &[u8],
        limits: Limits,
    ) -> Result<PatchReader, ApplyError> {
        let mut reader = PatchReader::new(limits);
        let mut rest = bytes;
        loop {
            let n = reader.wanted().min(rest.len());
            if n == 0 {
                return Err(ApplyError::Truncated {
                    stage: reader.stage_name(),
                    offset: bytes.len() as u64,
                });
            }
            let part = reader.push(&rest[..n])?;
            rest = &rest[n..];
            if part == Part::Start {
                return Ok(reader);
            }
        }
    }

    /// Read from `r` until the part the reader expects is complete. Reads
    /// straight into the part's buffer, at most what is wanted at a time.
    pub(crate) fn read_part<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Part, ApplyError> {
        loop {
            let have = self.acc.len();
            if self.want <= have {
                return Err(ApplyError::Poisoned);
            }
            self.acc.resize(self.want, 0);
            let got = r.read(&mut self.acc[have..]);
            self.acc.truncate(have + *got.as_ref().unwrap_or(&0));
            let got = match got {
                Ok(0) => {
                    return Err(ApplyError::Truncated {
                        stage: self.stage_name(),
                        offset: self.offset,
                    })
                }
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::PatchRead(e)),
            };
            // The bytes are in place: count them, then act as `push` would.
            self.offset += got as u64;
            if self.acc.len() < self.want {
                continue;
            }
            match self.complete()? {
                Part::Partial => {}
                part => return Ok(part),
            }
        }
    }

    /// Continue a patch whose first segments produced `new_offset` bytes
    /// and ended at patch offset `patch_offset` (a resume).
    pub(crate) fn resume_at(&mut self, new_offset: u64, patch_offset: u64) {
        self.new_offset = new_offset;
        self.offset = patch_offset;
    }

    /// Account for `n` bytes its caller read past the reader (a payload).
    pub(crate) fn skipped(&mut self, n: u64) {
        self.offset += n;
    }

    /// Set the patch offset (after its caller seeked the patch).
    pub(crate) fn set_offset(&mut self, offset: u64) {
        self.offset = offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwdelta_diff::{diff, Options};

    fn testdata(which: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../testdata/fw-cortex-m4/{which}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A multi-segment patch of the firmware pair (`in_place`: an in-place one).
    fn patch(in_place: bool) -> Vec<u8> {
        let opts = Options {
            segment_cost: 600,
            level: 9,
            in_place: in_place.then_some(12),
            ..Options::default()
        };
        diff(&testdata("old"), &testdata("new"), &opts)
            .unwrap()
            .bytes
    }

    /// Walk `patch` by pushing it `step` bytes at a time (payloads
    /// skipped): the segment heads and checks in order, and where it ended.
    fn walk(patch: &[u8], step: usize) -> (Vec<SegmentHeader>, Vec<[u8; CHECK_LEN]>, u64) {
        let mut r = PatchReader::new(Limits::none());
        let (mut heads, mut checks) = (Vec::new(), Vec::new());
        let mut at = 0;
        let mut index = 0;
        loop {
            let n = r.wanted().min(step).min(patch.len() - at);
            let part = r.push(&patch[at..at + n]).unwrap();
            at += n;
            let header = &r.start().map(|s| s.header.clone());
            match part {
                Part::Partial => continue,
                Part::Start => {}
                Part::Segment(head) => {
                    at += head.payload_len as usize;
                    r.skipped(u64::from(head.payload_len));
                    heads.push(head);
                    let h = header.as_ref().unwrap();
                    if h.segment_has_check(index) {
                        r.expect_check();
                        continue;
                    }
                    index += 1;
                }
                Part::Check(c) => {
                    checks.push(c);
                    index += 1;
                }
            }
            let count = header.as_ref().unwrap().segment_count;
            if index == count {
                return (heads, checks, r.offset());
            }
            r.expect_segment(index);
        }
    }

    #[test]
    fn any_split_reads_the_same_framing_as_inspect() {
        for in_place in [false, true] {
            let p = patch(in_place);
            let info = crate::inspect(&p[..]).unwrap();
            for step in [1, 2, 7, 64, usize::MAX] {
                let (heads, checks, end) = walk(&p, step);
                assert_eq!(heads, info.segments, "step {step}");
                assert_eq!(end, p.len() as u64, "step {step}");
                let want = info.segments.len() - usize::from(!in_place);
                assert_eq!(checks.len(), want, "step {step}");
            }
            // The three ways in agree on the start.
            let pulled = PatchReader::read_start(&mut &p[..], Limits::none()).unwrap();
            let sliced = PatchReader::start_from_slice(&p, Limits::none()).unwrap();
            for r in [&pulled, &sliced] {
                let s = r.start().unwrap();
                assert_eq!(s.header, info.header);
                assert_eq!(s.header_bytes, info.header_bytes);
                assert_eq!(s.body_start, info.header_len);
                assert_eq!(s.header_hash, chain::start(&info.header_bytes));
            }
        }
    }

    #[test]
    fn limits_are_checked_in_one_place_for_every_way_in() {
        let p = patch(false);
        let header = crate::inspect(&p[..]).unwrap().header;
        let limits = [
            (
                Limits {
                    memory_limit: header.apply_memory - 1,
                    ..Limits::none()
                },
                "memory",
            ),
            (
                Limits {
                    max_new_len: header.new_len - 1,
                    ..Limits::none()
                },
                "new length",
            ),
            (
                Limits {
                    mode: Mode::InPlace,
                    ..Limits::none()
                },
                "mode",
            ),
        ];
        for (limits, what) in limits {
            let pulled = PatchReader::read_start(&mut &p[..], limits).err();
            let sliced = PatchReader::start_from_slice(&p, limits).err();
            let mut pushed = PatchReader::new(limits);
            let mut result = Ok(Part::Partial);
            let mut at = 0;
            while matches!(result, Ok(Part::Partial)) {
                let n = pushed.wanted();
                result = pushed.push(&p[at..at + n]);
                at += n;
            }
            for e in [pulled, sliced, result.err()] {
                let e = e.unwrap_or_else(|| panic!("{what}: accepted"));
                let ok = match what {
                    "memory" => matches!(e, ApplyError::MemoryBudget { .. }),
                    "new length" => matches!(e, ApplyError::NewTooLarge { .. }),
                    _ => matches!(e, ApplyError::WrongMode(_)),
                };
                assert!(ok, "{what}: {e}");
            }
        }
        // An in-place patch is refused by an applier to a new file.
        let p = patch(true);
        let e = PatchReader::start_from_slice(&p, Limits::of(&Default::default(), Mode::NewImage));
        assert!(matches!(e, Err(ApplyError::WrongMode(_))));
    }

    #[test]
    fn a_cut_start_names_where_it_ends() {
        let p = patch(false);
        let len = crate::inspect(&p[..]).unwrap().header_len as usize;
        for cut in [0, 3, Header::PREFIX_LEN, len - 1] {
            match PatchReader::start_from_slice(&p[..cut], Limits::none()) {
                Err(ApplyError::Truncated { stage, offset }) => {
                    assert_eq!(stage, PatchPart::Header);
                    assert_eq!(offset, cut as u64);
                }
                Err(e) => panic!("cut {cut}: {e}"),
                Ok(_) => panic!("cut {cut}: accepted"),
            }
            match PatchReader::read_start(&mut &p[..cut], Limits::none()) {
                Err(ApplyError::Truncated { stage, offset }) => {
                    assert_eq!(stage, PatchPart::Header);
                    assert_eq!(offset, cut as u64);
                }
                Err(e) => panic!("cut {cut}: {e}"),
                Ok(_) => panic!("cut {cut}: accepted"),
            }
        }
    }
}
