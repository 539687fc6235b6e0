//! The record-head model (layout 3): predicts the bytes of each record head
//! (four varints: copy, diff and literal lengths, seek) from where in the
//! head they are and from the heads before them, and codes them with
//! [`crate::bit_coder`]. Both sides run this one implementation.
//!
//! Why: a head is a handful of varints whose meaning depends on the field.
//! LZMA2 sees only a byte stream and pays about a dozen bytes of framing per
//! stream; this model knows which field and which byte of its varint comes
//! next, what the same field began with in the last record and what the
//! field before it was. On the corpus it codes the heads stream 9-28%
//! smaller than LZMA2 at preset 9e (P4 -9%, P7 -10%, P2 -14%, P6 -18%,
//! P5 -28%), and it makes small patches smaller still, having no framing.
//!
//! How: before each record, and once after a block's last, a flag says
//! whether another record follows (one adaptive counter per place: first
//! record of the block or a later one). Each head byte is then eight bits
//! from the top, each predicted by [`MODELS`] hashed context models, a match
//! model that follows the last occurrence of the preceding
//! [`MATCH_MIN`] head bytes, and a bias, weighed by a gated linear mixer
//! whose weight set is chosen by the field, the byte's place in its varint
//! and the match state. *docs/FORMAT.md* (*Layout 3*) is the specification.
//!
//! The context models (each with the field and the byte's place in its
//! varint): nothing else; the varint's previous byte; the first byte and
//! length of the same field in the previous record; the last two bytes of
//! the stream; the first byte and length of the previous field of this
//! record with the varint's previous byte. Chosen from nine by dropping each
//! in turn on the corpus and keeping those whose loss cost bytes.
//!
//! Cost: [`HeadModel::MEMORY`] bytes (five tables of 32 Ki counters,
//! 64 KiB of match positions and a 64 KiB history); per head byte, eight
//! decisions of five table reads, a 7-term dot product and as many updates.
//! Heads are a small part of a patch's bytes (about 1 in 20 of what a
//! segment decodes), so this costs little time beside the diff model.

use crate::bit_coder::BitIo;
use crate::mixing::{
    code_mixed, read_counters, rows_of, stretched, update, update_all, MatchModel, FRESH,
};
#[allow(unused_imports)]
use crate::prelude::*;
use crate::record::MAX_HEAD_LEN;

/// Context models per bit.
pub const MODELS: usize = 5;
/// Each context model's table holds `2^TABLE_LOG` 16-bit counters.
pub const TABLE_LOG: u32 = 15;
/// The match model's table of last positions: `2^MATCH_LOG` entries of 4 bytes.
pub const MATCH_LOG: u32 = 14;
/// Head bytes the match model hashes to find a match.
pub const MATCH_MIN: u32 = 3;
/// The match history: `2^HISTORY_LOG` head bytes.
pub const HISTORY_LOG: u32 = 16;

/// Mixer inputs: the context models, the match model, a bias.
const INPUTS: usize = MODELS + 2;
/// Places a byte can have: four fields by the byte's index in its varint
/// (0, 1, 2, or 3 and later).
const PLACES: usize = 16;
/// Match states: none (or it disagrees), agreeing for fewer than
/// [`LONG_MATCH`] bytes, agreeing for more.
const MATCH_STATES: usize = 3;
const LONG_MATCH: u32 = 8;
/// Weight sets: place x match state.
const WEIGHT_SETS: usize = PLACES * MATCH_STATES;
/// Mixer learning rate: weights move by `input * error >> LEARN_SHIFT`.
const LEARN_SHIFT: u32 = 10;
/// Starting weight of every input (1/3 in 16.16 fixed point).
const START_WEIGHT: i32 = 65536 / 3;
/// The bias input.
const BIAS: i32 = 256;
/// Match counters: (length bucket 0..=15, expected bit, bit position).
const MATCH_COUNTERS: usize = 16 * 2 * 8;

/// Adaptive state of one segment's heads stream. Reset (or made anew) at
/// the start of every segment; kept across the segment's blocks.
#[derive(Debug, Clone)]
pub struct HeadModel {
    /// `MODELS` tables of `2^TABLE_LOG` counters (as in the diff model).
    counters: Vec<u16>,
    weights: Vec<[i32; INPUTS]>,
    match_counters: Vec<u16>,
    /// "Another record follows": for a block's first record, and later ones.
    more: [u16; 2],
    /// The head bytes coded, and the match followed through them.
    matches: MatchModel<MATCH_MIN, MATCH_LOG>,
    /// Where the next byte is: field 0..=3 and its index in the varint.
    field: usize,
    index: u32,
    /// The varint's previous byte (0 at its start).
    in_varint: u8,
    /// First byte and length (bytes) of each field, this record and the last.
    first: [u8; 4],
    len: [u32; 4],
    last_first: [u8; 4],
    last_len: [u32; 4],
}

impl HeadModel {
    /// Bytes a model holds (all allocated by [`Self::new`]).
    pub const MEMORY: u64 = (MODELS as u64) * (2 << TABLE_LOG)
        + MatchModel::<MATCH_MIN, MATCH_LOG>::memory(HISTORY_LOG)
        + (WEIGHT_SETS * INPUTS * 4) as u64
        + (MATCH_COUNTERS * 2) as u64
        + 256;

    /// A fresh model. Allocates [`Self::MEMORY`].
    pub fn new() -> Self {
        HeadModel {
            counters: vec![FRESH; MODELS << TABLE_LOG],
            weights: vec![[START_WEIGHT; INPUTS]; WEIGHT_SETS],
            match_counters: vec![FRESH; MATCH_COUNTERS],
            more: [FRESH; 2],
            matches: MatchModel::new(HISTORY_LOG),
            field: 0,
            index: 0,
            in_varint: 0,
            first: [0; 4],
            len: [0; 4],
            last_first: [0; 4],
            last_len: [0; 4],
        }
    }

    /// Back to the state of [`Self::new`] (no allocation).
    pub fn reset(&mut self) {
        self.counters.fill(FRESH);
        self.weights.fill([START_WEIGHT; INPUTS]);
        self.match_counters.fill(FRESH);
        self.more = [FRESH; 2];
        self.matches.reset();
        self.field = 0;
        self.index = 0;
        self.in_varint = 0;
        self.first = [0; 4];
        self.len = [0; 4];
        self.last_first = [0; 4];
        self.last_len = [0; 4];
    }

    /// Whether the next byte starts a record head (every varint so far is
    /// complete and they number a multiple of four).
    pub fn at_record_start(&self) -> bool {
        self.field == 0 && self.index == 0
    }

    /// Code the flag before a record head (`more`: one follows) or after a
    /// block's last (`false`); `first`: no record of this block came yet.
    /// Returns the flag (decoded, for a decoder).
    pub fn code_more<C: BitIo>(&mut self, io: &mut C, first: bool, more: bool) -> bool {
        let c = &mut self.more[usize::from(!first)];
        let bit = io.code(u32::from(more), u32::from(*c >> 4));
        update(c, bit);
        bit != 0
    }

    /// Code one whole record head (encoder): its bytes as
    /// [`crate::Record::encode_head`] writes them.
    pub fn code_head<C: BitIo>(&mut self, io: &mut C, head: &[u8]) {
        for &b in head {
            self.code_byte(io, b);
        }
    }

    /// Code one block's record heads (encoder): each announced by the more
    /// flag, then the flag that ends the block. A block has at least one
    /// record (one without has an empty chunk and codes nothing); ending the
    /// chunk is the encoder's.
    pub fn code_block<'a, C: BitIo>(
        &mut self,
        io: &mut C,
        heads: impl IntoIterator<Item = &'a [u8]>,
    ) {
        for (i, head) in heads.into_iter().enumerate() {
            self.code_more(io, i == 0, true);
            self.code_head(io, head);
        }
        self.code_more(io, false, false);
    }

    /// Decode one record head into `out`, returning its length, or `None`
    /// if its bytes run past [`MAX_HEAD_LEN`] (a varint too long: corrupt).
    pub fn decode_head<C: BitIo>(
        &mut self,
        io: &mut C,
        out: &mut [u8; MAX_HEAD_LEN],
    ) -> Option<usize> {
        for (n, slot) in out.iter_mut().enumerate() {
            *slot = self.code_byte(io, 0);
            if self.at_record_start() {
                return Some(n + 1);
            }
        }
        None
    }

    /// Code one head byte: encode `byte` (encoder) or decode and return it
    /// (decoder; `byte` is ignored), then learn from it.
    pub fn code_byte<C: BitIo>(&mut self, io: &mut C, byte: u8) -> u8 {
        let place = (self.field << 2) | self.index.min(3) as usize;
        let fk = ((self.field as u64) << 4) | u64::from(self.index.min(15));
        let f = self.field;
        let (prev_first, prev_len) = if f > 0 {
            (self.first[f - 1], self.len[f - 1])
        } else {
            (0, 0)
        };
        let recent = self.matches.recent() & 0xFFFF;
        let contexts: [u64; MODELS] = [
            fk,
            fk | u64::from(self.in_varint) << 8,
            fk | u64::from(self.last_first[f]) << 8 | u64::from(self.last_len[f].min(3)) << 16,
            fk | recent << 8,
            fk | u64::from(prev_first) << 8
                | u64::from(prev_len.min(3)) << 16
                | u64::from(self.in_varint) << 24,
        ];
        let rows = rows_of(&contexts, TABLE_LOG);
        let expected = self.matches.expected();
        let mut node = 1u32;
        for k in (0..8).rev() {
            let bit = self.bit(
                io,
                &rows,
                place,
                expected,
                node,
                k,
                (u32::from(byte) >> k) & 1,
            );
            node = (node << 1) | bit;
        }
        let value = (node & 0xFF) as u8;
        self.learn(value, expected);
        value
    }

    /// Code bit `k` (7 = the top) of a byte at tree `node`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn bit<C: BitIo>(
        &mut self,
        io: &mut C,
        rows: &[u32; MODELS],
        place: usize,
        expected: Option<u8>,
        node: u32,
        k: u32,
        bit: u32,
    ) -> u32 {
        let mut inputs = [0i32; INPUTS];
        let slots = read_counters(&self.counters, rows, node, TABLE_LOG, &mut inputs);
        // The match model: the bit the match predicts, if the bits so far
        // agree with it.
        let match_len = self.matches.len();
        let agreeing = expected
            .map(u32::from)
            .filter(|&e| ((e | 256) >> (k + 1)) == node);
        let match_slot = agreeing.map(|e| {
            let slot = ((match_len.min(15) * 2 + ((e >> k) & 1)) * 8 + k) as usize;
            inputs[MODELS] = stretched(self.match_counters[slot]);
            slot
        });
        inputs[MODELS + 1] = BIAS;
        let state = match match_slot {
            None => 0,
            Some(_) if match_len < LONG_MATCH => 1,
            Some(_) => 2,
        };
        let w = &mut self.weights[state * PLACES + place];
        let bit = code_mixed(io, bit, &inputs, w, LEARN_SHIFT);
        let matched = match_slot.map(|slot| &mut self.match_counters[slot]);
        update_all(&mut self.counters, &slots, matched, bit);
        bit
    }

    /// After a byte: where the next one is, the history, the match.
    fn learn(&mut self, value: u8, expected: Option<u8>) {
        let f = self.field;
        if self.index == 0 {
            self.first[f] = value;
        }
        if value & 0x80 != 0 {
            self.index = self.index.saturating_add(1);
            self.in_varint = value;
        } else {
            self.len[f] = self.index.saturating_add(1);
            self.index = 0;
            self.in_varint = 0;
            self.field += 1;
            if self.field == 4 {
                self.field = 0;
                self.last_first = self.first;
                self.last_len = self.len;
            }
        }
        self.matches.learn(value, expected);
    }
}

impl Default for HeadModel {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bit_coder::{BitDecoder, BitEncoder};
    use crate::record::Record;

    /// Heads of `n` records with the rhythm of real ones: copies of a few
    /// hundred bytes, short diff runs, rare literals, seeks that mostly
    /// cancel the literals.
    fn heads(n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        };
        (0..n)
            .map(|_| {
                let literal_len = if next() % 5 == 0 { next() % 40 } else { 0 };
                let r = Record {
                    copy_len: 64 + next() % 700,
                    diff_len: 1 + next() % 12,
                    literal_len,
                    seek: if next() % 7 == 0 {
                        next() as i64 % 5000 - 2500
                    } else {
                        -(literal_len as i64)
                    },
                };
                let mut h = Vec::new();
                r.encode_head(&mut h);
                h
            })
            .collect()
    }

    fn encode(m: &mut HeadModel, blocks: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
        let mut bits = BitEncoder::new();
        blocks
            .iter()
            .map(|block| {
                m.code_block(&mut bits, block.iter().map(Vec::as_slice));
                bits.finish()
            })
            .collect()
    }

    #[test]
    fn heads_round_trip_across_blocks() {
        let all = heads(6_000, 5);
        let blocks: Vec<Vec<Vec<u8>>> = all.chunks(1_700).map(|c| c.to_vec()).collect();
        let chunks = encode(&mut HeadModel::new(), &blocks);
        let mut m = HeadModel::new();
        for (chunk, block) in chunks.iter().zip(&blocks) {
            let mut dec = BitDecoder::start(chunk);
            let mut got = Vec::new();
            let mut first = true;
            while m.code_more(&mut dec.io(chunk), first, false) {
                first = false;
                let mut out = [0u8; MAX_HEAD_LEN];
                let n = m.decode_head(&mut dec.io(chunk), &mut out).unwrap();
                got.push(out[..n].to_vec());
            }
            assert_eq!(&got, block);
            assert!(dec.read() >= chunk.len() && dec.read() <= chunk.len() + 3);
        }
        let raw: usize = all.iter().map(Vec::len).sum();
        let coded: usize = chunks.iter().map(Vec::len).sum();
        // Mostly small fields with a rhythm: well under the raw bytes.
        assert!(coded < raw * 3 / 5, "{coded} of {raw}");
    }

    #[test]
    fn a_varint_that_never_ends_is_refused() {
        let mut m = HeadModel::new();
        let mut bits = BitEncoder::new();
        m.code_more(&mut bits, true, true);
        m.code_head(&mut bits, &[0x80; 64]);
        let chunk = bits.finish();
        let mut m = HeadModel::new();
        let mut dec = BitDecoder::start(&chunk);
        assert!(m.code_more(&mut dec.io(&chunk), true, false));
        let mut out = [0u8; MAX_HEAD_LEN];
        assert_eq!(m.decode_head(&mut dec.io(&chunk), &mut out), None);
        assert_eq!(out, [0x80; MAX_HEAD_LEN]);
    }

    #[test]
    fn reset_model_codes_like_a_new_one_and_repeats_cost_little() {
        let block = vec![heads(2_000, 9)];
        let mut m = HeadModel::new();
        let first = encode(&mut m, &block);
        let second = encode(&mut m, &block);
        m.reset();
        assert_eq!(encode(&mut m, &block), first);
        // The same 2,000 heads again, within the match history: the match
        // model follows them.
        assert!(
            second[0].len() < first[0].len() / 4,
            "{} after {}",
            second[0].len(),
            first[0].len()
        );
    }

    #[test]
    fn memory_counts_every_allocation() {
        let m = HeadModel::new();
        let held = m.counters.capacity() * 2
            + m.weights.capacity() * INPUTS * 4
            + m.match_counters.capacity() * 2
            + m.matches.held()
            + core::mem::size_of::<HeadModel>();
        assert!(held as u64 <= HeadModel::MEMORY, "{held}");
        assert!(HeadModel::MEMORY - (held as u64) < 1024);
    }
}
