//! Typed errors for everything that can be wrong with a patch's bytes.

#[allow(unused_imports)]
use crate::prelude::*;
use thiserror::Error;

/// A reason a patch (or part of one) is refused. Every variant names the problem
/// in one line, suitable for a terminal log or a CLI error message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The first four bytes are not [`crate::MAGIC`].
    #[error("not an fwdelta patch (bad magic bytes)")]
    BadMagic,
    /// The container version is not one this build reads.
    #[error("unsupported patch format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version found in the patch.
        found: u8,
        /// Version this build supports.
        supported: u8,
    },
    /// A patch in the container of versions 1 and 2 (8-byte magic), which
    /// this build no longer reads.
    #[error("patch is in format version 1 or 2, which this build no longer reads (it reads version {supported})")]
    LegacyVersion {
        /// Version this build supports.
        supported: u8,
    },
    /// Flag bits this build does not understand are set.
    #[error("patch uses unsupported features (flags {0:#06x})")]
    UnsupportedFlags(u64),
    /// The header's declared length is out of range.
    #[error("patch header length {0} is out of range")]
    BadHeaderLength(u32),
    /// The check closing the header does not match.
    #[error("patch header is corrupt (header check mismatch)")]
    HeaderCheck,
    /// A declared image length exceeds [`crate::MAX_IMAGE_LEN`].
    #[error("patch claims an absurd {which} image size of {len} bytes (limit {limit})")]
    AbsurdSize {
        /// "old" or "new".
        which: &'static str,
        /// The claimed length.
        len: u64,
        /// The format limit.
        limit: u64,
    },
    /// Unknown compression codec id.
    #[error("patch uses unknown codec {0}")]
    UnknownCodec(u8),
    /// Unknown body layout id.
    #[error("patch uses unknown body layout {0}")]
    UnknownLayout(u8),
    /// Decoder window outside what the format allows.
    #[error("patch declares decoder window 2^{0}, outside 2^10..=2^30")]
    BadWindow(u8),
    /// A field that must be a fixed value is not.
    #[error("patch header field {field} is invalid: {detail}")]
    BadField {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The segments do not produce the whole new image (worded as the
    /// header's segment count being wrong, which it then is).
    #[error("patch header field segments is invalid: cover {covered} of {new_len} new bytes")]
    SegmentsCover {
        /// New bytes the segments produce.
        covered: u64,
        /// The header's new length.
        new_len: u64,
    },
    /// An unknown extension marked critical was found in the header.
    #[error("patch needs header extension {0:#06x}, which this build does not know")]
    UnknownCriticalExtension(u16),
    /// A segment header is inconsistent with the patch header or with the previous segments.
    #[error("segment {index} header is invalid: {detail}")]
    BadSegment {
        /// Segment index (as expected by position).
        index: u32,
        /// What is wrong.
        detail: String,
    },
    /// A varint ran past its maximum length or overflowed 64 bits.
    #[error("malformed varint")]
    BadVarint,
    /// The signature section after a signed patch's header is malformed.
    #[error("patch signature section is malformed: {0}")]
    BadSignatureSection(&'static str),
    /// A key file is malformed.
    #[error("key file is malformed: {0}")]
    BadKeyFile(&'static str),
    /// A key rotation statement is malformed.
    #[error("key rotation statement is malformed: {0}")]
    BadRotation(&'static str),
    /// The patch needs more applier memory than the reader's limit (an
    /// applier reports it as its own `MemoryBudget` error).
    #[error("patch needs {needed} bytes of applier memory but the limit is {limit}")]
    MemoryBudget {
        /// Bytes the patch header claims.
        needed: u64,
        /// Bytes the applier may use.
        limit: u64,
    },
    /// The patch produces a larger image than the reader's limit.
    #[error("patch produces a {len}-byte image but the limit is {limit} bytes")]
    NewTooLarge {
        /// Declared new length.
        len: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The patch is for the other apply mode (in-place vs. to a new file).
    #[error("{0}")]
    WrongMode(&'static str),
    /// The patch ended early.
    #[error("patch is truncated: it ends {stage} after {offset} bytes")]
    Truncated {
        /// Where it ended.
        stage: crate::patch_reader::PatchPart,
        /// Patch bytes received.
        offset: u64,
    },
    /// A [`crate::patch_reader::PatchReader`] was driven out of order (a
    /// bug in its caller, never caused by a patch's bytes).
    #[error("patch reader used out of order")]
    ReaderMisuse,
    /// A record in a segment's stream is inconsistent with the images.
    #[error("malformed record: {0}")]
    BadRecord(String),
}
