//! The one reader of a patch's framing: the header, a signed patch's
//! signature section, segment heads and stored segment checks, with an
//! applier's limits ([`Limits`]) checked as soon as the bytes that decide
//! them are in.
//!
//! It does no I/O: it says how many bytes it wants next
//! ([`PatchReader::wanted`]) and is handed them ([`PatchReader::push`], or
//! read straight into its buffer: [`PatchReader::unfilled`] and
//! [`PatchReader::filled`]), so a push-mode applier feeds it what arrives
//! and pull-mode callers drive it from a reader or a slice
//! ([`PatchReader::start_from_slice`]). Payload bytes never pass through
//! it: its callers stream them to the decoders.
//!
//! Memory: the header's bytes (at most 4 KiB, or an executable-aware
//! header, refused from its first 8 bytes unless it and the applier's buffers
//! fit the memory limit) and the signature section (8 bytes a segment, which
//! the header's memory claim counts and the limit bounds), both kept for the
//! patch's lifetime; a segment head of at most 30 bytes. Nothing is
//! allocated from a size before the limits have accepted it.

use crate::error::FormatError;
use crate::header::Header;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::segment::SegmentHeader;
use crate::signature::SignatureSection;
use crate::{chain, MemoryModel, CHECK_LEN, HASH_LEN, MAX_IMAGE_LEN};
use core::fmt;

/// Which kind of patch the caller can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Ordinary patches, to a new image (in-place patches are refused).
    NewImage,
    /// In-place patches only.
    InPlace,
    /// Either (inspection: nothing is applied).
    Any,
}

/// The limits a patch is checked against, all in one place: the memory the
/// header claims, the new image's size, and the apply mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Refuse headers claiming more applier memory than this.
    pub memory_limit: u64,
    /// Refuse patches producing a larger image.
    pub max_new_len: u64,
    /// Refuse patches of the other apply mode.
    pub mode: Mode,
}

impl Limits {
    /// No limits beyond the format's (inspection).
    pub fn none() -> Limits {
        Limits {
            memory_limit: u64::MAX,
            max_new_len: MAX_IMAGE_LEN,
            mode: Mode::Any,
        }
    }

    /// These limits.
    pub fn new(memory_limit: u64, max_new_len: u64, mode: Mode) -> Limits {
        Limits {
            memory_limit,
            max_new_len,
            mode,
        }
    }

    /// A header of `len` bytes is about to be buffered. Only
    /// executable-aware headers exceed the plain limit, and their claim
    /// counts the header on top of the applier's buffers: if that already
    /// breaks the limit, refuse before buffering it.
    fn check_header_len(&self, len: usize) -> Result<(), FormatError> {
        let floor = len as u64 + MemoryModel::APPLIER_BUFFERS;
        if len > Header::PLAIN_MAX_LEN && floor > self.memory_limit {
            return Err(FormatError::MemoryBudget {
                needed: floor,
                limit: self.memory_limit,
            });
        }
        Ok(())
    }

    /// Check a parsed header (before anything it sizes is read or allocated).
    fn check_header(&self, header: &Header) -> Result<(), FormatError> {
        match self.mode {
            Mode::NewImage if header.cell_log.is_some() => {
                return Err(FormatError::WrongMode(
                    "this is an in-place patch: apply it in place (fwdelta apply --in-place)",
                ))
            }
            Mode::InPlace if header.cell_log.is_none() => {
                return Err(FormatError::WrongMode(
                    "this patch is not an in-place patch: apply it to a new file",
                ))
            }
            _ => {}
        }
        if header.apply_memory > self.memory_limit {
            return Err(FormatError::MemoryBudget {
                needed: header.apply_memory,
                limit: self.memory_limit,
            });
        }
        if header.new_len > self.max_new_len {
            return Err(FormatError::NewTooLarge {
                len: header.new_len,
                limit: self.max_new_len,
            });
        }
        Ok(())
    }
}

/// Where in a patch something happened (a truncation, for one): its
/// [`Display`](fmt::Display) is the phrase error messages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatchPart {
    /// Inside the header.
    Header,
    /// Inside a signed patch's signature section.
    SignatureSection,
    /// Between segments, before this one.
    BeforeSegment(u32),
    /// Inside this segment's header.
    SegmentHeader(u32),
    /// Inside this segment's payload.
    Segment(u32),
    /// Inside this segment's stored check.
    SegmentCheck(u32),
}

impl fmt::Display for PatchPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchPart::Header => write!(f, "inside the header"),
            PatchPart::SignatureSection => write!(f, "inside the signature section"),
            PatchPart::BeforeSegment(i) => write!(f, "before segment {i}"),
            PatchPart::SegmentHeader(i) => write!(f, "inside the header of segment {i}"),
            PatchPart::Segment(i) => write!(f, "inside segment {i}"),
            PatchPart::SegmentCheck(i) => write!(f, "inside the check of segment {i}"),
        }
    }
}

/// The start of a patch, as [`PatchReader`] read and checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PatchStart {
    /// The validated header.
    pub header: Header,
    /// Its bytes (what signatures sign, with the check table).
    pub header_bytes: Vec<u8>,
    /// Its hash, which segment checks and the chain bind to.
    pub header_hash: [u8; HASH_LEN],
    /// A signed patch's signature section (not verified here).
    pub section: Option<SignatureSection>,
    /// Where segment 0 starts: after the header and the section.
    pub body_start: u64,
}

/// What [`PatchReader::push`] completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
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
#[derive(Debug)]
pub struct PatchReader {
    limits: Limits,
    stage: Stage,
    acc: Vec<u8>,
    want: usize,
    /// Patch bytes pushed so far.
    offset: u64,
    start: Option<PatchStart>,
    /// Index of the segment whose head or check comes next.
    index: u32,
    /// While the caller fills [`Self::unfilled`]: the bytes held before.
    filling: Option<usize>,
    /// New-image offset where the next segment starts (ordinary patches).
    new_offset: u64,
}

impl PatchReader {
    /// A reader at the start of a patch, checking `limits`.
    pub fn new(limits: Limits) -> PatchReader {
        PatchReader {
            limits,
            stage: Stage::Prefix,
            acc: Vec::with_capacity(Header::PREFIX_LEN),
            want: Header::PREFIX_LEN,
            offset: 0,
            start: None,
            index: 0,
            filling: None,
            new_offset: 0,
        }
    }

    /// Bytes the reader wants before it can complete its next part (0 while
    /// it waits for its caller).
    pub fn wanted(&self) -> usize {
        self.want - self.acc.len()
    }

    /// Patch bytes pushed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The header and section, once [`Part::Start`] was returned.
    pub fn start(&self) -> Option<&PatchStart> {
        self.start.as_ref()
    }

    /// Take a signed patch's signature section out (for a caller that holds
    /// the check table itself).
    pub fn take_section(&mut self) -> Option<SignatureSection> {
        self.start.as_mut().and_then(|s| s.section.take())
    }

    /// Take the start out (the reader is of no further use).
    pub fn into_start(self) -> Option<PatchStart> {
        self.start
    }

    /// The bytes of the segment head just returned.
    pub fn segment_bytes(&self) -> &[u8] {
        &self.acc
    }

    /// Where in the patch the reader stands, as a truncation error names it.
    pub fn stage_name(&self) -> PatchPart {
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
    pub fn expect_segment(&mut self, index: u32) {
        self.index = index;
        self.stage = Stage::SegmentHead;
        self.acc.clear();
        self.want = 1;
    }

    /// Expect the stored check of the segment whose head was read last.
    pub fn expect_check(&mut self) {
        self.stage = Stage::Check;
        self.acc.clear();
        self.want = CHECK_LEN;
    }

    /// Hand the reader the next patch bytes, at most [`Self::wanted`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Part, FormatError> {
        // Padding an unfinished `unfilled` left is not patch bytes.
        if let Some(have) = self.filling.take() {
            self.acc.truncate(have);
        }
        let n = bytes.len().min(self.wanted());
        // Exactly the part's length: the buffer must not grow past what
        // the memory claim counts by doubling on small pushes.
        self.acc
            .reserve_exact(self.want.saturating_sub(self.acc.len()));
        self.acc.extend_from_slice(&bytes[..n]);
        self.offset += n as u64;
        if self.want == 0 || self.acc.len() < self.want {
            return Ok(Part::Partial);
        }
        self.complete()
    }

    /// `acc` holds what the stage wanted: act on it.
    fn complete(&mut self) -> Result<Part, FormatError> {
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
                let header_bytes = core::mem::take(&mut self.acc);
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
                let start = self.start.as_mut().ok_or(FormatError::ReaderMisuse)?;
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
                // The section's bytes are parsed into their own table: do
                // not keep their buffer for the rest of the apply.
                self.acc = Vec::new();
                self.idle();
                Ok(Part::Start)
            }
            Stage::SegmentHead => {
                let header = &self.start.as_ref().ok_or(FormatError::ReaderMisuse)?.header;
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
            Stage::Idle => Err(FormatError::ReaderMisuse),
        }
    }

    fn idle(&mut self) {
        self.stage = Stage::Idle;
        self.acc.clear();
        self.want = 0;
    }

    /// Read the start of a patch from the front of `bytes` (a resume's copy
    /// of it); bytes after the start are ignored.
    pub fn start_from_slice(bytes: &[u8], limits: Limits) -> Result<PatchReader, FormatError> {
        let mut reader = PatchReader::new(limits);
        let mut rest = bytes;
        loop {
            let n = reader.wanted().min(rest.len());
            if n == 0 {
                return Err(FormatError::Truncated {
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

    /// The free end of the buffer of the part being read: read up to its
    /// length of patch bytes into it, then call [`Self::filled`] with how
    /// many (0 if the read failed). Empty while the reader waits for its
    /// caller.
    pub fn unfilled(&mut self) -> &mut [u8] {
        let have = self.acc.len();
        self.acc.reserve_exact(self.want.saturating_sub(have));
        self.acc.resize(self.want.max(have), 0);
        self.filling = Some(have);
        &mut self.acc[have..]
    }

    /// `n` bytes were read into [`Self::unfilled`]'s buffer: count them and
    /// act on the part if it is complete (as [`Self::push`] would).
    pub fn filled(&mut self, n: usize) -> Result<Part, FormatError> {
        let Some(have) = self.filling.take() else {
            return Err(FormatError::ReaderMisuse);
        };
        let n = n.min(self.acc.len() - have);
        self.acc.truncate(have + n);
        self.offset += n as u64;
        if self.want == 0 || self.acc.len() < self.want {
            return Ok(Part::Partial);
        }
        self.complete()
    }

    /// Continue a patch whose first segments produced `new_offset` bytes
    /// and ended at patch offset `patch_offset` (a resume).
    pub fn resume_at(&mut self, new_offset: u64, patch_offset: u64) {
        self.new_offset = new_offset;
        self.offset = patch_offset;
    }

    /// Account for `n` bytes its caller read past the reader (a payload).
    pub fn skipped(&mut self, n: u64) {
        self.offset += n;
    }

    /// Set the patch offset (after its caller seeked the patch).
    pub fn set_offset(&mut self, offset: u64) {
        self.offset = offset;
    }
}
