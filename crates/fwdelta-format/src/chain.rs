//! Segment checks and the patch digest.
//!
//! `header_hash = BLAKE3(header bytes)`. Segment `i` hashes to
//! `seg_hashᵢ = BLAKE3(header_hash ‖ u32le(i) ‖ segment header ‖ payload)`, and
//! its stored check is the first 8 bytes of `seg_hashᵢ`: it covers the
//! segment's bytes and binds them to this patch's header and to their position,
//! yet can be verified on its own (an in-place applier re-reads segments out
//! of order). Since the header's segment count says where the patch ends,
//! truncation, reordering and splicing are all detected without a trailer.
//!
//! The patch digest chains the segment hashes: `chain₀ = header_hash`,
//! `chainᵢ₊₁ = BLAKE3(chainᵢ ‖ seg_hashᵢ)`, digest `chainₙ`. It is not stored;
//! it is what a signature signs. Between segments it is 32 bytes of state, kept
//! in a [`crate::Checkpoint`] so a resumed apply still ends with the digest.

use crate::header::Header;
use crate::segment::SegmentHeader;
use crate::{truncate_check, CHECK_LEN, HASH_LEN};

/// Chain state after the header (also the header hash segments bind to).
pub fn start(header_bytes: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(header_bytes).as_bytes()
}

/// A hasher for segment `index` of the patch whose header hashes to
/// `header_hash`: feed it the segment header and the payload, and the first
/// [`crate::CHECK_LEN`] bytes of the result are the segment's check.
pub fn segment_hasher(header_hash: &[u8; HASH_LEN], index: u32) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(header_hash);
    h.update(&index.to_le_bytes());
    h
}

/// Chain state after a segment whose hash is `segment_hash`.
pub fn next(chain: &[u8; HASH_LEN], segment_hash: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(chain);
    h.update(segment_hash);
    *h.finalize().as_bytes()
}

/// A whole patch: `header`, then each segment `(new_offset, new_len,
/// old_start, payload)` with its header and check bound to the patch (for an
/// in-place header `new_offset` names the cell). What the generator writes;
/// tests seal hand-made payloads with it too. Cost: one hash over the header
/// and one over each segment; the patch is built in memory.
pub fn seal_patch<'a>(
    header: &Header,
    segments: impl IntoIterator<Item = (u64, u64, u64, &'a [u8])>,
) -> Vec<u8> {
    let mut out = header.encode();
    let header_hash = start(&out);
    let mut chain = header_hash;
    for (index, (new_offset, new_len, old_start, payload)) in segments.into_iter().enumerate() {
        let head = SegmentHeader {
            index: index as u32,
            new_offset,
            new_len,
            old_start,
            payload_len: payload.len() as u32,
        }
        .encode(header);
        out.reserve(head.len() + payload.len() + CHECK_LEN);
        seal_segment(
            &mut out,
            &header_hash,
            &mut chain,
            index as u32,
            &head,
            payload,
        );
    }
    out
}

/// Append segment `index` (header, payload, check) to `out` and advance the
/// digest `chain` past it. For writers and tests that build patches in memory;
/// the applier does the same incrementally. Cost: one hash over the payload.
pub fn seal_segment(
    out: &mut Vec<u8>,
    header_hash: &[u8; HASH_LEN],
    chain: &mut [u8; HASH_LEN],
    index: u32,
    head: &[u8],
    payload: &[u8],
) {
    let mut h = segment_hasher(header_hash, index);
    h.update(head);
    h.update(payload);
    let hash = h.finalize();
    *chain = next(chain, hash.as_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(payload);
    out.extend_from_slice(&truncate_check(&hash));
}
