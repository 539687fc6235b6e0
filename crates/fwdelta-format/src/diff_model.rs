//! The diff model (layout 3): predicts each difference byte of a segment from
//! the old bytes it applies to and the difference bytes before it, and codes
//! it with [`crate::bit_coder`]. Both sides run this one implementation, so
//! the generator and the applier make the same predictions bit for bit.
//!
//! Why: a difference byte is `new − old` where bsdiff-style matching found
//! the two ranges alike. What it is depends far more on the old byte under
//! it (the same opcode, the same field of an instruction, changes the same
//! way wherever it occurs) than on the difference bytes before it, which are
//! all a general-purpose compressor sees. On the corpus this model codes the
//! diff stream 15-33% smaller than LZMA2 at preset 9e (P4 -15%, P7 -20%,
//! P2 -22%, A2 -28%, P6 -33%).
//!
//! How: each byte is a zero flag, then (if not zero) its eight bits from the
//! top. Every bit is predicted by [`MODELS`] adaptive context models (hashed
//! tables of 12-bit probabilities with a hit count), a match model that
//! follows the last occurrence of the preceding six difference bytes, and a
//! bias; a gated linear mixer in the logistic domain weighs them, with a
//! weight set chosen by the bit's place, the old position's alignment and
//! the match state. *docs/FORMAT.md* (*Layout 3*) is the specification.
//!
//! The context models, chosen by dropping each of a larger set in turn on
//! the corpus and keeping those whose loss cost bytes: order 0; the old
//! byte; the old byte, its alignment and whether the last difference was
//! zero; the last two and the last three difference bytes; the old byte
//! with the one before it, with the one after it (both with the alignment);
//! and all three old bytes.
//!
//! Cost: [`DiffModel::memory`] bytes (1 MiB of tables, 256 KiB of match
//! positions, and the match history, `2^history_log` bytes); per difference
//! byte, one decision for a zero and nine for any other, each 8 table reads,
//! a 10-term dot product and as many updates (with the `successor-table`
//! feature each update is one read of a 256 KiB table shared by every model; see
//! `benches/hot_paths.rs`, `diff_model`, for the time per byte).

use crate::bit_coder::BitIo;
use crate::mixing::{code_mixed, read_counters, rows_of, stretched, update_all, MatchModel, FRESH};
#[allow(unused_imports)]
use crate::prelude::*;

/// Context models per bit.
pub const MODELS: usize = 8;
/// Each context model's table holds `2^TABLE_LOG` 16-bit counters.
pub const TABLE_LOG: u32 = 16;
/// The match model's table of last positions: `2^MATCH_LOG` entries of 4 bytes.
pub const MATCH_LOG: u32 = 16;
/// Difference bytes the match model hashes to find a match.
pub const MATCH_MIN: u32 = 6;
/// Smallest and largest match history (log2 bytes).
pub const HISTORY_LOG_RANGE: core::ops::RangeInclusive<u8> = 10..=30;

/// Mixer inputs: the context models, the match model, a bias.
const INPUTS: usize = MODELS + 2;
/// Weight sets: (zero flag or tree bit) x (old position mod 4) x (match state).
const WEIGHT_SETS: usize = 2 * 4 * MATCH_STATES;
const MATCH_STATES: usize = 6;
/// Mixer learning rate: weights move by `input * error >> LEARN_SHIFT`.
/// With the eight models, 11 coded every corpus diff stream smaller than
/// 10 (P2 -1.3%, P4 -1.3%, A2 -1.1%, P7 -0.9%, P6 -0.2%), at a cost of
/// 10-11 bytes (+0.5-0.7%) on the two 2 KB bundled firmware patches; 12
/// lost on the small corpus pairs.
const LEARN_SHIFT: u32 = 11;
/// Starting weight of every input (1/3 in 16.16 fixed point).
const START_WEIGHT: i32 = 65536 / 3;
/// The bias input.
const BIAS: i32 = 256;

/// The old bytes around the one a difference byte applies to (zero past
/// either end of the old image) and its position there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldContext {
    /// Old byte before it.
    pub prev: u8,
    /// The old byte itself.
    pub cur: u8,
    /// Old byte after it.
    pub next: u8,
    /// Its offset in the old image.
    pub pos: u64,
}

impl OldContext {
    /// The context of the byte at `i` in `bytes`, a stretch of the old
    /// image whose ends are the image's ends or lie at least one byte away
    /// from `i`; `pos` is that byte's offset in the old image.
    pub fn at(bytes: &[u8], i: usize, pos: u64) -> Self {
        OldContext {
            prev: if i > 0 { bytes[i - 1] } else { 0 },
            cur: bytes[i],
            next: bytes.get(i + 1).copied().unwrap_or(0),
            pos,
        }
    }
}

/// Adaptive state of one segment's diff stream. Reset (or made anew) at the
/// start of every segment; kept across the segment's blocks.
#[derive(Debug, Clone)]
pub struct DiffModel {
    /// `MODELS` tables of `2^TABLE_LOG` counters: probability of a 1 in the
    /// top 12 bits, hits (0..=LIMIT) in the low 4.
    counters: Vec<u16>,
    weights: Vec<[i32; INPUTS]>,
    /// Match model counters by (match length bucket, expected bit).
    match_counters: [u16; 64],
    /// The difference bytes coded, and the match followed through them.
    matches: MatchModel<MATCH_MIN, MATCH_LOG>,
}

impl DiffModel {
    /// Bytes a model with a history of `2^history_log` bytes holds.
    pub const fn memory(history_log: u8) -> u64 {
        (MODELS as u64) * (2 << TABLE_LOG)
            + MatchModel::<MATCH_MIN, MATCH_LOG>::memory(history_log as u32)
            + (WEIGHT_SETS * INPUTS * 4) as u64
            + 256
    }

    /// A fresh model with a match history of `2^history_log` bytes
    /// (clamped to [`HISTORY_LOG_RANGE`]). Allocates [`Self::memory`].
    ///
    /// The history size changes predictions only once a segment has coded
    /// more difference bytes than the history holds: a model with a larger
    /// history codes a shorter stream exactly as one whose history just
    /// holds it.
    pub fn new(history_log: u8) -> Self {
        let history_log = history_log.clamp(*HISTORY_LOG_RANGE.start(), *HISTORY_LOG_RANGE.end());
        DiffModel {
            counters: vec![FRESH; MODELS << TABLE_LOG],
            weights: vec![[START_WEIGHT; INPUTS]; WEIGHT_SETS],
            match_counters: [FRESH; 64],
            matches: MatchModel::new(u32::from(history_log)),
        }
    }

    /// Back to the state of [`Self::new`] (no allocation).
    pub fn reset(&mut self) {
        self.counters.fill(FRESH);
        self.weights.fill([START_WEIGHT; INPUTS]);
        self.match_counters = [FRESH; 64];
        self.matches.reset();
    }

    /// Code one difference byte: encode `byte` (encoder) or decode and
    /// return it (decoder; `byte` is ignored), then learn from it.
    /// Inlined: it runs once per difference byte, in the applier's and the
    /// generator's innermost loops.
    #[inline]
    pub fn code<C: BitIo>(&mut self, io: &mut C, old: OldContext, byte: u8) -> u8 {
        let q = old.pos & 3;
        let o = u64::from(old.cur);
        let r = self.matches.recent();
        let oq = (o << 2) | q;
        let (prev, next) = (u64::from(old.prev), u64::from(old.next));
        let contexts: [u64; MODELS] = [
            0,
            o,
            (oq << 1) | u64::from(r & 0xFF != 0),
            r & 0xFFFF,
            r & 0xFF_FFFF,
            (((o << 8) | prev) << 2) | q,
            (((o << 8) | next) << 2) | q,
            (((prev << 8) | o) << 8) | next,
        ];
        let expected = self.matches.expected();
        let step = Step {
            rows: rows_of(&contexts, TABLE_LOG),
            q: q as u32,
            expected: expected.map_or(0, u32::from),
            match_len: self.matches.len(),
        };
        let value = if self.bit(io, &step, 0, u32::from(byte != 0)) == 0 {
            0
        } else {
            let mut node = 1u32;
            for k in (0..8).rev() {
                let bit = self.bit(io, &step, node, (u32::from(byte) >> k) & 1);
                node = (node << 1) | bit;
            }
            (node & 0xFF) as u8
        };
        self.matches.learn(value, expected);
        value
    }

    /// Code one bit at `node` (0: the zero flag; 1..=255: the bit tree).
    #[inline(always)]
    fn bit<C: BitIo>(&mut self, io: &mut C, s: &Step, node: u32, bit: u32) -> u32 {
        let mut inputs = [0i32; INPUTS];
        let slots = read_counters(&self.counters, &s.rows, node, TABLE_LOG, &mut inputs);
        // The match model: the bit the match predicts, if the bits so far
        // agree with it.
        let (tree_bit, depth) = if node == 0 {
            (0, 0)
        } else {
            (1, 31 - node.leading_zeros())
        };
        let agrees = s.match_len > 0
            && (node == 0 || (s.expected != 0 && ((s.expected | 256) >> (8 - depth)) == node));
        let match_slot = if agrees {
            let ebit = if node == 0 {
                u32::from(s.expected != 0)
            } else {
                (s.expected >> (7 - depth)) & 1
            };
            let slot = (s.match_len.min(31) * 2 + ebit) as usize;
            inputs[MODELS] = stretched(self.match_counters[slot]);
            Some(slot)
        } else {
            None
        };
        inputs[MODELS + 1] = BIAS;
        let match_state = if s.match_len == 0 {
            0
        } else if !agrees {
            1
        } else {
            2 + (s.match_len.min(15) / 4) as usize
        };
        let set = ((tree_bit * 4 + s.q) as usize) * MATCH_STATES + match_state;
        let bit = code_mixed(io, bit, &inputs, &mut self.weights[set], LEARN_SHIFT);
        let matched = match_slot.map(|slot| &mut self.match_counters[slot]);
        update_all(&mut self.counters, &slots, matched, bit);
        bit
    }
}

/// What the bits of one byte share.
struct Step {
    /// Each model's row: its context's hash, `TABLE_LOG` bits.
    rows: [u32; MODELS],
    q: u32,
    expected: u32,
    match_len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bit_coder::{BitDecoder, BitEncoder};

    fn sample(n: usize) -> (Vec<OldContext>, Vec<u8>) {
        // Old bytes of a fake instruction stream; differences that depend on
        // the old byte and repeat.
        let mut seed = 11u64;
        let mut olds = Vec::new();
        let mut diffs = Vec::new();
        let old: Vec<u8> = (0..n + 2)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 60) as u8 * 17
            })
            .collect();
        for i in 0..n {
            olds.push(OldContext {
                prev: old[i],
                cur: old[i + 1],
                next: old[i + 2],
                pos: i as u64,
            });
            diffs.push(if old[i + 1] == 34 {
                4
            } else if i % 97 < 3 {
                i as u8
            } else {
                0
            });
        }
        (olds, diffs)
    }

    #[test]
    fn bytes_round_trip_across_chunks() {
        let (olds, diffs) = sample(50_000);
        let mut enc_model = DiffModel::new(12);
        let mut enc = BitEncoder::new();
        let mut chunks = Vec::new();
        for (i, (&o, &d)) in olds.iter().zip(&diffs).enumerate() {
            enc_model.code(&mut enc, o, d);
            if i % 9_000 == 8_999 {
                chunks.push((i + 1, enc.finish()));
            }
        }
        chunks.push((diffs.len(), enc.finish()));
        let mut dec_model = DiffModel::new(12);
        let mut at = 0;
        for (end, chunk) in &chunks {
            let mut dec = BitDecoder::start(chunk);
            while at < *end {
                let got = dec_model.code(&mut dec.io(chunk), olds[at], 0);
                assert_eq!(got, diffs[at], "byte {at}");
                at += 1;
            }
            assert!(dec.read() >= chunk.len() && dec.read() <= chunk.len() + 3);
        }
        let total: usize = chunks.iter().map(|c| c.1.len()).sum();
        // The differences are a function of the old byte plus a rare
        // pattern: far below a byte each.
        assert!(total < diffs.len() / 20, "{total} bytes");
    }

    #[test]
    fn memory_counts_every_allocation() {
        for log in [10u8, 16, 20] {
            let m = DiffModel::new(log);
            let held = m.counters.capacity() * 2
                + m.weights.capacity() * INPUTS * 4
                + m.matches.held()
                + core::mem::size_of::<DiffModel>();
            assert!(held as u64 <= DiffModel::memory(log), "2^{log}: {held}");
            assert!(DiffModel::memory(log) - (held as u64) < 1024);
        }
    }

    #[test]
    fn a_larger_history_codes_a_stream_it_holds_the_same() {
        // 4,000 bytes of repeats (the match model at work) fit 2^12 and 2^20.
        let (olds, mut diffs) = sample(4_000);
        for i in 2_000..4_000 {
            diffs[i] = diffs[i - 1_500] ^ 1;
        }
        let run = |log| {
            let mut m = DiffModel::new(log);
            let mut enc = BitEncoder::new();
            for (&o, &d) in olds.iter().zip(&diffs) {
                m.code(&mut enc, o, d);
            }
            enc.finish()
        };
        assert_eq!(run(12), run(20));
        assert_ne!(run(10), run(12), "a 1 KiB history cannot hold the repeats");
    }

    #[test]
    fn reset_model_codes_like_a_new_one() {
        let (olds, diffs) = sample(5_000);
        let run = |m: &mut DiffModel| {
            let mut enc = BitEncoder::new();
            for (&o, &d) in olds.iter().zip(&diffs) {
                m.code(&mut enc, o, d);
            }
            enc.finish()
        };
        let mut m = DiffModel::new(10);
        let first = run(&mut m);
        let second = run(&mut m);
        m.reset();
        assert_eq!(run(&mut m), first);
        assert!(second.len() < first.len());
    }

    #[test]
    fn match_model_follows_repeats_of_unpredictable_bytes() {
        // A random block of differences repeated: the second copy should
        // cost a small fraction of the first.
        let mut seed = 3u64;
        let block: Vec<u8> = (0..4000)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 56) as u8
            })
            .collect();
        let ctx = |i: usize| OldContext {
            prev: 0,
            cur: 0,
            next: 0,
            pos: i as u64,
        };
        let mut m = DiffModel::new(16);
        let mut enc = BitEncoder::new();
        for (i, &d) in block.iter().enumerate() {
            m.code(&mut enc, ctx(i), d);
        }
        let once = enc.finish().len();
        for (i, &d) in block.iter().enumerate() {
            m.code(&mut enc, ctx(i), d);
        }
        let again = enc.finish().len();
        assert!(once > 3900, "{once}");
        assert!(again < once / 5, "{again} after {once}");
    }
}
