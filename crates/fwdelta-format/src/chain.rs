//! The patch hash chain that the trailer closes.
//!
//! `chain₀ = BLAKE3(header bytes)`; after segment `i`,
//! `chainᵢ₊₁ = BLAKE3(chainᵢ ‖ BLAKE3(segment header ‖ payload))`; the trailer holds
//! `BLAKE3(chainₙ ‖ 'E')`. Every patch byte is covered (the segment checks are
//! derived from the segment hashes), and the whole state between segments is 32
//! bytes, which is what lets an applier that keeps nothing of the patch resume
//! after a power loss from a [`crate::Checkpoint`].

use crate::trailer::END_TAG;
use crate::HASH_LEN;

/// Chain state after the header.
pub fn start(header_bytes: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(header_bytes).as_bytes()
}

/// Chain state after a segment whose header and payload hash to `segment_hash`.
pub fn next(chain: &[u8; HASH_LEN], segment_hash: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(chain);
    h.update(segment_hash);
    *h.finalize().as_bytes()
}

/// The trailer hash for a final chain state.
pub fn trailer(chain: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(chain);
    h.update(&[END_TAG]);
    *h.finalize().as_bytes()
}
