//! LEB128 varints (and zig-zag for signed values), parsed defensively: at most
//! ten bytes, no overflow, "need more input" distinguished from "malformed".

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;

/// Longest encoding of a `u64`.
pub const MAX_VARINT_LEN: usize = 10;

/// Append `v` as LEB128 to `out`.
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encoded length of `v` as LEB128.
pub fn len_u64(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Zig-zag map of a signed value to an unsigned one (small magnitudes stay
/// small).
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Encoded length of `v` zig-zag encoded.
pub fn len_i64(v: i64) -> usize {
    len_u64(zigzag(v))
}

/// Append `v` zig-zag encoded.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, zigzag(v));
}

/// Decode a LEB128 `u64` from the start of `bytes`.
///
/// Returns `Ok(None)` if `bytes` ends inside the varint (feed more), and
/// `Ok(Some((value, consumed)))` otherwise. Errors on an over-long or
/// overflowing encoding.
pub fn get_u64(bytes: &[u8]) -> Result<Option<(u64, usize)>, FormatError> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if i == MAX_VARINT_LEN - 1 && b > 1 {
            return Err(FormatError::BadVarint);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        if i + 1 == MAX_VARINT_LEN {
            return Err(FormatError::BadVarint);
        }
    }
    Ok(None)
}

/// Decode a zig-zag `i64`; see [`get_u64`].
pub fn get_i64(bytes: &[u8]) -> Result<Option<(i64, usize)>, FormatError> {
    Ok(get_u64(bytes)?.map(|(u, n)| (unzigzag(u), n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn u64_round_trip(v: u64) {
            let mut b = Vec::new();
            put_u64(&mut b, v);
            prop_assert!(b.len() <= MAX_VARINT_LEN);
            prop_assert_eq!(len_u64(v), b.len());
            prop_assert_eq!(get_u64(&b).unwrap(), Some((v, b.len())));
            // every strict prefix asks for more input
            for cut in 0..b.len() {
                prop_assert_eq!(get_u64(&b[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn i64_round_trip(v: i64) {
            let mut b = Vec::new();
            put_i64(&mut b, v);
            prop_assert_eq!(len_i64(v), b.len());
            prop_assert_eq!(get_i64(&b).unwrap(), Some((v, b.len())));
        }
    }

    #[test]
    fn refuses_overlong_and_overflow() {
        assert_eq!(get_u64(&[0x80; 11]), Err(FormatError::BadVarint));
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_u64(&over), Err(FormatError::BadVarint));
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(get_u64(&max).unwrap(), Some((u64::MAX, 10)));
    }
}
