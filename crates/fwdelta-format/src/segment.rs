//! Segment headers. A segment produces one known, contiguous range of the new
//! image and is decodable on its own: its payload is one complete compressed
//! frame, and a 16-byte check over the segment header and payload follows it.

use crate::error::FormatError;
use crate::header::Header;
use crate::{u32_at, u64_at};

/// Tag byte opening a segment.
pub const SEGMENT_TAG: u8 = b'S';

/// Largest compressed payload a segment may carry (1 GiB). The applier streams
/// payloads and never buffers one, so this only bounds nonsense early.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the body, from 0.
    pub index: u32,
    /// First new-image byte this segment produces.
    pub new_offset: u64,
    /// Number of new-image bytes this segment produces (at least 1).
    pub new_len: u64,
    /// Old-image cursor position when the segment starts.
    pub old_start: u64,
    /// Length of the compressed payload that follows the header.
    pub payload_len: u32,
}

impl SegmentHeader {
    /// Encoded length, tag included.
    pub const LEN: usize = 33;

    /// Serialise, tag included.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = SEGMENT_TAG;
        b[1..5].copy_from_slice(&self.index.to_le_bytes());
        b[5..13].copy_from_slice(&self.new_offset.to_le_bytes());
        b[13..21].copy_from_slice(&self.new_len.to_le_bytes());
        b[21..29].copy_from_slice(&self.old_start.to_le_bytes());
        b[29..33].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Decode the fields, checking only the tag.
    fn decode(b: &[u8; Self::LEN]) -> Result<SegmentHeader, FormatError> {
        if b[0] != SEGMENT_TAG {
            return Err(FormatError::BadTag {
                expected: "segment",
                found: b[0],
            });
        }
        Ok(SegmentHeader {
            index: u32_at(b, 1),
            new_offset: u64_at(b, 5),
            new_len: u64_at(b, 13),
            old_start: u64_at(b, 21),
            payload_len: u32_at(b, 29),
        })
    }

    /// Checks shared by both kinds of patch: index, old cursor, payload length.
    fn check_common(&self, header: &Header, expected_index: u32) -> Result<(), FormatError> {
        let bad = |detail: String| FormatError::BadSegment {
            index: expected_index,
            detail,
        };
        if self.index != expected_index {
            return Err(bad(format!("index is {}", self.index)));
        }
        if self.old_start > header.old_len {
            return Err(bad(format!(
                "old cursor {} is past the {}-byte old image",
                self.old_start, header.old_len
            )));
        }
        if self.payload_len == 0 || self.payload_len > MAX_PAYLOAD_LEN {
            return Err(bad(format!(
                "payload length {} out of range",
                self.payload_len
            )));
        }
        Ok(())
    }

    /// Parse and validate a segment of an in-place patch: it must be exactly
    /// one cell (start on a cell boundary, cover the cell or the image's tail).
    /// Returns the header and its cell number; the caller checks that no cell
    /// comes twice.
    pub fn parse_cell(
        b: &[u8; Self::LEN],
        header: &Header,
        expected_index: u32,
    ) -> Result<(SegmentHeader, u64), FormatError> {
        let s = Self::decode(b)?;
        s.check_common(header, expected_index)?;
        let bad = |detail: String| FormatError::BadSegment {
            index: expected_index,
            detail,
        };
        let cell = header
            .cell_len()
            .ok_or_else(|| bad("not an in-place patch".into()))?;
        let c = s.new_offset / cell;
        if s.new_offset % cell != 0 || c >= u64::from(header.segment_count) {
            return Err(bad(format!(
                "new offset {} is not a cell of this patch",
                s.new_offset
            )));
        }
        let expected_len = cell.min(header.new_len - s.new_offset);
        if s.new_len != expected_len {
            return Err(bad(format!(
                "cell {c} has {} bytes, not {expected_len}",
                s.new_len
            )));
        }
        Ok((s, c))
    }

    /// Parse and validate against the patch header and the position the applier
    /// has reached: the index must be the next one, the range must start where
    /// the previous segment ended and stay inside the new image, and the old
    /// cursor must lie inside the old image.
    pub fn parse(
        b: &[u8; Self::LEN],
        header: &Header,
        expected_index: u32,
        expected_new_offset: u64,
    ) -> Result<SegmentHeader, FormatError> {
        let s = Self::decode(b)?;
        s.check_common(header, expected_index)?;
        let bad = |detail: String| FormatError::BadSegment {
            index: expected_index,
            detail,
        };
        if s.new_offset != expected_new_offset {
            return Err(bad(format!(
                "starts at new offset {} instead of {expected_new_offset}",
                s.new_offset
            )));
        }
        let end = s.new_offset.checked_add(s.new_len);
        if s.new_len == 0 || end.is_none_or(|e| e > header.new_len) {
            return Err(bad(format!(
                "range {}+{} does not fit a {}-byte new image",
                s.new_offset, s.new_len, header.new_len
            )));
        }
        Ok(s)
    }
}
