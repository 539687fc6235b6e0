//! Records of the interleaved layout: the instructions inside a segment's
//! decompressed stream.
//!
//! A record is a head of four varints — `copy_len`, `diff_len`, `literal_len`,
//! `seek` — followed by `diff_len` diff bytes and `literal_len` literal bytes.
//! The applier copies `copy_len` old bytes from the cursor `pos` verbatim (they
//! take no stream bytes), then produces `diff_len` bytes as
//! `old[pos + i] + diff[i]` (wrapping), both advancing `pos`; then copies the
//! literal bytes; then moves `pos` by the signed `seek`.

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::varint::{get_i64, get_u64, len_i64, len_u64, put_i64, put_u64, MAX_VARINT_LEN};

/// Longest possible record head.
pub const MAX_HEAD_LEN: usize = 4 * MAX_VARINT_LEN;

/// A record head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Old bytes copied verbatim (no stream bytes).
    pub copy_len: u64,
    /// Bytes produced by adding diff bytes to old bytes.
    pub diff_len: u64,
    /// Bytes copied from the stream as they are.
    pub literal_len: u64,
    /// Signed move of the old-image cursor after this record.
    pub seek: i64,
}

impl Record {
    /// Append this record's head to `out`.
    pub fn encode_head(&self, out: &mut Vec<u8>) {
        put_u64(out, self.copy_len);
        put_u64(out, self.diff_len);
        put_u64(out, self.literal_len);
        put_i64(out, self.seek);
    }

    /// Length of this record's encoded head.
    pub fn head_len(&self) -> usize {
        len_u64(self.copy_len)
            + len_u64(self.diff_len)
            + len_u64(self.literal_len)
            + len_i64(self.seek)
    }

    /// Length of this record in the decompressed stream: head, diff and literal bytes.
    pub fn stream_len(&self) -> u64 {
        self.head_len() as u64 + self.diff_len + self.literal_len
    }

    /// Parse a head from the start of `bytes`: `Ok(None)` means more bytes are
    /// needed. A head producing no bytes is refused (it would let a tiny payload
    /// spin the applier without progress).
    pub fn parse_head(bytes: &[u8]) -> Result<Option<(Record, usize)>, FormatError> {
        let mut at = 0;
        let mut field = || -> Result<Option<u64>, FormatError> {
            Ok(get_u64(&bytes[at..])?.map(|(v, n)| {
                at += n;
                v
            }))
        };
        let Some(copy_len) = field()? else {
            return Ok(None);
        };
        let Some(diff_len) = field()? else {
            return Ok(None);
        };
        let Some(literal_len) = field()? else {
            return Ok(None);
        };
        let Some((seek, n)) = get_i64(&bytes[at..])? else {
            return Ok(None);
        };
        let rec = Record {
            copy_len,
            diff_len,
            literal_len,
            seek,
        };
        if rec.output_len() == 0 {
            return Err(FormatError::BadRecord("record produces no bytes".into()));
        }
        Ok(Some((rec, at + n)))
    }

    /// Bytes this record adds to the new image (saturating: callers compare it
    /// against a bound anyway).
    pub fn output_len(&self) -> u64 {
        self.copy_len
            .saturating_add(self.diff_len)
            .saturating_add(self.literal_len)
    }

    /// Old bytes this record reads (copied and diffed), saturating.
    pub fn old_read_len(&self) -> u64 {
        self.copy_len.saturating_add(self.diff_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn head_round_trip(c: u64, d: u64, l: u64, s: i64) {
            prop_assume!(c != 0 || d != 0 || l != 0);
            let r = Record { copy_len: c, diff_len: d, literal_len: l, seek: s };
            let mut b = Vec::new();
            r.encode_head(&mut b);
            prop_assert!(b.len() <= MAX_HEAD_LEN);
            prop_assert_eq!(r.head_len(), b.len());
            prop_assert_eq!(Record::parse_head(&b).unwrap(), Some((r, b.len())));
            for cut in 0..b.len() {
                prop_assert_eq!(Record::parse_head(&b[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn refuses_empty_record() {
        let mut b = Vec::new();
        Record {
            copy_len: 0,
            diff_len: 0,
            literal_len: 0,
            seek: 5,
        }
        .encode_head(&mut b);
        assert!(Record::parse_head(&b).is_err());
    }
}
