//! The context-mixing machinery both models share (the diff model of
//! [`crate::diff_model`] and the record-head model of [`crate::head_model`]):
//! adaptive bit counters, the logistic `squash`/`stretch` pair, hashed table
//! rows and the gated linear mixer. Integer arithmetic only, so the generator
//! and the applier compute the same probabilities on every machine;
//! *docs/FORMAT.md* (*Layout 3*) specifies each of them.
//!
//! Cost: nothing allocated here; each function is a few arithmetic
//! operations (the mixer one multiply-add per input).

use crate::bit_coder::BitIo;
#[allow(unused_imports)]
use crate::prelude::*;

/// Counters stop counting here: later updates move the probability by
/// `2 / (2 * LIMIT + 3)` of the error.
pub(crate) const LIMIT: u16 = 10;
/// A fresh counter: probability 1/2, no hits.
pub(crate) const FRESH: u16 = 2048 << 4;
/// `4096 / (1 + e^(-x/2))` at `x = -16, -15, ..., 16`, rounded: the
/// logistic function, sampled; [`squash`] interpolates between samples.
const LOGISTIC: [i32; 33] = [
    1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349,
    3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095,
];

/// Logistic function on the mixer's scale: `d` in 256ths (clamped to
/// ±2047), result a probability in 4096ths.
pub(crate) const fn squash(d: i32) -> i32 {
    let d = if d > 2047 {
        2047
    } else if d < -2047 {
        -2047
    } else {
        d
    };
    let i = ((d + 2048) >> 7) as usize;
    let w = (d + 2048) & 127;
    LOGISTIC[i] + (((LOGISTIC[i + 1] - LOGISTIC[i]) * w) >> 7)
}

/// Inverse of [`squash`]: for each probability `p` (4096ths), the smallest
/// `d` in -2047..=2047 with `squash(d) >= p` (2047 if none).
pub(crate) const STRETCH: [i16; 4096] = {
    let mut t = [2047i16; 4096];
    let mut p = 0usize;
    let mut d = -2047i32;
    while d <= 2047 {
        let s = squash(d) as usize;
        while p <= s && p < 4096 {
            t[p] = d as i16;
            p += 1;
        }
        d += 1;
    }
    t
};

/// `2 * 65536 / (2n + 3)`: a counter's step after `n` hits, in 65536ths.
const STEP: [i32; LIMIT as usize + 1] = {
    let mut t = [0i32; LIMIT as usize + 1];
    let mut n = 0;
    while n <= LIMIT as usize {
        t[n] = (2 * 65536) / (2 * n as i32 + 3);
        n += 1;
    }
    t
};

/// Row of model `i` for context value `c` in a table of `2^table_log`
/// counters: the top `table_log` bits of a multiplicative hash.
#[inline]
fn row_of(i: u32, c: u64, table_log: u32) -> u32 {
    let h = (c ^ (u64::from(i) + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - table_log)) as u32
}

/// Where a bit-tree node's counter sits in a row of `2^table_log`: the row
/// XOR a scatter of the node, distinct for distinct nodes.
#[inline]
fn scatter(node: u32, table_log: u32) -> u32 {
    node.wrapping_mul(0x9E37) & ((1 << table_log) - 1)
}

/// Each context model's row for its context value: model `i`'s table is
/// the `i`-th of `M` tables of `2^table_log` counters.
#[inline]
pub(crate) fn rows_of<const M: usize>(contexts: &[u64; M], table_log: u32) -> [u32; M] {
    let mut rows = [0u32; M];
    for (i, (row, &c)) in rows.iter_mut().zip(contexts).enumerate() {
        *row = row_of(i as u32, c, table_log);
    }
    rows
}

/// The counters the `M` context models predict bit-tree `node` with: their
/// slots in `counters` (`M` tables of `2^table_log`, one row each in
/// `rows`), returned for the update, and their predictions, stretched,
/// written into the first `M` of the mixer's `inputs`.
#[inline]
pub(crate) fn read_counters<const M: usize, const N: usize>(
    counters: &[u16],
    rows: &[u32; M],
    node: u32,
    table_log: u32,
    inputs: &mut [i32; N],
) -> [usize; M] {
    let scatter = scatter(node, table_log);
    let mut slots = [0usize; M];
    for i in 0..M {
        let slot = (i << table_log) | ((rows[i] ^ scatter) as usize);
        slots[i] = slot;
        inputs[i] = stretched(counters[slot]);
    }
    slots
}

/// A counter's prediction as a mixer input: its probability, stretched.
#[inline]
pub(crate) fn stretched(counter: u16) -> i32 {
    i32::from(STRETCH[usize::from(counter >> 4)])
}

/// Move a counter toward `bit`: by `2 / (2n + 3)` of the error after `n`
/// hits, `n` stopping at [`LIMIT`]; the probability stays in 1..=4095.
#[inline(always)]
pub(crate) fn update(c: &mut u16, bit: u32) {
    #[cfg(feature = "successor-table")]
    {
        *c = SUCCESSOR[(bit & 1) as usize][usize::from(*c)];
    }
    #[cfg(not(feature = "successor-table"))]
    {
        *c = successor(*c, bit);
    }
}

/// Every counter's successor after a 0 (`[0]`) and after a 1 (`[1]`):
/// [`update`] as one table read. With the `successor-table` feature only
/// (256 KiB of read-only data, which a microcontroller's flash may not
/// spare; without it the counters are updated by [`successor`]'s
/// arithmetic, to the same values).
#[cfg(feature = "successor-table")]
static SUCCESSOR: [[u16; 1 << 16]; 2] = {
    let mut t = [[0u16; 1 << 16]; 2];
    let mut bit = 0;
    while bit < 2 {
        let mut c = 0usize;
        while c < 1 << 16 {
            t[bit][c] = successor(c as u16, bit as u32);
            c += 1;
        }
        bit += 1;
    }
    t
};

/// Counter `c` after coding `bit`: moved by `2 / (2n + 3)` of the error
/// after `n` hits, `n` stopping at [`LIMIT`]; the probability stays in
/// 1..=4095. (Hit counts past [`LIMIT`] never occur; they count as it.)
const fn successor(c: u16, bit: u32) -> u16 {
    let n = c & 15;
    let step = STEP[if n < LIMIT {
        n as usize
    } else {
        LIMIT as usize
    }];
    let p = (c >> 4) as i32;
    let target = (bit as i32) << 12;
    let mut p = p + (((target - p) * step) >> 16);
    if p < 1 {
        p = 1;
    }
    if p > 4095 {
        p = 4095;
    }
    ((p as u16) << 4) | (n + if n < LIMIT { 1 } else { 0 })
}

/// The mixer's probability of a 1 (4096ths, in 1..=4095) from `inputs`
/// (stretched, 256ths) and `weights` (16.16 fixed point).
#[inline]
fn mix<const N: usize>(inputs: &[i32; N], weights: &[i32; N]) -> u32 {
    let dot: i64 = inputs
        .iter()
        .zip(weights.iter())
        .map(|(&x, &y)| i64::from(x) * i64::from(y))
        .sum::<i64>()
        >> 16;
    squash(dot.clamp(-2047, 2047) as i32).clamp(1, 4095) as u32
}

/// Train `weights` after a coded `bit` that the mixer gave probability `p`:
/// each moves by `input * error >> learn_shift`.
#[inline]
fn train<const N: usize>(
    weights: &mut [i32; N],
    inputs: &[i32; N],
    p: u32,
    bit: u32,
    learn_shift: u32,
) {
    let err = ((bit as i32) << 12) - p as i32;
    for (w, &x) in weights.iter_mut().zip(inputs) {
        *w = w.wrapping_add((x * err) >> learn_shift);
    }
}

/// Code `bit` with the mixer's probability from `inputs` under `weights`,
/// then train the weights on it; returns the bit (decoded, for a decoder).
#[inline]
pub(crate) fn code_mixed<C: BitIo, const N: usize>(
    io: &mut C,
    bit: u32,
    inputs: &[i32; N],
    weights: &mut [i32; N],
    learn_shift: u32,
) -> u32 {
    let p = mix(inputs, weights);
    let bit = io.code(bit, p);
    train(weights, inputs, p, bit, learn_shift);
    bit
}

/// Let the counters at `slots` of `counters`, and `extra` if given (a
/// match counter), learn `bit`.
#[inline(always)]
pub(crate) fn update_all<const M: usize>(
    counters: &mut [u16],
    slots: &[usize; M],
    extra: Option<&mut u16>,
    bit: u32,
) {
    for &slot in slots {
        update(&mut counters[slot], bit);
    }
    if let Some(c) = extra {
        update(c, bit);
    }
}

/// A match model's state: a history of the bytes coded in the segment, a
/// table of where each hashed run of the last `min` bytes was last seen,
/// and the match being followed (the byte after the last occurrence of the
/// bytes just coded). Both models predict with it the same way.
///
/// `MIN` bytes (1 to 7) are hashed to find a match, into a table of
/// `2^TABLE_LOG` positions.
///
/// Cost: `2^history_log` bytes of history and `4 · 2^TABLE_LOG` of table;
/// per byte one table read and write.
#[derive(Debug, Clone)]
pub(crate) struct MatchModel<const MIN: u32, const TABLE_LOG: u32> {
    history: Vec<u8>,
    /// Last position (`coded` after it) of each hashed run.
    last_seen: Vec<u32>,
    /// Bytes coded so far in this segment.
    coded: u64,
    /// The last eight bytes coded, newest in the low byte.
    recent: u64,
    /// Where the current match continues in the history, and its length
    /// (0: none).
    at: u64,
    len: u32,
}

impl<const MIN: u32, const TABLE_LOG: u32> MatchModel<MIN, TABLE_LOG> {
    /// Bytes [`Self::new`] allocates.
    pub(crate) const fn memory(history_log: u32) -> u64 {
        (1 << history_log) + (4 << TABLE_LOG)
    }

    /// A fresh model; allocates [`Self::memory`].
    pub(crate) fn new(history_log: u32) -> Self {
        debug_assert!((1..8).contains(&MIN), "runs of 1 to 7 bytes are hashed");
        MatchModel {
            history: vec![0; 1 << history_log],
            last_seen: vec![0; 1 << TABLE_LOG],
            coded: 0,
            recent: 0,
            at: 0,
            len: 0,
        }
    }

    /// Back to the state of [`Self::new`] (no allocation).
    pub(crate) fn reset(&mut self) {
        self.history.fill(0);
        self.last_seen.fill(0);
        self.coded = 0;
        self.recent = 0;
        self.at = 0;
        self.len = 0;
    }

    /// The last eight bytes coded, newest in the low byte (zeros before
    /// the segment's first).
    pub(crate) fn recent(&self) -> u64 {
        self.recent
    }

    /// Bytes held on the heap (what [`Self::memory`] accounts for).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.history.capacity() + self.last_seen.capacity() * 4
    }

    /// Length of the match being followed (0: none).
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// The byte the match expects next, if there is a match.
    pub(crate) fn expected(&self) -> Option<u8> {
        (self.len > 0).then(|| {
            let mask = self.history.len() as u64 - 1;
            self.history[(self.at & mask) as usize]
        })
    }

    /// After coding `value` (which the match expected to be `expected`):
    /// the match goes on or ends, the history and the hashed runs learn it,
    /// and with no match one starts at the last occurrence of the run just
    /// coded, if the history still holds it.
    pub(crate) fn learn(&mut self, value: u8, expected: Option<u8>) {
        let mask = self.history.len() as u64 - 1;
        if self.len > 0 {
            if expected == Some(value) {
                self.len += 1;
                self.at += 1;
            } else {
                self.len = 0;
            }
        }
        self.history[(self.coded & mask) as usize] = value;
        self.coded += 1;
        self.recent = (self.recent << 8) | u64::from(value);
        if self.coded >= u64::from(MIN) {
            let key = self.recent & ((1 << (8 * MIN)) - 1);
            let h = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_LOG)) as usize;
            if self.len == 0 {
                let seen = u64::from(self.last_seen[h]);
                let now = self.coded & 0xFFFF_FFFF;
                let back = now.wrapping_sub(seen) & 0xFFFF_FFFF;
                // A match at most a history back: its bytes are all held
                // (the distance stays the same as it goes on).
                if seen != 0 && back > 0 && back <= mask + 1 {
                    self.at = self.coded - back;
                    self.len = 1;
                }
            }
            self.last_seen[h] = self.coded as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squash_and_stretch_are_monotone_inverses() {
        assert_eq!(squash(0), 2048);
        assert_eq!(squash(-5000), 1);
        assert_eq!(squash(5000), 4094);
        for d in -2046..=2047 {
            assert!(squash(d) >= squash(d - 1));
        }
        for (p, &d) in STRETCH.iter().enumerate().take(4095).skip(1) {
            let d = i32::from(d);
            assert!(squash(d) >= p as i32, "p {p}");
            assert!(d == -2047 || squash(d - 1) < p as i32, "p {p}");
        }
    }

    #[test]
    fn counters_learn_and_stay_in_range() {
        let mut c = FRESH;
        for _ in 0..100 {
            update(&mut c, 1);
        }
        assert_eq!(c & 15, LIMIT);
        assert!(c >> 4 > 4000 && c >> 4 <= 4095, "{}", c >> 4);
        for _ in 0..100 {
            update(&mut c, 0);
        }
        assert!(c >> 4 >= 1 && c >> 4 < 100, "{}", c >> 4);
    }

    #[test]
    fn successor_table_is_the_specified_update() {
        // docs/FORMAT.md, Counters: p += ((bit·4096 − p) · step[n]) >> 16,
        // clamped to 1..=4095, step[n] = 131,072 / (2n + 3); n += 1 below 10.
        for bit in 0..2u32 {
            for n in 0..=LIMIT {
                for p in 1..=4095i32 {
                    let step = 131_072 / (2 * i32::from(n) + 3);
                    let q = (p + (((bit as i32 * 4096 - p) * step) >> 16)).clamp(1, 4095);
                    let want = ((q as u16) << 4) | (n + u16::from(n < LIMIT));
                    let mut c = ((p as u16) << 4) | n;
                    update(&mut c, bit);
                    assert_eq!(c, want, "p {p} n {n} bit {bit}");
                    assert_eq!(successor(((p as u16) << 4) | n, bit), want);
                }
            }
        }
    }

    #[test]
    fn scatter_keeps_nodes_apart() {
        let mut seen = std::collections::HashSet::new();
        for node in 0..256 {
            assert!(seen.insert(scatter(node, 15)));
        }
    }
}
