//! The binary arithmetic coder under the diff and head models (layout 3):
//! codes one
//! bit at a time with a 12-bit probability, 32-bit state, no carries (an
//! interval `[low, high]` that drops its top byte once both ends agree on
//! it). Integer arithmetic only, so every platform codes the same bits.
//!
//! Cost: a multiply and a compare per bit; a byte of output (or input) per
//! eight bits of information; the encoder's [`BitEncoder::finish`] adds at
//! most four bytes to a chunk.

#[allow(unused_imports)]
use crate::prelude::*;
/// One coded bit: the coder's side of [`crate::diff_model::DiffModel`] and
/// [`crate::head_model::HeadModel`].
/// `p1` is the probability that the bit is 1, in 4096ths (1..=4095).
pub trait BitIo {
    /// Encode `bit` and return it (encoder), or return the decoded bit and
    /// ignore `bit` (decoder).
    fn code(&mut self, bit: u32, p1: u32) -> u32;
}

/// Where the interval splits for probability `p1` of a 1.
#[inline]
fn split(low: u32, high: u32, p1: u32) -> u32 {
    low + ((u64::from(high - low) * u64::from(p1)) >> 12) as u32
}

/// Encoder: appends coded bytes to the chunk being built.
#[derive(Debug, Clone)]
pub struct BitEncoder {
    low: u32,
    high: u32,
    out: Vec<u8>,
}

impl Default for BitEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BitEncoder {
    /// An encoder with an empty chunk.
    pub fn new() -> Self {
        BitEncoder {
            low: 0,
            high: u32::MAX,
            out: Vec::new(),
        }
    }

    /// End the chunk: write the fewest bytes that, read with zero bytes after
    /// them, decode every bit coded so far; return the chunk and start a new
    /// one. A chunk with no bits coded is empty.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.low == 0 && self.high == u32::MAX && self.out.is_empty() {
            return Vec::new();
        }
        for keep in 1..=4u32 {
            let drop = 32 - 8 * keep;
            let mask = if drop == 0 { 0 } else { (1u32 << drop) - 1 };
            // The smallest value >= low whose dropped bytes are zero.
            let Some(v) = self.low.checked_add(mask).map(|v| v & !mask) else {
                continue;
            };
            if v <= self.high {
                for k in 0..keep {
                    self.out.push((v >> (24 - 8 * k)) as u8);
                }
                break;
            }
        }
        self.low = 0;
        self.high = u32::MAX;
        core::mem::take(&mut self.out)
    }
}

impl BitIo for BitEncoder {
    #[inline]
    fn code(&mut self, bit: u32, p1: u32) -> u32 {
        let mid = split(self.low, self.high, p1);
        if bit != 0 {
            self.high = mid;
        } else {
            self.low = mid + 1;
        }
        while (self.low ^ self.high) & 0xFF00_0000 == 0 {
            self.out.push((self.high >> 24) as u8);
            self.low <<= 8;
            self.high = (self.high << 8) | 0xFF;
        }
        bit
    }
}

/// Decoder state for one chunk. The chunk's bytes are passed to each call
/// ([`BitDecoder::io`]), so the state can live apart from the buffer that
/// holds them; reads past the chunk's end see zero bytes.
#[derive(Debug, Clone, Default)]
pub struct BitDecoder {
    low: u32,
    high: u32,
    x: u32,
    /// Chunk bytes shifted in so far, padding included.
    read: usize,
}

impl BitDecoder {
    /// Start decoding a chunk (reads its first four bytes).
    pub fn start(chunk: &[u8]) -> Self {
        let mut d = BitDecoder {
            low: 0,
            high: u32::MAX,
            x: 0,
            read: 0,
        };
        for _ in 0..4 {
            d.x = (d.x << 8) | u32::from(d.next(chunk));
        }
        d
    }

    #[inline]
    fn next(&mut self, chunk: &[u8]) -> u8 {
        let b = chunk.get(self.read).copied().unwrap_or(0);
        self.read += 1;
        b
    }

    /// Bytes shifted in so far, counting the zero padding past the chunk.
    /// After the last bit of a chunk this encoder wrote, it is at least the
    /// chunk's length and at most three more.
    pub fn read(&self) -> usize {
        self.read
    }

    /// The decoder paired with its chunk, ready to decode bits.
    pub fn io<'a>(&'a mut self, chunk: &'a [u8]) -> DecodeIo<'a> {
        DecodeIo { dec: self, chunk }
    }
}

/// A [`BitDecoder`] with its chunk: decodes bits.
#[derive(Debug)]
pub struct DecodeIo<'a> {
    dec: &'a mut BitDecoder,
    chunk: &'a [u8],
}

impl BitIo for DecodeIo<'_> {
    #[inline]
    fn code(&mut self, _bit: u32, p1: u32) -> u32 {
        let d = &mut *self.dec;
        let mid = split(d.low, d.high, p1);
        let bit = u32::from(d.x <= mid);
        if bit != 0 {
            d.high = mid;
        } else {
            d.low = mid + 1;
        }
        while (d.low ^ d.high) & 0xFF00_0000 == 0 {
            d.low <<= 8;
            d.high = (d.high << 8) | 0xFF;
            let b = d.next(self.chunk);
            d.x = (d.x << 8) | u32::from(b);
        }
        bit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn bits_round_trip_at_every_probability_extreme() {
        let mut seed = 7;
        let bits: Vec<(u32, u32)> = (0..200_000)
            .map(|i| {
                let p = match i % 5 {
                    0 => 1,
                    1 => 4095,
                    _ => 1 + lcg(&mut seed) % 4095,
                };
                (lcg(&mut seed) & 1, p)
            })
            .collect();
        let mut enc = BitEncoder::new();
        for &(b, p) in &bits {
            enc.code(b, p);
        }
        let chunk = enc.finish();
        let mut dec = BitDecoder::start(&chunk);
        for (i, &(b, p)) in bits.iter().enumerate() {
            assert_eq!(dec.io(&chunk).code(0, p), b, "bit {i}");
        }
        assert!(dec.read() >= chunk.len() && dec.read() <= chunk.len() + 3);
    }

    #[test]
    fn skewed_bits_cost_what_their_probability_says() {
        // 100,000 zeros at p1 = 1/4096 cost about 100000 * log2(4096/4095) bits.
        let mut enc = BitEncoder::new();
        for _ in 0..100_000 {
            enc.code(0, 1);
        }
        let n = enc.finish().len();
        assert!(n <= 8, "{n} bytes");
    }

    #[test]
    fn finish_starts_a_fresh_chunk() {
        let mut enc = BitEncoder::new();
        assert!(enc.finish().is_empty());
        for i in 0..1000 {
            enc.code(i & 1, 2048);
        }
        let a = enc.finish();
        for i in 0..1000 {
            enc.code((i >> 1) & 1, 1000);
        }
        let b = enc.finish();
        let mut d = BitDecoder::start(&b);
        for i in 0..1000 {
            assert_eq!(d.io(&b).code(0, 1000), (i >> 1) & 1);
        }
        assert!((120..=135).contains(&a.len()), "{}", a.len());
    }
}
