//! The match finder: an edit script from old to new.
//!
//! Matches come from [`match_scan`] (bsdiff's scan over the old image's
//! [`SuffixArray`], scanning the new image in parallel chunks on the ambient
//! rayon pool). They are normalised into [`Op`]s that tile the new image
//! exactly.

use crate::block_matcher;
use crate::match_scan;
use crate::suffix_array::SuffixArray;
use rayon::prelude::*;

/// One step of the edit script. Ops tile the new image in order: op `k`
/// produces `diff_len` bytes as `old[old_start..][..diff_len] + diff` and then
/// `literal_len` literal bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// Old-image offset the diff bytes apply to. For an op with no diff bytes it
    /// is the old cursor left by the previous op, so no seek is spent on it.
    pub old_start: u64,
    /// New bytes made from old bytes plus a difference.
    pub diff_len: u64,
    /// New bytes carried literally.
    pub literal_len: u64,
}

impl Op {
    /// An op of `len` literal bytes (its old cursor is filled in by `push`).
    pub fn literal(len: u64) -> Op {
        Op {
            old_start: 0,
            diff_len: 0,
            literal_len: len,
        }
    }

    /// New bytes this op produces.
    pub fn len(&self) -> u64 {
        self.diff_len + self.literal_len
    }
    /// Whether the op produces nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Old cursor after the op's diff bytes.
    pub fn old_end(&self) -> u64 {
        self.old_start + self.diff_len
    }
}

/// Chunks the new image is scanned in (each at least [`MIN_SCAN_CHUNK`]),
/// whatever the number of threads: chunk edges shape the matches, so a
/// chunking that followed the thread count would make a patch depend on
/// the machine that made it (it did: P7 at `-j 1` and `-j 2` differed).
pub const SCAN_CHUNKS: usize = 2;

/// Smallest chunk of the new image scanned by one task. Chunk edges cost a
/// little match quality, so small inputs are scanned whole.
const MIN_SCAN_CHUNK: usize = 1 << 20;

/// The switch margins the generator scans with (see
/// [`match_scan::BSDIFF_MARGIN`]): bsdiff's 8 first, then 3. No margin is
/// best for every pair: on the public corpus and the ARM32 pairs (margins 2
/// to 8) the grub pair (P2, object files) was 10.6% smaller at 3 and the
/// Cortex-M4 test firmware 6.5%, while the x86-64 and Go executables were
/// 0.4-10% larger at 3 than at 8. So both are scanned (one suffix sort) and
/// the smaller patch is kept.
pub const SWITCH_MARGINS: [usize; 2] = [match_scan::BSDIFF_MARGIN, 3];

/// Find an edit script turning `old` into `new` with bsdiff's margin.
///
/// Cost: a suffix array of `old` (4 bytes per old byte, one sort), then one
/// scan of `new` split over the rayon pool's threads (see [`match_scan`]).
pub fn find_ops(old: &[u8], new: &[u8]) -> Vec<Op> {
    find_scripts(old, new, &[match_scan::BSDIFF_MARGIN])
        .pop()
        .unwrap_or_default()
}

/// One edit script per switch margin in `margins`, in that order, from one
/// suffix sort. Cost: as [`find_ops`], plus one scan per further margin
/// (whose searches mostly come from the first scan's memo: see
/// [`match_scan::scan_margins`]).
pub fn find_scripts(old: &[u8], new: &[u8], margins: &[usize]) -> Vec<Vec<Op>> {
    find_scripts_with(old, new, margins, BLOCK_PATH_MIN_PERCENT)
}

/// [`find_scripts`], taking the block path when the block matcher covers at
/// least `block_path_min_percent` of `new` ([`BLOCK_PATH_MIN_PERCENT`] for
/// the smallest patches, [`FAST_BLOCK_PATH_MIN_PERCENT`] for speed).
pub fn find_scripts_with(
    old: &[u8],
    new: &[u8],
    margins: &[usize],
    block_path_min_percent: u64,
) -> Vec<Vec<Op>> {
    if new.is_empty() {
        return vec![Vec::new(); margins.len()];
    }
    if old.is_empty() {
        return vec![vec![Op::literal(new.len() as u64)]; margins.len()];
    }
    let covers = block_matcher::find_covers(old, new);
    let covered: usize = covers.iter().map(|c| c.len).sum();
    if (covered as u64) * 100 < new.len() as u64 * block_path_min_percent {
        return find_scripts_in(&SuffixArray::new(old), new, margins);
    }
    find_scripts_around(old, new, &covers, margins)
}

/// The share of the new image (percent) the block matcher's matches must
/// cover for [`find_scripts`] to sort and scan only what they leave. On the
/// public corpus the grub pair (P2, 89% covered) came out 1.8% larger on
/// that path at 80% (about 1.2 KB more literals: its gaps' best sources
/// were in old bytes the covers use), so it takes the full path;
/// the pairs over 90% came out -2.4% (P6), 0 (P3) and +3 bytes (P5).
/// Below it (changed code, where references differ every few dozen bytes
/// and few whole blocks survive) the whole old image is sorted and the
/// whole new image scanned.
pub const BLOCK_PATH_MIN_PERCENT: u64 = 90;

/// [`BLOCK_PATH_MIN_PERCENT`] at the fast levels, where a patch a little
/// larger is worth a diff several times faster. Measured with `--fast` (one
/// margin, no executable-aware plan) against the 90% rule: the grub pair
/// (P2, 89% covered) 1.42 s -> 0.69 s and 44,682 -> 44,497 bytes; the two
/// Debian root-filesystem tars (77% and 73% covered) 5.35 s -> 2.61 s
/// (+0.47%) and 3.46 s -> 2.12 s (+0.18%), peak memory halved; OVMF (P1,
/// 59%) unchanged in time, 4 bytes smaller. The pairs of changed code
/// (P4 13%, P7 7%) stay on the full path.
pub const FAST_BLOCK_PATH_MIN_PERCENT: u64 = 50;

/// [`find_scripts`] given the block matcher's `covers` of most of `new`:
/// the old bytes no cover uses are packed together and sorted, the new
/// bytes between covers are scanned against them (gaps in parallel), and
/// the covers and the gaps' ops are put back in new order, old offsets
/// mapped back from the packed image.
///
/// Cost: the packed old image and its suffix array (5 bytes per packed
/// byte), a scan of the gaps; the covers' bytes are never searched.
pub(crate) fn find_scripts_around(
    old: &[u8],
    new: &[u8],
    covers: &[block_matcher::Cover],
    margins: &[usize],
) -> Vec<Vec<Op>> {
    // Old ranges the covers use, merged; their complement is packed.
    let mut used: Vec<(usize, usize)> = covers.iter().map(|c| (c.old, c.old + c.len)).collect();
    used.sort_unstable();
    let mut pieces: Vec<(usize, usize)> = Vec::new(); // (packed start, old start)
    let mut packed = Vec::new();
    let mut from = 0usize;
    for (s, e) in used.into_iter().chain([(old.len(), old.len())]) {
        if s > from {
            pieces.push((packed.len(), from));
            packed.extend_from_slice(&old[from..s]);
        }
        from = from.max(e);
    }
    let sa = SuffixArray::new(&packed);
    // The gaps of new between covers, each scanned on its own.
    let mut gaps = Vec::new();
    let mut end = 0usize;
    for c in covers {
        gaps.push(end..c.new);
        end = c.new + c.len;
    }
    gaps.push(end..new.len());
    // Packed offset where piece `k` ends.
    let piece_end = |k: usize| pieces.get(k + 1).map_or(packed.len(), |&(next, _)| next);
    // Packed offset of old offset `o`, if no cover uses it.
    let pack = |o: usize| {
        let k = pieces.partition_point(|&(_, os)| os <= o).checked_sub(1)?;
        let (ps, os) = pieces[k];
        (ps + (o - os) < piece_end(k)).then_some(ps + (o - os))
    };
    let gap_ops: Vec<Vec<Vec<Op>>> = gaps
        .par_iter()
        .enumerate()
        .map(|(k, gap)| {
            if gap.is_empty() {
                return vec![Vec::new(); margins.len()];
            }
            if packed.is_empty() {
                return vec![vec![Op::literal(gap.len() as u64)]; margins.len()];
            }
            // Carry on from the cover before the gap, where its old bytes go on.
            let start = k
                .checked_sub(1)
                .and_then(|c| pack(covers[c].old + covers[c].len))
                .unwrap_or(0);
            match_scan::scan_continuing(&sa, &new[gap.clone()], margins, start)
                .into_iter()
                .map(|found| ops_from(found, gap.len()))
                .collect()
        })
        .collect();
    // Old offset of packed offset `p`, and the bytes to the end of its piece.
    let unpack = |p: u64| {
        let k = pieces.partition_point(|&(ps, _)| ps as u64 <= p) - 1;
        let (ps, os) = pieces[k];
        (os as u64 + (p - ps as u64), piece_end(k) as u64 - p)
    };
    (0..margins.len())
        .map(|m| {
            let (mut ops, mut cursor) = (Vec::new(), 0u64);
            for (k, gap) in gap_ops.iter().enumerate() {
                for op in &gap[m] {
                    // A diff range may run across pieces: one op per piece.
                    let (mut at, mut left) = (op.old_start, op.diff_len);
                    while left > 0 {
                        let (old_at, room) = unpack(at);
                        let take = left.min(room);
                        left -= take;
                        let literal_len = if left == 0 { op.literal_len } else { 0 };
                        push(
                            &mut ops,
                            &mut cursor,
                            Op {
                                old_start: old_at,
                                diff_len: take,
                                literal_len,
                            },
                        );
                        at += take;
                    }
                    if op.diff_len == 0 {
                        push(&mut ops, &mut cursor, Op::literal(op.literal_len));
                    }
                }
                if let Some(c) = covers.get(k) {
                    push(
                        &mut ops,
                        &mut cursor,
                        Op {
                            old_start: c.old as u64,
                            diff_len: c.len as u64,
                            literal_len: 0,
                        },
                    );
                }
            }
            join_contiguous(ops)
        })
        .collect()
}

/// Join each op whose diff range carries on at the previous op's shift
/// (its old start is where the previous op's diff range ends plus its
/// literals) into the previous op, when at most [`MIN_MATCH_LEN`] literal
/// bytes lie between: the literals become difference bytes. A gap between
/// block matches ends where its changed bytes end, so its scan leaves them
/// literal before the next match at the same shift; bsdiff's single scan
/// runs through them as one match, and so does this.
fn join_contiguous(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        match out.last_mut() {
            Some(last)
                if op.diff_len > 0
                    && last.diff_len > 0
                    && last.literal_len <= MIN_MATCH_LEN
                    && last.old_end() + last.literal_len == op.old_start =>
            {
                last.diff_len += last.literal_len + op.diff_len;
                last.literal_len = op.literal_len;
            }
            _ => out.push(op),
        }
    }
    out
}

/// [`find_scripts`] over an old image already sorted into `sa`.
pub fn find_scripts_in(sa: &SuffixArray, new: &[u8], margins: &[usize]) -> Vec<Vec<Op>> {
    if new.is_empty() {
        return vec![Vec::new(); margins.len()];
    }
    if sa.text().is_empty() {
        return vec![vec![Op::literal(new.len() as u64)]; margins.len()];
    }
    let chunk = new.len().div_ceil(SCAN_CHUNKS).max(MIN_SCAN_CHUNK);
    match_scan::scan_margins(sa, new, chunk, margins)
        .into_iter()
        .map(|found| ops_from(found, new.len()))
        .collect()
}

/// Normalise the scan's matches into ops tiling a new image of `new_len`.
fn ops_from(found: Vec<match_scan::Match>, new_len: usize) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    let mut covered = 0u64;
    let mut cursor = 0u64;
    for m in found {
        let start = m.new_start as u64;
        if start > covered {
            // The scan tiles each chunk; keep the tiling exact regardless.
            push(&mut ops, &mut cursor, Op::literal(start - covered));
        }
        push(
            &mut ops,
            &mut cursor,
            Op {
                old_start: m.old_start as u64,
                diff_len: m.diff_len as u64,
                literal_len: (m.literal_end - m.new_start - m.diff_len) as u64,
            },
        );
        covered = m.literal_end as u64;
    }
    if covered < new_len as u64 {
        push(&mut ops, &mut cursor, Op::literal(new_len as u64 - covered));
    }
    ops
}

/// Matches shorter than this are carried as literals instead. bsdiff's scan
/// accepts matches of 8 bytes and up, and in changed code most short ones are
/// chance: each costs a record head (poorly compressible varints) to save a
/// few literal bytes that zstd compresses anyway. On the public corpus, 32
/// made patches 1.2-4.4% smaller than no threshold (P7 -4.4%, P2 -1.2%; the
/// two near-identical pairs moved by under 2 bytes); 16 and 24 gained less.
pub const MIN_MATCH_LEN: u64 = 32;

/// Append an op, dropping empty ones and folding literal-only ops into the
/// previous op (they need no record of their own); an op whose match is
/// shorter than [`MIN_MATCH_LEN`] becomes literal-only first. A literal-only
/// first op gets the current old cursor as its `old_start`.
fn push(ops: &mut Vec<Op>, cursor: &mut u64, mut op: Op) {
    if op.is_empty() {
        return;
    }
    if op.diff_len < MIN_MATCH_LEN {
        op = Op::literal(op.len());
    }
    if op.diff_len == 0 {
        if let Some(last) = ops.last_mut() {
            last.literal_len += op.literal_len;
            return;
        }
        op.old_start = *cursor;
    }
    *cursor = op.old_end();
    ops.push(op);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rebuild `new` from ops, checking every old range is in bounds.
    pub(crate) fn replay(old: &[u8], new: &[u8], ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::with_capacity(new.len());
        for op in ops {
            let (s, d) = (op.old_start as usize, op.diff_len as usize);
            let pos = out.len();
            assert!(s + d <= old.len());
            for i in 0..d {
                let diff = new[pos + i].wrapping_sub(old[s + i]);
                out.push(old[s + i].wrapping_add(diff));
            }
            out.extend_from_slice(&new[out.len()..out.len() + op.literal_len as usize]);
        }
        out
    }

    #[test]
    fn contiguous_ops_join_through_a_few_literals() {
        let op = |old_start, diff_len, literal_len| Op {
            old_start,
            diff_len,
            literal_len,
        };
        // Same shift through 4 literal bytes: one op.
        assert_eq!(
            join_contiguous(vec![op(0, 100, 4), op(104, 50, 7)]),
            [op(0, 154, 7)]
        );
        // Too many literals, another shift, or a literal-only op: kept apart.
        for ops in [
            vec![op(0, 100, 40), op(140, 50, 0)],
            vec![op(0, 100, 4), op(105, 50, 0)],
            vec![op(0, 0, 4), op(4, 50, 0)],
        ] {
            assert_eq!(join_contiguous(ops.clone()), ops);
        }
    }

    #[test]
    fn the_block_path_matches_what_the_full_scan_matches() {
        // Near-identical: a moved block, an insertion, scattered byte edits,
        // and a gap whose best source is old bytes no cover uses.
        let old: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 ^ (i >> 13) as u8)
            .collect();
        let mut new = old[..150_000].to_vec();
        new.extend_from_slice(&[9u8; 300]);
        new.extend_from_slice(&old[250_000..]);
        new.extend_from_slice(&old[150_000..250_000]);
        for at in (5_000..new.len()).step_by(40_000) {
            new[at] = new[at].wrapping_add(1);
        }
        let covers = block_matcher::find_covers(&old, &new);
        let covered: usize = covers.iter().map(|c| c.len).sum();
        assert!(covered * 100 >= new.len() * BLOCK_PATH_MIN_PERCENT as usize);
        let scripts = find_scripts(&old, &new, &SWITCH_MARGINS);
        let full = find_scripts_in(&SuffixArray::new(&old), &new, &SWITCH_MARGINS);
        for (ops, full) in scripts.iter().zip(&full) {
            assert_eq!(ops.iter().map(Op::len).sum::<u64>(), new.len() as u64);
            assert_eq!(replay(&old, &new, ops), new);
            let literal = |ops: &[Op]| ops.iter().map(|o| o.literal_len).sum::<u64>();
            assert!(
                literal(ops) <= literal(full) + 64,
                "{} vs {}",
                literal(ops),
                literal(full)
            );
            assert!(literal(ops) < 400, "{} literal bytes", literal(ops));
        }
        // Gaps whose source is inside a cover's old range stay literal, but
        // are still tiled: a new image that repeats an old stretch twice.
        let mut twice = old[..200_000].to_vec();
        twice.extend_from_slice(&old[..200_000]);
        let ops = find_ops(&old[..200_000], &twice);
        assert_eq!(replay(&old[..200_000], &twice, &ops), twice);
    }

    #[test]
    fn ops_tile_the_new_image() {
        let old: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut new = old.clone();
        new.splice(1000..1000, [7u8; 500]);
        new[200_000] ^= 0x55;
        new.extend_from_slice(&old[..5000]);
        let ops = find_ops(&old, &new);
        assert_eq!(ops.iter().map(Op::len).sum::<u64>(), new.len() as u64);
        assert_eq!(replay(&old, &new, &ops), new);
        // the copy-heavy edit is found as matches, not literals
        let literal: u64 = ops.iter().map(|o| o.literal_len).sum();
        assert!(literal < 2000, "literal bytes {literal}");
    }

    #[test]
    fn empty_sides() {
        assert!(find_ops(b"abc", b"").is_empty());
        assert_eq!(
            find_ops(b"", b"xyz"),
            vec![Op {
                old_start: 0,
                diff_len: 0,
                literal_len: 3
            }]
        );
    }
}
