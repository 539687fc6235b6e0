//! bsdiff's scan: walk the new image, find the longest old match at each
//! position ([`SuffixArray::longest_match`]), and keep a match only when it
//! beats carrying on with the current old offset by more than 8 bytes. Each
//! kept match is then widened forwards and backwards into approximate
//! matches (byte differences allowed) where more than half the bytes agree.
//!
//! The decisions are bsdiff's (as the `bidiff` crate has them); the search
//! underneath is ours and much cheaper on long shared prefixes. One
//! departure: on large old images ([`GRAM_FILTER_MIN_TEXT`]), a scan at a
//! margin of at least [`GRAM`] does not search a position whose next
//! [`GRAM`] bytes occur nowhere in the old image and counts it as matching
//! nothing. bsdiff would find a match shorter than [`GRAM`] there, which at
//! such a margin ends a scan step only if the current offset scores exactly
//! as much (then the scan skips ahead over it instead of moving a byte).
//! At smaller margins a short chance match can switch the offset, and
//! filtering those too cost a rootfs tar 2% (R1), so they are searched (the
//! later scan searches what the first one turned away). On the public
//! corpus the filter made the first scan 35-40% faster on the large
//! executables.
//!
//! [`GRAM_FILTER_MIN_TEXT`]: crate::suffix_array::GRAM_FILTER_MIN_TEXT
//! [`GRAM`]: crate::gram_filter::GRAM

use crate::gram_filter::GRAM;
use crate::suffix_array::{Found, SuffixArray, BATCH};
use rayon::prelude::*;
use std::cmp::min;

/// One approximate match and the literal run after it: new bytes
/// `new_start..new_start + diff_len` come from `old[old_start..]` plus a
/// difference, then new bytes up to `literal_end` are carried literally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Old offset of the approximate match.
    pub old_start: usize,
    /// New offset of the approximate match.
    pub new_start: usize,
    /// Length of the approximate match.
    pub diff_len: usize,
    /// End (new offset) of the literal run after the match.
    pub literal_end: usize,
}

/// bsdiff's switch margin: a new match replaces the current old offset only
/// if it is longer than the bytes that offset gets right by more than this.
pub const BSDIFF_MARGIN: usize = 8;

/// Scan `new` against the old image `sa` indexes, switching offsets by
/// `margin` (see [`BSDIFF_MARGIN`]), in chunks of `chunk` new
/// bytes scanned in parallel on the ambient rayon pool (each chunk on its
/// own, so chunk edges cost a little quality). Matches come back in new
/// order; together with the literal runs they tile `new` from the first
/// match's start.
///
/// Cost: one search per scanned position that does not continue the current
/// match (a bucket lookup, a few binary-search steps, about `match length`
/// byte comparisons; searched in batches where the scan moves a byte at a
/// time); the matches (32 bytes each).
pub fn scan(sa: &SuffixArray, new: &[u8], chunk: usize, margin: usize) -> Vec<Match> {
    scan_margins(sa, new, chunk, &[margin])
        .pop()
        .unwrap_or_default()
}

/// [`scan`] once per switch margin in `margins`, in that order, with the
/// same result as separate scans. Each chunk is scanned at every margin in
/// turn; the first scan keeps its search results ([`SearchMemo`]) and the
/// later ones take every position it searched from there instead of the
/// suffix array, since a position's longest match does not depend on the
/// margin (through new code, where both scans search at every byte, most
/// of the later scans' searches).
///
/// Cost: as one [`scan`] per margin, less the searches found in the memo;
/// the memo holds a bit per new byte and 6 bytes per position the first
/// scan searched (at most one entry per [`MEMO_MAX_PER_BYTE`] chunk bytes,
/// past which later scans search again), one chunk per thread at a time.
pub fn scan_margins(
    sa: &SuffixArray,
    new: &[u8],
    chunk: usize,
    margins: &[usize],
) -> Vec<Vec<Match>> {
    let chunk = chunk.max(1);
    let per_chunk: Vec<Vec<Vec<Match>>> = new
        .par_chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let offset = i * chunk;
            let mut scripts = scan_continuing(sa, part, margins, 0);
            for m in scripts.iter_mut().flatten() {
                m.new_start += offset;
                m.literal_end += offset;
            }
            scripts
        })
        .collect();
    (0..margins.len())
        .map(|k| {
            per_chunk
                .iter()
                .flat_map(|c| c[k].iter().copied())
                .collect()
        })
        .collect()
}

/// [`scan_margins`] over `new` as one chunk, on one thread, starting as
/// if the bytes before `new` had matched up to old offset `start_pos`: the
/// scan first tries to carry on from there (as bsdiff carries on after a
/// match), which is how a gap between two block matches continues the
/// first one's alignment.
pub fn scan_continuing(
    sa: &SuffixArray,
    new: &[u8],
    margins: &[usize],
    start_pos: usize,
) -> Vec<Vec<Match>> {
    let mut memo = SearchMemo::for_chunk(new.len(), margins.len() > 1);
    margins
        .iter()
        .map(|&margin| {
            let found = scan_chunk(sa, new, margin, &mut memo, start_pos.min(sa.text().len()));
            memo.replay();
            found
        })
        .collect()
}

/// Most memo entries per byte of a chunk: a third (6 bytes each, so the
/// memo stays within about 2 bytes per new byte; on the corpus's large
/// executables the first scan searched 22-39% of positions, and where it
/// searches more only the first are kept).
pub const MEMO_MAX_PER_BYTE: usize = 3;

/// The longest matches one scan of a chunk searched, for the next scan of
/// the same chunk: recorded by the first scan, then read back in position
/// order (scans only move forwards). A bit per chunk position says whether
/// it was recorded; the matches are kept in position order, so a recorded
/// position's match is found by counting the bits before it. Matches past
/// 4 GiB or 64 KiB long are not recorded (the later scan searches again).
struct SearchMemo {
    /// Bit `p`: position `p`'s match is recorded.
    recorded: Vec<u64>,
    /// Match positions and lengths of the recorded positions, in order.
    pos: Vec<u32>,
    len: Vec<u16>,
    /// Entries to record at most; 0 while replaying or when off.
    room: usize,
    /// Replay cursor: bits before `counted_to` are counted into `rank`.
    counted_to: usize,
    rank: usize,
    /// Searches answered from the memo (for tests and measurements).
    hits: usize,
}

impl SearchMemo {
    /// A memo for a chunk of `len` bytes; one that records nothing unless
    /// `wanted` (a single scan has no use for it).
    fn for_chunk(len: usize, wanted: bool) -> SearchMemo {
        let room = if wanted { len / MEMO_MAX_PER_BYTE } else { 0 };
        SearchMemo {
            recorded: if room > 0 {
                vec![0; len.div_ceil(64)]
            } else {
                Vec::new()
            },
            pos: Vec::new(),
            len: Vec::new(),
            room,
            counted_to: 0,
            rank: 0,
            hits: 0,
        }
    }

    /// Keep `found` for position `at` (positions must come in order).
    fn record(&mut self, at: usize, found: Found) {
        if self.pos.len() >= self.room {
            return;
        }
        if let (Ok(pos), Ok(len)) = (u32::try_from(found.pos), u16::try_from(found.len)) {
            self.recorded[at / 64] |= 1 << (at % 64);
            self.pos.push(pos);
            self.len.push(len);
        }
    }

    /// The recorded match for position `at`, if the first scan recorded it
    /// (`at` must not be less than the last position asked for).
    fn recall(&mut self, at: usize) -> Option<Found> {
        let word = *self.recorded.get(at / 64)?;
        while self.counted_to < at {
            let (w, b) = (self.counted_to / 64, self.counted_to % 64);
            let n = (at - w * 64).min(64) - b;
            let bits = self.recorded[w] >> b;
            let mask = if n == 64 { u64::MAX } else { (1 << n) - 1 };
            self.rank += (bits & mask).count_ones() as usize;
            self.counted_to += n;
        }
        if word >> (at % 64) & 1 == 0 {
            return None;
        }
        self.hits += 1;
        Some(Found {
            pos: self.pos[self.rank] as usize,
            len: usize::from(self.len[self.rank]),
        })
    }

    /// Stop recording and rewind for the next scan.
    fn replay(&mut self) {
        self.room = 0;
        self.counted_to = 0;
        self.rank = 0;
    }
}

/// bsdiff's scan over one stretch of the new image.
fn scan_chunk(
    sa: &SuffixArray,
    new: &[u8],
    margin: usize,
    memo: &mut SearchMemo,
    start_pos: usize,
) -> Vec<Match> {
    let old = sa.text();
    let (old_len, new_len) = (old.len(), new.len());
    // Whether old[at + offset] exists and equals new[at].
    let agrees = |at: usize, offset: isize| -> bool {
        at.checked_add_signed(offset)
            .and_then(|o| old.get(o))
            .is_some_and(|&b| b == new[at])
    };
    let mut out = Vec::new();
    let mut ahead = Lookahead::default();
    // The gram filter only turns away matches shorter than a gram, which
    // can switch the scan's offset only at margins under a gram.
    let filter = margin >= GRAM;
    let (mut scan, mut pos, mut len) = (0usize, 0usize, 0usize);
    let (mut last_scan, mut last_pos, mut last_offset) = (0usize, start_pos, start_pos as isize);
    while scan < new_len {
        // Bytes of new[scan..scan + len] the current offset already produces.
        let mut old_score = 0usize;
        scan += len;
        let mut scored_to = scan;
        // The first search after a jump usually ends the loop; from the
        // second on, search the next positions as a batch.
        let first = scan;
        while scan < new_len {
            let found = ahead.get(sa, new, scan, scan > first, filter, memo);
            (pos, len) = (found.pos, found.len);
            while scored_to < scan + len {
                if agrees(scored_to, last_offset) {
                    old_score += 1;
                }
                scored_to += 1;
            }
            // Same as what the current offset gives, or clearly better.
            if (len == old_score && len != 0) || len > old_score + margin {
                break;
            }
            // `scan` leaves the scored window. With the gram filter the window
            // can be empty here (a short match turned away): then `scan` was
            // never scored and must not be unscored.
            if scored_to <= scan {
                scored_to = scan + 1;
            } else if agrees(scan, last_offset) {
                old_score -= 1;
            }
            scan += 1;
        }
        if len == old_score && scan != new_len {
            continue;
        }
        // Widen the previous match forwards into the gap, and the new match
        // backwards the same way.
        let mut fwd = widen(min(scan - last_scan, old_len - last_pos), |k| {
            old[last_pos + k - 1] == new[last_scan + k - 1]
        });
        let mut back = if scan >= new_len {
            0
        } else {
            widen(min(scan - last_scan, pos), |k| {
                old[pos - k] == new[scan - k]
            })
        };
        // Where the two overlap, split the overlap where the forward match
        // stops paying.
        if last_scan + fwd > scan - back {
            let overlap = (last_scan + fwd) - (scan - back);
            let (mut s, mut best_s, mut split) = (0isize, 0isize, 0usize);
            for i in 0..overlap {
                if new[last_scan + fwd - overlap + i] == old[last_pos + fwd - overlap + i] {
                    s += 1;
                }
                if new[scan - back + i] == old[pos - back + i] {
                    s -= 1;
                }
                if s > best_s {
                    (best_s, split) = (s, i + 1);
                }
            }
            fwd = fwd + split - overlap;
            back -= split;
        }
        out.push(Match {
            old_start: last_pos,
            new_start: last_scan,
            diff_len: fwd,
            literal_end: scan - back,
        });
        last_scan = scan - back;
        last_pos = pos - back;
        last_offset = pos as isize - scan as isize;
    }
    out
}

/// How far to widen a match by up to `n` bytes, the `k`-th of which
/// (1-based, going outwards) agrees if `agrees(k)`: the length whose bytes
/// agree most beyond half (twice the agreeing bytes minus the length at its
/// highest, the shortest such; 0 if none beats widening by nothing).
#[inline]
fn widen(n: usize, agrees: impl Fn(usize) -> bool) -> usize {
    let (mut s, mut best_s, mut best) = (0isize, 0isize, 0usize);
    for k in 1..=n {
        if agrees(k) {
            s += 1;
        }
        if s * 2 - k as isize > best_s * 2 - best as isize {
            (best_s, best) = (s, k);
        }
    }
    best
}

/// Search results for the positions just ahead of the scan, made a batch at
/// a time ([`SuffixArray::longest_matches`]) when the scan is moving one byte
/// at a time (through new code, where it searches at every position).
#[derive(Default)]
struct Lookahead {
    /// New offset of `found[0]`.
    start: usize,
    /// Results held: `found[..held]`.
    held: usize,
    found: [Found; BATCH],
}

impl Lookahead {
    /// The longest match for `new[at..]`: from the batch if it holds `at`,
    /// else from the memo of an earlier scan, else searched (with the
    /// positions after it too if `batch`) and recorded in the memo.
    #[allow(clippy::too_many_arguments)]
    fn get(
        &mut self,
        sa: &SuffixArray,
        new: &[u8],
        at: usize,
        batch: bool,
        filter: bool,
        memo: &mut SearchMemo,
    ) -> Found {
        if (self.start..self.start + self.held).contains(&at) {
            return self.found[at - self.start];
        }
        if let Some(found) = memo.recall(at) {
            return found;
        }
        let n = if batch { BATCH.min(new.len() - at) } else { 1 };
        // Needles the gram filter passes are searched; the others have no
        // match worth a search (see the module notes).
        let mut needles: [&[u8]; BATCH] = [&[]; BATCH];
        let mut slot = [0usize; BATCH];
        let mut searched = 0;
        for k in 0..n {
            let needle = &new[at + k..];
            self.found[k] = Found::default();
            if !filter || sa.may_match(needle) {
                (needles[searched], slot[searched]) = (needle, k);
                searched += 1;
            }
        }
        let mut got = [Found::default(); BATCH];
        sa.longest_matches(&needles[..searched], &mut got[..searched]);
        for (&k, found) in slot[..searched].iter().zip(got) {
            self.found[k] = found;
        }
        (self.start, self.held) = (at, n);
        // Only searched positions are recorded: a later scan that does not
        // filter searches the others itself.
        for &k in &slot[..searched] {
            memo.record(at + k, self.found[k]);
        }
        self.found[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 24) as u8)
            .collect()
    }

    /// Matches tile the new image from 0 and every diff range is in bounds.
    fn check_tiling(old: &[u8], new: &[u8], found: &[Match]) {
        let mut at = 0;
        for m in found {
            assert_eq!(m.new_start, at);
            assert!(m.old_start + m.diff_len <= old.len());
            assert!(m.new_start + m.diff_len <= m.literal_end);
            at = m.literal_end;
        }
        assert_eq!(at, new.len());
    }

    #[test]
    fn an_insertion_is_two_matches_around_a_literal_run() {
        let old = noise(20_000, 1);
        let mut new = old.clone();
        new.splice(8_000..8_000, noise(300, 99));
        let found = scan(&SuffixArray::new(&old), &new, new.len(), BSDIFF_MARGIN);
        check_tiling(&old, &new, &found);
        let exact: usize = found.iter().map(|m| m.diff_len).sum();
        assert!(exact >= 19_900, "only {exact} bytes matched");
        // The bytes after the insertion come from old 8000.. again.
        let after = found
            .iter()
            .find(|m| (m.new_start..m.new_start + m.diff_len).contains(&10_000))
            .unwrap();
        assert_eq!(after.old_start as isize - after.new_start as isize, -300);
    }

    #[test]
    fn changed_bytes_stay_inside_one_approximate_match() {
        let old = noise(50_000, 7);
        let mut new = old.clone();
        for at in (1_000..49_000).step_by(997) {
            new[at] ^= 0x40;
        }
        let found = scan(&SuffixArray::new(&old), &new, new.len(), BSDIFF_MARGIN);
        check_tiling(&old, &new, &found);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].old_start, found[0].diff_len), (0, new.len()));
    }

    #[test]
    fn the_gram_filter_keeps_the_tiling_and_the_moved_blocks() {
        // Moved blocks with changed bytes, and fresh bytes the filter
        // turns away: both scans tile, find the blocks and leave the fresh
        // bytes literal.
        let old = noise(200_000, 1);
        let mut new = old[50_000..120_000].to_vec();
        // (`noise` with another seed is `old` shifted: xorshift instead.)
        new.extend(crate::gram_filter::tests::noise(20_000, 0x2545_f491));
        new.extend_from_slice(&old[..50_000]);
        for at in (500..new.len()).step_by(1_009) {
            new[at] = new[at].wrapping_add(3);
        }
        let covered = |found: &[Match]| found.iter().map(|m| m.diff_len).sum::<usize>();
        let mut covers = Vec::new();
        for filter in [false, true] {
            let sa = SuffixArray::with_filter(&old, filter);
            for margin in [BSDIFF_MARGIN, 3] {
                let found = scan(&sa, &new, 30_000, margin);
                check_tiling(&old, &new, &found);
                covers.push(covered(&found));
            }
        }
        // Below a gram's margin the filter changes nothing, even after a
        // filtered scan at bsdiff's margin shared its memo: new bytes made
        // of 6-byte pieces of old between fresh bytes (short matches that
        // a margin of 3 switches to).
        let fresh = crate::gram_filter::tests::noise(40_000, 0x51);
        let mut short = Vec::new();
        for (i, piece) in fresh.chunks(10).enumerate() {
            let at = (i * 7_919) % (old.len() - 6);
            short.extend_from_slice(&old[at..at + 6]);
            short.extend_from_slice(piece);
        }
        let (plain, filtered) = (
            SuffixArray::with_filter(&old, false),
            SuffixArray::with_filter(&old, true),
        );
        let at_three = scan_margins(&plain, &short, 30_000, &[3]).remove(0);
        assert!(at_three.len() > 100, "{} matches", at_three.len());
        assert_eq!(
            scan_margins(&filtered, &short, 30_000, &[BSDIFF_MARGIN, 3])[1],
            at_three
        );
        for (k, &c) in covers.iter().enumerate() {
            assert!(
                (118_000..=121_000).contains(&c),
                "scan {k}: {c} bytes matched of 120,000 moved"
            );
        }
    }

    #[test]
    fn chunks_tile_the_image_too() {
        let old = noise(30_000, 3);
        let mut new = noise(500, 5);
        new.extend_from_slice(&old[10_000..25_000]);
        new.extend_from_slice(&old[..9_000]);
        for chunk in [1_000, 7_777, new.len()] {
            let found = scan(&SuffixArray::new(&old), &new, chunk, BSDIFF_MARGIN);
            check_tiling(&old, &new, &found);
            let literal: usize = found
                .iter()
                .map(|m| m.literal_end - m.new_start - m.diff_len)
                .sum();
            assert!(literal < 2_000, "chunk {chunk}: {literal} literal bytes");
        }
    }

    #[test]
    fn scanning_margins_together_equals_scanning_each_alone() {
        // New code: bytes of an xorshift generator, found nowhere in `old`.
        let mut x = 0x9e37_79b9_u32;
        let mut code = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        };
        let old = noise(60_000, 11);
        let mut new = code(3_000);
        new.extend_from_slice(&old[20_000..41_000]);
        new.extend(code(5_000));
        new.extend_from_slice(&old[..15_000]);
        for at in (2_000..new.len()).step_by(1_999) {
            new[at] ^= 0x11;
        }
        let sa = SuffixArray::new(&old);
        // The second scan takes most of its searches from the first's memo.
        let mut memo = SearchMemo::for_chunk(new.len(), true);
        let first = scan_chunk(&sa, &new, BSDIFF_MARGIN, &mut memo, 0);
        memo.replay();
        let second = scan_chunk(&sa, &new, 3, &mut memo, 0);
        assert!(memo.pos.len() > 1_000, "{} recorded", memo.pos.len());
        assert!(
            memo.hits * 2 > memo.pos.len(),
            "{} hits of {}",
            memo.hits,
            memo.pos.len()
        );
        assert_eq!(first, scan(&sa, &new, new.len(), BSDIFF_MARGIN));
        assert_eq!(second, scan(&sa, &new, new.len(), 3));
        for chunk in [4_096, 17_000, new.len()] {
            let together = scan_margins(&sa, &new, chunk, &[BSDIFF_MARGIN, 3, 1]);
            for (k, margin) in [BSDIFF_MARGIN, 3, 1].into_iter().enumerate() {
                let alone = scan(&sa, &new, chunk, margin);
                assert_eq!(together[k], alone, "chunk {chunk}, margin {margin}");
            }
        }
    }

    #[test]
    fn the_memo_recalls_only_what_it_recorded() {
        let mut memo = SearchMemo::for_chunk(600, true);
        assert_eq!(memo.room, 200);
        let at = [2, 3, 63, 64, 65, 130, 200, 599];
        for &p in &at {
            memo.record(
                p,
                Found {
                    pos: p * 10,
                    len: p % 7,
                },
            );
        }
        // Too long or too far to hold: not recorded, searched again later.
        memo.record(
            300,
            Found {
                pos: 1,
                len: 1 << 16,
            },
        );
        memo.record(
            301,
            Found {
                pos: 1 << 32,
                len: 1,
            },
        );
        memo.replay();
        memo.record(400, Found { pos: 1, len: 1 }); // replaying: not recorded
        for p in 0..600 {
            let want = at.contains(&p).then_some(Found {
                pos: p * 10,
                len: p % 7,
            });
            assert_eq!(memo.recall(p), want, "position {p}");
        }
        assert_eq!(memo.hits, at.len());
        // Full: past its room nothing more is kept.
        let mut full = SearchMemo::for_chunk(6, true);
        for p in 0..6 {
            full.record(p, Found { pos: 0, len: 1 });
        }
        assert_eq!(full.pos.len(), 2);
        // A single scan keeps no memo and recalls nothing.
        let mut off = SearchMemo::for_chunk(1 << 20, false);
        off.record(5, Found { pos: 0, len: 1 });
        assert_eq!((off.room, off.recall(5)), (0, None));
    }

    #[test]
    fn nothing_in_common_is_all_literal() {
        let old = vec![0u8; 100];
        let new = vec![1u8; 300];
        let found = scan(&SuffixArray::new(&old), &new, new.len(), BSDIFF_MARGIN);
        check_tiling(&old, &new, &found);
        assert!(found.iter().all(|m| m.diff_len == 0));
    }
}
