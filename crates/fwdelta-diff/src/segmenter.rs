//! The segment layout: where the patch body is cut into independently decodable
//! segments.
//!
//! Each cut restarts the compressor, which costs patch bytes; cutting too rarely
//! makes resume and parallel apply coarse. The segmenter estimates each op's
//! compressed cost — record head, literal bytes, and *non-zero* diff bytes (runs
//! of zero differences compress to almost nothing) — and closes a segment when
//! its estimate reaches the target. An op larger than the target is split
//! inside.

use crate::matcher::Op;
use rayon::prelude::*;

/// Estimated cost of a record head.
const HEAD_COST: u64 = 4;

/// Largest segment target honoured: the estimate counts literal and non-zero
/// diff bytes, which compress to no more than themselves (plus zstd's small
/// overhead), so segments this size stay far below the format's 1 GiB payload
/// limit even for incompressible data.
pub const MAX_SEGMENT_COST: u64 = 256 << 20;

/// One planned segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPlan {
    /// First new byte produced.
    pub new_offset: u64,
    /// New bytes produced.
    pub new_len: u64,
    /// Old cursor at the segment's start.
    pub old_start: u64,
    /// Ops, in order (the first and last may be parts of a split op).
    pub ops: Vec<Op>,
}

/// Estimated compressed cost of each op. Cost: one parallel pass over the
/// diff ranges of both images.
pub fn op_costs(ops: &[Op], old: &[u8], new: &[u8]) -> Vec<u64> {
    differing_bytes(ops, old, new)
        .into_iter()
        .zip(ops)
        .map(|(nonzero, op)| HEAD_COST + op.literal_len + nonzero)
        .collect()
}

/// Bytes of each op's diff range that differ from the old bytes under
/// them (`ops` tile `new`). Cost: one parallel pass over the diff ranges.
pub fn differing_bytes(ops: &[Op], old: &[u8], new: &[u8]) -> Vec<u64> {
    let mut starts = Vec::with_capacity(ops.len());
    let mut pos = 0u64;
    for op in ops {
        starts.push(pos);
        pos += op.len();
    }
    ops.par_iter()
        .zip(starts.par_iter())
        .map(|(op, &at)| {
            let (n, o, d) = (at as usize, op.old_start as usize, op.diff_len as usize);
            new[n..n + d]
                .iter()
                .zip(&old[o..o + d])
                .filter(|(a, b)| a != b)
                .count() as u64
        })
        .collect()
}

/// Cut `ops` into segments of estimated cost about `target` each.
/// Cost: one pass over the ops after [`op_costs`]; the ops are copied once.
pub fn split(ops: &[Op], old: &[u8], new: &[u8], target: u64) -> Vec<SegmentPlan> {
    split_costed(ops, &op_costs(ops, old, new), target)
}

/// [`split`] with the op costs already known (`costs[i]` is `ops[i]`'s).
/// Targets are capped at [`MAX_SEGMENT_COST`].
pub fn split_costed(ops: &[Op], costs: &[u64], target: u64) -> Vec<SegmentPlan> {
    let target = target.clamp(1, MAX_SEGMENT_COST);
    let mut out = Vec::new();
    let mut cur = Builder::default();
    for (&op, &cost) in ops.iter().zip(costs) {
        let (mut op, mut cost) = (op, cost);
        if cur.cost > 0 && cur.cost.saturating_add(cost) > target {
            cur.close(&mut out);
        }
        while cost > target && op.len() > 1 {
            let take = ((u128::from(op.len()) * u128::from(target) / u128::from(cost)) as u64)
                .clamp(1, op.len() - 1);
            let (head, tail) = split_op(op, take);
            let head_cost = (u128::from(cost) * u128::from(take) / u128::from(op.len())) as u64;
            cur.add(head, head_cost);
            cur.close(&mut out);
            op = tail;
            cost = cost.saturating_sub(head_cost).max(1);
        }
        cur.add(op, cost);
    }
    cur.close(&mut out);
    out
}

/// Move every segment boundary up to the next multiple of `align` new bytes
/// (the image's end stays where it is), so a sink that writes whole flash
/// pages never has to rewrite one across a checkpoint. Segments that become
/// empty disappear. Cost: one pass over the ops.
pub fn align_boundaries(segments: Vec<SegmentPlan>, align: u64) -> Vec<SegmentPlan> {
    if align <= 1 || segments.is_empty() {
        return segments;
    }
    let total: u64 = segments.iter().map(|s| s.new_len).sum();
    let mut cuts: Vec<u64> = segments
        .iter()
        .map(|s| {
            (s.new_offset + s.new_len)
                .div_ceil(align)
                .saturating_mul(align)
                .min(total)
        })
        .collect();
    cuts.dedup();
    let ops: Vec<Op> = segments.into_iter().flat_map(|s| s.ops).collect();
    let mut out = Vec::with_capacity(cuts.len());
    let mut cur = Builder::default();
    let mut at = 0u64;
    let mut cuts = cuts.into_iter().peekable();
    for op in ops {
        let mut op = op;
        while !op.is_empty() {
            let Some(&cut) = cuts.peek() else { break };
            let room = cut - at;
            if op.len() <= room {
                at += op.len();
                cur.add(op, 1);
                op = Op::literal(0);
            } else {
                let (head, tail) = split_op(op, room);
                if !head.is_empty() {
                    cur.add(head, 1);
                }
                at += room;
                op = tail;
            }
            if at == cut {
                cur.close(&mut out);
                cuts.next();
            }
        }
    }
    cur.close(&mut out);
    out
}

/// Split an op after its first `k` new bytes (`0 < k < op.len()`).
pub fn split_op(op: Op, k: u64) -> (Op, Op) {
    if k <= op.diff_len {
        (
            Op {
                old_start: op.old_start,
                diff_len: k,
                literal_len: 0,
            },
            Op {
                old_start: op.old_start + k,
                diff_len: op.diff_len - k,
                literal_len: op.literal_len,
            },
        )
    } else {
        let lit = k - op.diff_len;
        (
            Op {
                old_start: op.old_start,
                diff_len: op.diff_len,
                literal_len: lit,
            },
            Op {
                old_start: op.old_end(),
                diff_len: 0,
                literal_len: op.literal_len - lit,
            },
        )
    }
}

#[derive(Default)]
struct Builder {
    new_offset: u64,
    new_len: u64,
    cost: u64,
    ops: Vec<Op>,
}

impl Builder {
    fn add(&mut self, op: Op, cost: u64) {
        self.new_len += op.len();
        self.cost = self.cost.saturating_add(cost.max(1));
        self.ops.push(op);
    }

    fn close(&mut self, out: &mut Vec<SegmentPlan>) {
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        out.push(SegmentPlan {
            new_offset: self.new_offset,
            new_len: self.new_len,
            old_start: ops[0].old_start,
            ops,
        });
        self.new_offset += self.new_len;
        self.new_len = 0;
        self.cost = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_tiling(segs: &[SegmentPlan], total: u64) {
        let mut at = 0;
        for s in segs {
            assert_eq!(s.new_offset, at);
            assert!(s.new_len > 0);
            assert_eq!(s.ops.iter().map(Op::len).sum::<u64>(), s.new_len);
            assert_eq!(s.old_start, s.ops[0].old_start);
            at += s.new_len;
        }
        assert_eq!(at, total);
    }

    #[test]
    fn big_literal_is_split_to_target() {
        let new = vec![1u8; 10_000];
        let ops = [Op {
            old_start: 0,
            diff_len: 0,
            literal_len: 10_000,
        }];
        let segs = split(&ops, &[], &new, 1000);
        check_tiling(&segs, 10_000);
        assert!((9..=12).contains(&segs.len()), "{} segments", segs.len());
    }

    #[test]
    fn identical_images_are_one_segment() {
        let data = vec![5u8; 100_000];
        let ops = [Op {
            old_start: 0,
            diff_len: 100_000,
            literal_len: 0,
        }];
        let segs = split(&ops, &data, &data, 1000);
        assert_eq!(segs.len(), 1);
        check_tiling(&segs, 100_000);
    }

    #[test]
    fn boundaries_move_to_alignment() {
        let new = vec![1u8; 10_000];
        let ops = [Op {
            old_start: 0,
            diff_len: 0,
            literal_len: 10_000,
        }];
        let segs = align_boundaries(split(&ops, &[], &new, 700), 4096);
        check_tiling(&segs, 10_000);
        let ends: Vec<u64> = segs.iter().map(|s| s.new_offset + s.new_len).collect();
        assert_eq!(ends, vec![4096, 8192, 10_000]);
        // a diff/literal mix keeps its old cursors
        let old = vec![2u8; 10_000];
        let ops = [
            Op {
                old_start: 100,
                diff_len: 3000,
                literal_len: 2000,
            },
            Op {
                old_start: 5000,
                diff_len: 5000,
                literal_len: 0,
            },
        ];
        let segs = align_boundaries(split(&ops, &old, &new, 500), 1024);
        check_tiling(&segs, 10_000);
        for s in &segs[..segs.len() - 1] {
            assert_eq!((s.new_offset + s.new_len) % 1024, 0);
        }
    }

    #[test]
    fn split_op_keeps_old_cursor() {
        let op = Op {
            old_start: 10,
            diff_len: 5,
            literal_len: 5,
        };
        assert_eq!(
            split_op(op, 3),
            (
                Op {
                    old_start: 10,
                    diff_len: 3,
                    literal_len: 0
                },
                Op {
                    old_start: 13,
                    diff_len: 2,
                    literal_len: 5
                }
            )
        );
        assert_eq!(
            split_op(op, 7),
            (
                Op {
                    old_start: 10,
                    diff_len: 5,
                    literal_len: 2
                },
                Op {
                    old_start: 15,
                    diff_len: 0,
                    literal_len: 3
                }
            )
        );
    }

    #[test]
    fn huge_targets_are_capped() {
        let len = 3 * MAX_SEGMENT_COST;
        let ops = [Op {
            old_start: 0,
            diff_len: 0,
            literal_len: len,
        }];
        // cost of a pure literal is its length; the new image bytes are not read
        let segs = split_costed(&ops, &[HEAD_COST + len], u64::MAX);
        let lens: Vec<u64> = segs.iter().map(|s| s.new_len).collect();
        assert!((3..=4).contains(&segs.len()), "{lens:?}");
        assert!(lens.iter().all(|&l| l <= MAX_SEGMENT_COST), "{lens:?}");
        check_tiling(&segs, len);
    }

    #[test]
    fn unlimited_target_gives_one_segment() {
        let new = vec![9u8; 5000];
        let ops = [
            Op {
                old_start: 0,
                diff_len: 0,
                literal_len: 2000,
            },
            Op {
                old_start: 0,
                diff_len: 0,
                literal_len: 3000,
            },
        ];
        assert_eq!(split(&ops, &[], &new, u64::MAX).len(), 1);
    }
}
