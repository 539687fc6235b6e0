//! Segment checks and the patch digest.
//!
//! `header_hash = BLAKE3(header bytes)`. Segment `i` hashes to
//! `seg_hashᵢ = BLAKE3(header_hash ‖ u32le(i) ‖ segment header ‖ payload)`, and
//! its stored check is the first 8 bytes of `seg_hashᵢ`: it covers the
//! segment's bytes and binds them to this patch's header and to their position,
//! yet can be verified on its own (an in-place applier re-reads segments out
//! of order). Since the header's segment count says where the patch ends,
//! truncation, reordering and splicing are all detected without a trailer.
//! The last segment of an ordinary patch stores no check
//! ([`Header::segment_has_check`]): the new image's hash covers it, verified
//! when its check would be.
//!
//! The patch digest chains the segment hashes: `chain₀ = header_hash`,
//! `chainᵢ₊₁ = BLAKE3(chainᵢ ‖ seg_hashᵢ)`, digest `chainₙ`. It is not stored;
//! it is what a signature signs. Between segments it is 32 bytes of state, kept
//! in a [`crate::Checkpoint`] so a resumed apply still ends with the digest.

use crate::header::Header;
#[allow(unused_imports)]
use crate::prelude::*;
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
/// old_start, payload)` with its header and (where
/// [`Header::segment_has_check`]) its check bound to the patch (for an
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
            (index as u32, header.segment_has_check(index as u32)),
            &head,
            payload,
        );
    }
    out
}

/// Append segment `index` (header, payload and, if `checked`, its check) to
/// `out` and advance the digest `chain` past it (the digest covers every
/// segment, checked or not). For writers and tests that build patches in
/// memory; the applier does the same incrementally. Cost: one hash over the
/// payload.
pub fn seal_segment(
    out: &mut Vec<u8>,
    header_hash: &[u8; HASH_LEN],
    chain: &mut [u8; HASH_LEN],
    (index, checked): (u32, bool),
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
    if checked {
        out.extend_from_slice(&truncate_check(&hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::FLAG_IN_PLACE;
    use crate::{Codec, Layout};

    fn header(cell_log: Option<u8>) -> Header {
        let mut h = Header {
            flags: if cell_log.is_some() { FLAG_IN_PLACE } else { 0 },
            old_len: 10_000,
            old_check: [0; CHECK_LEN],
            new_len: 3 * 4096,
            new_hash: [0; HASH_LEN],
            codec: Codec::Stored,
            window_log: 12,
            layout: Layout::Interleaved,
            segment_count: 3,
            apply_memory: 0,
            cell_log,
            code_refs: None,
            literal_filter: None,
            release: None,
        };
        h.apply_memory = h.memory_floor();
        h
    }

    /// Every segment but an ordinary patch's last ends with its check; the
    /// digest covers all of them either way.
    #[test]
    fn the_last_ordinary_segment_alone_has_no_check() {
        let payloads: [&[u8]; 3] = [b"one", b"two!", b"three"];
        for (cell_log, checks) in [(None, 2), (Some(12), 3)] {
            let h = header(cell_log);
            let segments = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 * 4096, 4096, 0, *p));
            let patch = seal_patch(&h, segments);
            // ordinary: new_len (2 bytes), old_start, payload_len; the last
            // one without new_len. In place: cell, old_start, payload_len.
            let head_bytes = if cell_log.is_some() { 3 * 3 } else { 4 + 4 + 2 };
            let body = payloads.iter().map(|p| p.len()).sum::<usize>();
            assert_eq!(
                patch.len(),
                h.encoded_len() + head_bytes + body + checks * CHECK_LEN,
                "cells {cell_log:?}"
            );
            assert_eq!((0..3).filter(|&i| h.segment_has_check(i)).count(), checks);
            // the last segment's bytes end the patch, check or not
            let tail = &patch[patch.len() - (checks - 2) * CHECK_LEN - 5..];
            assert_eq!(&tail[..5], b"three");
            // sealing the same segments as all checked ends with the check
            // of a hash over the same bytes: the digest is unchanged
            let mut out = Vec::new();
            let header_hash = start(&h.encode());
            let (mut with, mut without) = (header_hash, header_hash);
            seal_segment(&mut out, &header_hash, &mut with, (2, true), b"x", b"y");
            seal_segment(&mut out, &header_hash, &mut without, (2, false), b"x", b"y");
            assert_eq!(with, without);
            assert_eq!(out.len(), 2 + CHECK_LEN + 2);
        }
    }
}
