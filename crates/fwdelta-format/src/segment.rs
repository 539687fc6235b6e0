//! Segment headers. A segment produces one known, contiguous range of the new
//! image and is decodable on its own: its payload is one complete compressed
//! frame. Its header is three varints (two for the last segment of an ordinary
//! patch), and an 8-byte check follows the payload, except after the last
//! segment of an ordinary patch (see [`crate::chain`]).
//!
//! What a reader can work out itself is not stored: the segment's index is its
//! position, in an ordinary patch its first new-image byte is where the
//! previous segment ended, and the last segment ends where the image does. An
//! in-place patch names the cell instead (its segments come in apply order),
//! and the cell gives the range.

use crate::error::FormatError;
use crate::header::Header;
#[allow(unused_imports)]
use crate::prelude::*;
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
    /// payload_len` for an ordinary patch (`old_start, payload_len` for its
    /// last segment, whose length is what remains of the image), `cell,
    /// old_start, payload_len` for an in-place one. At most [`Self::MAX_LEN`]
    /// bytes.
    pub fn encode(&self, header: &Header) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::MAX_LEN);
        match header.cell_len() {
            Some(cell) => varint::put_u64(&mut b, self.new_offset / cell),
            None if Self::field_count(header, self.index) == FIELDS => {
                varint::put_u64(&mut b, self.new_len)
            }
            None => {}
        }
        varint::put_u64(&mut b, self.old_start);
        varint::put_u64(&mut b, u64::from(self.payload_len));
        b
    }

    /// Number of varints in the header of segment `index`: the last segment
    /// of an ordinary patch does not store its length.
    fn field_count(header: &Header, index: u32) -> usize {
        if header.cell_log.is_none() && index.checked_add(1) == Some(header.segment_count) {
            FIELDS - 1
        } else {
            FIELDS
        }
    }

    /// If `bytes` starts with a complete header of segment `index` of a patch
    /// with this header, its length; `None` if more bytes are needed; an error
    /// (naming the segment) if a varint is malformed. A streaming reader feeds
    /// bytes until this says the header is complete; it never needs more than
    /// [`Self::MAX_LEN`].
    pub fn complete_len(
        bytes: &[u8],
        header: &Header,
        index: u32,
    ) -> Result<Option<usize>, FormatError> {
        let mut at = 0;
        for _ in 0..Self::field_count(header, index) {
            let field =
                varint::get_u64(&bytes[at..]).map_err(|_| bad(index, "malformed header".into()))?;
            match field {
                Some((_, n)) => at += n,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Decode the fields of a complete header (see [`Self::complete_len`]);
    /// an implied length is returned as `None`.
    fn fields(
        bytes: &[u8],
        header: &Header,
        index: u32,
    ) -> Result<(Option<u64>, u64, u64), FormatError> {
        let count = Self::field_count(header, index);
        let mut out = [0u64; FIELDS];
        let mut at = 0;
        for v in &mut out[FIELDS - count..] {
            let (value, n) = varint::get_u64(&bytes[at..])
                .map_err(|_| bad(index, "malformed header".into()))?
                .ok_or_else(|| bad(index, "header is incomplete".into()))?;
            *v = value;
            at += n;
        }
        if at != bytes.len() {
            return Err(bad(index, "header has trailing bytes".into()));
        }
        let first = (count == FIELDS).then_some(out[0]);
        Ok((first, out[1], out[2]))
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
        let cell = header
            .cell_len()
            .ok_or_else(|| bad(index, "not an in-place patch".into()))?;
        let (c, old_start, payload_len) = Self::fields(bytes, header, index)?;
        let c = c.unwrap_or(u64::MAX); // in-place segments always name their cell
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
        let (stored_len, old_start, payload_len) = Self::fields(bytes, header, index)?;
        // The last segment produces the rest of the image (0 if nothing is
        // left, which the range check below refuses).
        let new_len = stored_len.unwrap_or_else(|| header.new_len.saturating_sub(new_offset));
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
            old_check: [0; crate::CHECK_LEN],
            new_len: 10_000,
            new_hash: [0; 32],
            codec: Codec::Zstd,
            window_log: 12,
            layout: Layout::Interleaved,
            segment_count: 3,
            apply_memory: MemoryModel::required(12) + (1 << 14),
            cell_log,
            code_refs: None,
            literal_filter: None,
            release: None,
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
        assert_eq!(SegmentHeader::complete_len(&b, &h, 1), Ok(Some(b.len())));
        for cut in 0..b.len() {
            assert_eq!(SegmentHeader::complete_len(&b[..cut], &h, 1), Ok(None));
        }
        assert_eq!(SegmentHeader::parse(&b, &h, 1, 4000), Ok(s));
        // the range must fit the new image
        assert!(SegmentHeader::parse(&b, &h, 1, 9800).is_err());

        // the last segment's length is implied: what remains of the image
        let last = SegmentHeader {
            index: 2,
            new_offset: 4300,
            new_len: 10_000 - 4300,
            old_start: 5,
            payload_len: 77,
        };
        let b = last.encode(&h);
        assert_eq!(b, [5, 77]);
        assert_eq!(SegmentHeader::complete_len(&b, &h, 2), Ok(Some(2)));
        assert_eq!(SegmentHeader::complete_len(&b[..1], &h, 2), Ok(None));
        assert_eq!(SegmentHeader::parse(&b, &h, 2, 4300), Ok(last));
        // nothing left to produce, or three fields where two belong
        assert!(SegmentHeader::parse(&b, &h, 2, 10_000).is_err());
        assert!(SegmentHeader::parse(&[1, 5, 77], &h, 2, 4300).is_err());

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
        // in-place segments name their cell, the last one too
        assert_eq!(SegmentHeader::complete_len(&[2, 0], &h, 2), Ok(None));
        assert!(SegmentHeader::parse(&[0, 5], &header(None), 0, 0).is_err());
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
            SegmentHeader::complete_len(&[0x80; 11], &h, 4),
            Err(FormatError::BadSegment { index: 4, .. })
        ));
    }
}
