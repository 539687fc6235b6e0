//! Blocks of the split-streams layout (layout 2): how a segment's payload
//! interleaves three separately compressed streams so that an applier can
//! decode them together while holding only one block of two of them.
//!
//! A segment's payload is a sequence of blocks. A block is three varints —
//! the compressed lengths of its *heads*, *diffs* and *literals* chunks — and
//! then those three chunks. Each stream (record heads; diff bytes; literal
//! bytes) is one compressed stream of the header's codec, cut into chunks at
//! the encoder's flush points. An applier buffers a block's heads and diffs
//! chunks (at most [`MAX_BLOCK_BUFFER`] bytes together) and decodes the
//! literals as they arrive, so the literal chunk, usually the largest, is
//! never held.

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::varint::{get_u64, len_u64, put_u64, MAX_VARINT_LEN};

/// Largest `heads_len + diffs_len` of one block: the compressed bytes an
/// applier holds for a block.
pub const MAX_BLOCK_BUFFER: usize = 64 * 1024;

/// Longest encoded block header (three varints).
pub const MAX_BLOCK_HEAD_LEN: usize = 3 * MAX_VARINT_LEN;

/// The three streams of the split layout, in their order within a block.
pub const STREAMS: usize = 3;

/// A block header: the compressed length of each stream's chunk in this block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Compressed bytes of the record-heads chunk.
    pub heads_len: u32,
    /// Compressed bytes of the diff-bytes chunk.
    pub diffs_len: u32,
    /// Compressed bytes of the literal-bytes chunk.
    pub lits_len: u64,
}

impl BlockHeader {
    /// Append the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, u64::from(self.heads_len));
        put_u64(out, u64::from(self.diffs_len));
        put_u64(out, self.lits_len);
    }

    /// Length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        len_u64(u64::from(self.heads_len))
            + len_u64(u64::from(self.diffs_len))
            + len_u64(self.lits_len)
    }

    /// Compressed bytes an applier buffers for this block (heads and diffs).
    pub fn buffered_len(&self) -> usize {
        self.heads_len as usize + self.diffs_len as usize
    }

    /// Chunk lengths in stream order.
    pub fn lens(&self) -> [u64; STREAMS] {
        [
            u64::from(self.heads_len),
            u64::from(self.diffs_len),
            self.lits_len,
        ]
    }

    /// Parse a block header from the start of `bytes`, in a payload with
    /// `payload_left` bytes from the header's first byte on. `Ok(None)` means
    /// more bytes are needed. Refused: malformed varints, an empty block (no
    /// progress), a buffered part over [`MAX_BLOCK_BUFFER`], and a block that
    /// runs past the payload. Cost: at most [`MAX_BLOCK_HEAD_LEN`] bytes read.
    pub fn parse(bytes: &[u8], payload_left: u64) -> Result<Option<(Self, usize)>, FormatError> {
        let mut at = 0;
        let mut lens = [0u64; STREAMS];
        for len in &mut lens {
            match get_u64(&bytes[at..])? {
                Some((v, n)) => {
                    *len = v;
                    at += n;
                }
                None => return Ok(None),
            }
        }
        let bad = |detail: String| Err(FormatError::BadRecord(format!("block header: {detail}")));
        let [heads, diffs, lits] = lens;
        if heads == 0 && diffs == 0 && lits == 0 {
            return bad("empty block".into());
        }
        let buffered = heads.saturating_add(diffs);
        if buffered > MAX_BLOCK_BUFFER as u64 {
            return bad(format!(
                "{buffered} bytes of heads and diffs, more than the {MAX_BLOCK_BUFFER}-byte block buffer"
            ));
        }
        let total = buffered.saturating_add(lits).saturating_add(at as u64);
        if total > payload_left {
            return bad(format!(
                "block of {total} bytes runs past the payload ({payload_left} bytes left)"
            ));
        }
        // Both fit in u32: their sum is at most MAX_BLOCK_BUFFER.
        Ok(Some((
            BlockHeader {
                heads_len: heads as u32,
                diffs_len: diffs as u32,
                lits_len: lits,
            },
            at,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_headers_round_trip_and_bad_ones_are_refused() {
        let h = BlockHeader {
            heads_len: 300,
            diffs_len: 40_000,
            lits_len: 1 << 33,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(b.len(), h.encoded_len());
        let need = b.len() as u64 + h.buffered_len() as u64 + h.lits_len;
        assert_eq!(BlockHeader::parse(&b, need), Ok(Some((h, b.len()))));
        // Every proper prefix asks for more.
        for cut in 0..b.len() {
            assert_eq!(BlockHeader::parse(&b[..cut], need), Ok(None));
        }
        // One byte short of the payload.
        assert!(BlockHeader::parse(&b, need - 1).is_err());

        let enc = |h: u64, d: u64, l: u64| {
            let mut b = Vec::new();
            put_u64(&mut b, h);
            put_u64(&mut b, d);
            put_u64(&mut b, l);
            b
        };
        assert!(BlockHeader::parse(&enc(0, 0, 0), u64::MAX).is_err());
        let max = MAX_BLOCK_BUFFER as u64;
        assert!(BlockHeader::parse(&enc(max, 0, 5), u64::MAX).is_ok());
        assert!(BlockHeader::parse(&enc(max, 1, 5), u64::MAX).is_err());
        assert!(BlockHeader::parse(&enc(u64::MAX, u64::MAX, 0), u64::MAX).is_err());
        assert!(BlockHeader::parse(&enc(1, 1, u64::MAX), 1 << 40).is_err());
        assert!(BlockHeader::parse(&[0xFF; 11], u64::MAX).is_err());
    }
}
