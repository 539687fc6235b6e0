//! The fwdelta patch container, version 7 (specified in `docs/FORMAT.md`).
//!
//! This crate only describes and validates bytes; it never performs I/O and never
//! allocates from a size read out of a patch before that size is bounded (by
//! the format's maxima and, in [`PatchReader`], by the applier's limits). It is
//! shared by the generator (`fwdelta-diff`), which writes containers, and the
//! applier (`fwdelta-apply`), which parses them incrementally in bounded memory
//! through [`PatchReader`], a sans-I/O reader of the framing.
//!
//! Layout of a patch:
//!
//! ```text
//! Header (>= 61 bytes: magic, version, length, flags, coding, window,
//!         8-byte old-image check, new-image hash, four varints,
//!         extensions, 8-byte header check)
//! Segment 0: three varints (two in the last segment of an ordinary patch) + payload
//!            (one stream, or blocks of three split streams) + 8-byte check
//!            (bound to the header and the segment's position)
//! ...
//! Segment n-1 (the header's segment count says the patch ends here; in an
//!            ordinary patch it has no check: the new image's hash covers it)
//! ```

#![cfg_attr(not(test), no_std)]

extern crate alloc;

/// What std's prelude would give every module (this crate is `no_std`).
mod prelude {
    #[allow(unused_imports)]
    pub(crate) use alloc::{
        borrow::ToOwned,
        boxed::Box,
        format,
        string::{String, ToString},
        vec,
        vec::Vec,
    };
}

pub mod address_map;
pub mod bit_coder;
pub mod chain;
pub mod checkpoint;
pub mod diff_model;
pub mod error;
pub mod head_model;
pub mod header;
pub mod key_file;
pub mod key_rotation;
pub mod literal_filter;
pub mod memory;
mod mixing;
pub mod patch_parts;
pub mod patch_reader;
pub mod record;
pub mod reference_rewriter;
pub mod release;
pub mod segment;
pub mod signature;
pub mod split_block;
pub mod varint;

pub use checkpoint::{pick_slot, Checkpoint, InPlaceCheckpoint, Slot, SlotPick};
pub use error::FormatError;
pub use header::{CodeRefs, Codec, Header, Layout};
pub use memory::MemoryModel;
pub use patch_reader::{Limits, Mode, Part, PatchPart, PatchReader, PatchStart};
pub use record::Record;
pub use release::Release;
pub use segment::SegmentHeader;
pub use signature::{KeyId, SignatureSection};

/// The four bytes every fwdelta patch starts with. The high first byte catches
/// transfers that strip the high bit; anything else that mangles a patch fails
/// the header check.
pub const MAGIC: [u8; 4] = [0x89, b'F', b'W', b'D'];

/// The eight bytes that opened patches of versions 1 and 2, recognised only to
/// refuse them as an old version rather than as garbage.
pub const LEGACY_MAGIC: [u8; 8] = [0x89, b'F', b'W', b'D', 0x0D, 0x0A, 0x1A, 0x0A];

/// The container version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u8 = 7;

/// Largest old or new image the format admits (1 TiB). Sizes above it are refused
/// as absurd before any other work is done.
pub const MAX_IMAGE_LEN: u64 = 1 << 40;

/// Length of the truncated BLAKE3 checks that close the header and each segment
/// and that name the old image (64 bits). Checks only detect accidental damage
/// and tell base versions apart; what the output must be is fixed by the full
/// 32-byte hash of the new image, and the patch digest a signature signs is
/// chained from full hashes the reader computes, never from stored checks.
pub const CHECK_LEN: usize = 8;

/// Length of a full BLAKE3 hash (the new image's hash and the chain).
pub const HASH_LEN: usize = 32;

/// Little-endian `u64` at `bytes[at..at + 8]`; callers have checked the length.
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Little-endian `u32` at `bytes[at..at + 4]`; callers have checked the length.
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Truncated BLAKE3 check of `bytes`, as stored after the header and each segment.
///
/// Cost: one pass over `bytes`, no allocation.
pub fn check_of(bytes: &[u8]) -> [u8; CHECK_LEN] {
    let hash = blake3::hash(bytes);
    truncate_check(&hash)
}

/// First [`CHECK_LEN`] bytes of a finished BLAKE3 hash.
pub fn truncate_check(hash: &blake3::Hash) -> [u8; CHECK_LEN] {
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&hash.as_bytes()[..CHECK_LEN]);
    out
}
