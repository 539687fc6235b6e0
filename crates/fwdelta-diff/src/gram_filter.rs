//! The gram filter: a Bloom filter of every [`GRAM`]-byte string of the old
//! image, asked before a suffix-array search whether the search can find a
//! match of at least [`GRAM`] bytes.
//!
//! On large executables most of bsdiff's searches run through new code and
//! find nothing longer than a few bytes (78% of them under 8 bytes on the
//! public corpus's ARM64 pair, 64% on the x86-64 one), yet each costs a
//! binary search whose steps are cache misses. One filter probe (two bits,
//! usually one cache line each) answers most of them.
//!
//! The filter never says no to a string that occurs; it says yes to one that
//! does not with a probability of about 5% (two hash bits per gram, 8 bits per
//! old byte), which only costs the search it would have made anyway.

/// Bytes per gram: a search the filter turns away would have found a match
/// shorter than this.
pub const GRAM: usize = 8;

/// Filter bits per old byte.
const BITS_PER_BYTE: usize = 8;

/// A Bloom filter of a text's [`GRAM`]-byte strings.
///
/// Cost: [`BITS_PER_BYTE`] bits (one byte) per text byte; one pass over the
/// text to build, two random bit reads per query.
pub struct GramFilter {
    bits: Vec<u64>,
    /// Number of bits (a multiple of 64, at least 64).
    len: u64,
}

impl GramFilter {
    /// Add every [`GRAM`]-byte string of `text`.
    pub fn new(text: &[u8]) -> GramFilter {
        let len = (text.len() * BITS_PER_BYTE).div_ceil(64).max(1) as u64 * 64;
        let mut bits = vec![0u64; (len / 64) as usize];
        for gram in text.windows(GRAM) {
            for bit in Self::bits_of(gram, len) {
                bits[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        GramFilter { bits, len }
    }

    /// False only if the first [`GRAM`] bytes of `needle` occur nowhere in
    /// the text (so no match of `needle` is [`GRAM`] bytes long). True for
    /// needles shorter than a gram.
    #[inline]
    pub fn may_match(&self, needle: &[u8]) -> bool {
        let Some(gram) = needle.get(..GRAM) else {
            return true;
        };
        Self::bits_of(gram, self.len)
            .iter()
            .all(|&bit| self.bits[(bit / 64) as usize] >> (bit % 64) & 1 == 1)
    }

    /// The two filter bits of a gram: two multiplicative hashes of its
    /// bytes, each reduced to `0..len` by a multiply-shift.
    #[inline]
    fn bits_of(gram: &[u8], len: u64) -> [u64; 2] {
        let mut word = [0u8; GRAM];
        word.copy_from_slice(gram);
        let v = u64::from_le_bytes(word);
        let a = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = (v ^ v >> 29).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        [a, b].map(|h| ((u128::from(h ^ h >> 32) * u128::from(len)) >> 64) as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Xorshift bytes (tests of other modules use them too).
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn every_gram_of_the_text_may_match() {
        let text = noise(100_000, 7);
        let filter = GramFilter::new(&text);
        for at in 0..text.len() - GRAM {
            assert!(filter.may_match(&text[at..]), "gram at {at} turned away");
        }
    }

    #[test]
    fn most_absent_grams_are_turned_away() {
        let text = noise(100_000, 7);
        let filter = GramFilter::new(&text);
        let other = noise(100_000, 99);
        let passed = (0..other.len() - GRAM)
            .filter(|&at| filter.may_match(&other[at..]))
            .count();
        // Two bits of eight per gram: about 5% false positives.
        assert!(
            passed < other.len() / 10,
            "{passed} of {} passed",
            other.len()
        );
    }

    #[test]
    fn short_needles_and_tiny_texts_always_may_match() {
        let filter = GramFilter::new(b"abc");
        assert!(filter.may_match(b"xyz"));
        assert!(
            !filter.may_match(b"abcdefgh"),
            "a text of no grams holds none"
        );
        let filter = GramFilter::new(&[]);
        assert!(filter.may_match(b"1234567"));
    }
}
