//! Deterministic pseudo-random test data, shared by the test suites, the fuzz
//! seed generator and the benchmarks so that every one of them draws the same
//! bytes from the same seed (failures reproduce, committed seeds regenerate
//! byte for byte). Not cryptographic. Also builders of hand-made patches
//! ([`seal_patch`]) and split-layout payloads ([`split_lzma2`]) for the
//! hostile tests and the fuzz targets.

pub mod crafted_patch;
pub use crafted_patch::{
    lzma2_chunks, model_diff_chunks, model_head_chunks, split_lzma2, split_payload,
};
/// Seal hand-made segments under a header exactly as the generator does.
pub use fwdelta_format::chain::seal_patch;

/// A xorshift64 generator. Cost: one `u64` of state, three shifts per draw.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (forced odd, so a zero seed still moves).
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// The next byte (the low byte of [`Self::next_u64`]).
    pub fn next_byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_byte()).collect()
    }
}

/// `len` pseudo-random bytes from `seed`: `XorShift::new(seed).bytes(len)`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    XorShift::new(seed).bytes(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_odd_forcing() {
        assert_eq!(noise(7, 100), noise(7, 100));
        assert_ne!(noise(7, 100), noise(9, 100));
        // 6 and 7 become the same odd state
        assert_eq!(noise(6, 50), noise(7, 50));
        // a zero seed does not get stuck at zero
        assert!(noise(0, 16).iter().any(|&b| b != 0));
        // the first draw of seed 1, computed by hand
        let mut x = 1u64;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert_eq!(XorShift::new(1).next_u64(), x);
    }
}
