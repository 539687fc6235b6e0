//! Segment headers. A segment produces one known, contiguous range of the new
//! image and is decodable on its own: its payload is one complete compressed
//! frame. Its header is three varints, and a 16-byte check follows the payload
//! (see [`crate::chain`]).
//!
//! What a reader can work out itself is not stored: the segment's index is its
//! position, and in an ordinary patch its first new-image byte is where the
//! previous segment ended. An in-place patch names the cell instead (its
//! segments come in apply order), and the cell gives the range.

use crate::error::FormatError;
use crate::header::Header;
use crate::varint;

/// Largest compressed payload a segment may carry (1 GiB). The applier streams
/// payloads and never buffers one, so this only bounds nonsense early.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;

/// Number of varints in a segment header.
const FIELDS: usize = 3;

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the body, from 0 (not stored: implied).
    pub index: u32,
    /// First new-image byte this segment produces (stored as the cell number
    /// in in-place patches; implied otherwise).
    pub new_offset: u64,
    /// Number of new-image bytes this segment produces (at least 1; implied by
    /// the cell in in-place patches).
    pub new_len: u64,
    /// Old-image cursor position when the segment starts.
    pub old_start: u64,
    /// Length of the compressed payload that follows the header.
    pub payload_len: u32,
}

impl SegmentHeader {
    /// Longest encoded segment header: three maximal varints.
    pub const MAX_LEN: usize = FIELDS * varint::MAX_VARINT_LEN;

    /// Serialise for a patch with the given header: `new_len, old_start,
    /// payload_len` for an ordinary patch, `cell, old_start, payload_len` for an
    /// in-place one. At most [`Self::MAX_LEN`] bytes.
    pub fn encode(&self, header: &Header) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::MAX_LEN);
        match header.cell_len() {
            Some(cell) => varint::put_u64(&mut b, self.new_offset / cell),
            None => varint::put_u64(&mut b, self.new_len),
        }
        varint::put_u64(&mut b, self.old_start);
        varint::put_u64(&mut b, u64::from(self.payload_len));
        b
    }

    /// If `bytes` starts with a complete header of segment `index`, its length;
    /// `None` if more bytes are needed; an error (naming the segment) if a
    /// varint is malformed. A streaming reader feeds bytes until this says the
    /// header is complete; it never needs more than [`Self::MAX_LEN`].
    pub fn complete_len(bytes: &[u8], index: u32) -> Result<Option<usize>, FormatError> {
        let mut at = 0;
        for _ in 0..FIELDS {
            let field =
                varint::get_u64(&bytes[at..]).map_err(|_| bad(index, "malformed header".into()))?;
            match field {
                Some((_, n)) => at += n,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Decode the three fields of a complete header (see [`Self::complete_len`]).
    fn fields(bytes: &[u8], index: u32) -> Result<[u64; FIELDS], FormatError> {
        let mut out = [0u64; FIELDS];
        let mut at = 0;
        for v in &mut out {
            let (value, n) = varint::get_u64(&bytes[at..])
                .map_err(|_| bad(index, "malformed header".into()))?
                .ok_or_else(|| bad(index, "header is incomplete".into()))?;
            *v = value;
            at += n;
        }
        if at != bytes.len() {
            return Err(bad(index, "header has trailing bytes".into()));
        }
        Ok(out)
    }

    /// Checks shared by both kinds of patch: old cursor, payload length.
    fn check_common(&self, header: &Header, payload_len: u64) -> Result<(), FormatError> {
        if self.old_start > header.old_len {
            return Err(bad(
                self.index,
                format!(
                    "old cursor {} is past the {}-byte old image",
                    self.old_start, header.old_len
                ),
            ));
        }
        if payload_len == 0 || payload_len > u64::from(MAX_PAYLOAD_LEN) {
            return Err(bad(
                self.index,
                format!("payload length {payload_len} out of range"),
            ));
        }
        Ok(())
    }

    /// Parse and validate a segment header of an in-place patch: the cell must
    /// exist (its range is the cell, or the image's tail for the last one).
    /// Returns the header and its cell number; the caller checks that no cell
    /// comes twice.
    pub fn parse_cell(
        bytes: &[u8],
        header: &Header,
        index: u32,
    ) -> Result<(SegmentHeader, u64), FormatError> {
        let [c, old_start, payload_len] = Self::fields(bytes, index)?;
        let cell = header
            .cell_len()
            .ok_or_else(|| bad(index, "not an in-place patch".into()))?;
        if c >= u64::from(header.segment_count) {
            return Err(bad(index, format!("cell {c} is not a cell of this patch")));
        }
        let new_offset = c * cell;
        let s = SegmentHeader {
            index,
            new_offset,
            new_len: cell.min(header.new_len - new_offset),
            old_start,
            payload_len: payload_len.min(u64::from(u32::MAX)) as u32,
        };
        s.check_common(header, payload_len)?;
        Ok((s, c))
    }

    /// Parse and validate a segment header of an ordinary patch, at position
    /// `index`, starting at new offset `new_offset` (where the previous segment
    /// ended): the range must stay inside the new image and the old cursor
    /// inside the old image.
    pub fn parse(
        bytes: &[u8],
        header: &Header,
        index: u32,
        new_offset: u64,
    ) -> Result<SegmentHeader, FormatError> {
        let [new_len, old_start, payload_len] = Self::fields(bytes, index)?;
        let s = SegmentHeader {
            index,
            new_offset,
            new_len,
            old_start,
            payload_len: payload_len.min(u64::from(u32::MAX)) as u32,
        };
        s.check_common(header, payload_len)?;
        let end = new_offset.checked_add(new_len);
        if new_len == 0 || end.is_none_or(|e| e > header.new_len) {
            return Err(bad(
                index,
                format!(
                    "range {new_offset}+{new_len} does not fit a {}-byte new image",
                    header.new_len
                ),
            ));
        }
        Ok(s)
    }
}

fn bad(index: u32, detail: String) -> FormatError {
    FormatError::BadSegment { index, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, Layout, MemoryModel};

    fn header(cell_log: Option<u8>) -> Header {
        Header {
            flags: u16::from(cell_log.is_some()),
            old_len: 10_000,
            old_check: [0; 16],
            new_len: 10_000,
            new_hash: [0; 32],
            codec: Codec::Zstd,
            window_log: 12,
            layout: Layout::Interleaved,
            segment_count: 3,
            apply_memory: MemoryModel::required(12) + (1 << 14),
            cell_log,
            code_refs: None,
        }
    }

    #[test]
    fn round_trip_ordinary_and_cells() {
        let h = header(None);
        let s = SegmentHeader {
            index: 1,
            new_offset: 4000,
            new_len: 300,
            old_start: 9999,
            payload_len: 77,
        };
        let b = s.encode(&h);
        assert_eq!(b.len(), 2 + 2 + 1);
        assert_eq!(SegmentHeader::complete_len(&b, 1), Ok(Some(b.len())));
        for cut in 0..b.len() {
            assert_eq!(SegmentHeader::complete_len(&b[..cut], 1), Ok(None));
        }
        assert_eq!(SegmentHeader::parse(&b, &h, 1, 4000), Ok(s));
        // the range must fit the new image
        assert!(SegmentHeader::parse(&b, &h, 1, 9800).is_err());

        let h = header(Some(12));
        let s = SegmentHeader {
            index: 0,
            new_offset: 8192,
            new_len: 10_000 - 8192,
            old_start: 0,
            payload_len: 5,
        };
        let b = s.encode(&h);
        assert_eq!(SegmentHeader::parse_cell(&b, &h, 0), Ok((s, 2)));
        // cell 3 does not exist
        assert!(SegmentHeader::parse_cell(&[3, 0, 5], &h, 0).is_err());
    }

    #[test]
    fn refuses_bad_fields() {
        let h = header(None);
        // zero length, cursor past the old image, empty or huge payload
        assert!(SegmentHeader::parse(&[0, 0, 5], &h, 0, 0).is_err());
        assert!(SegmentHeader::parse(&[1, 0x91, 0x4E, 5], &h, 0, 0).is_err());
        assert!(SegmentHeader::parse(&[1, 0, 0], &h, 0, 0).is_err());
        let mut huge = vec![1, 0];
        varint::put_u64(&mut huge, u64::from(MAX_PAYLOAD_LEN) + 1);
        assert!(SegmentHeader::parse(&huge, &h, 0, 0).is_err());
        // incomplete, trailing bytes, over-long varint
        assert!(SegmentHeader::parse(&[1, 0], &h, 0, 0).is_err());
        assert!(SegmentHeader::parse(&[1, 0, 5, 0], &h, 0, 0).is_err());
        assert!(matches!(
            SegmentHeader::complete_len(&[0x80; 11], 4),
            Err(FormatError::BadSegment { index: 4, .. })
        ));
    }
}
