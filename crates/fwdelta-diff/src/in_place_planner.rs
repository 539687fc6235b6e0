//! The in-place planner: turns an edit script into cell segments ordered so an
//! applier can overwrite the old image with the new one in the same region.
//!
//! The new image is cut into cells of `2^cell_log` bytes; a cell's segment is
//! decoded into a scratch buffer from the region (still holding old bytes where
//! no cell has been written yet) and then written over its cell. So a cell may
//! be written only once every other cell that reads old bytes from it is done.
//! Cells are ordered greedily: any cell nobody still needs goes next (lowest
//! index first); when every remaining cell is still needed (a cycle), the cell
//! whose old bytes are needed least is taken and those reads become literals.
//! Finally every op is rewritten so that no byte is read from a cell written
//! before its own.
//!
//! Cost: O(ops + cells · log cells); memory a few words per cell and per op.

use crate::matcher::Op;
use crate::segmenter::{split_op, SegmentPlan};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The plan: segments in apply order, one per cell.
#[derive(Debug, Clone)]
pub struct InPlacePlan {
    /// Segments in the order the applier runs them.
    pub segments: Vec<SegmentPlan>,
    /// New bytes turned into literals because their old bytes would already be
    /// overwritten (the size cost of applying in place).
    pub forced_literal_bytes: u64,
}

/// Plan in-place cells for `ops` (which tile a `new_len`-byte image) with
/// `2^cell_log`-byte cells.
pub fn plan(ops: &[Op], new_len: u64, cell_log: u8) -> InPlacePlan {
    let cell = 1u64 << cell_log;
    let cells = new_len.div_ceil(cell) as usize;
    let per_cell = split_into_cells(ops, cell, cells);

    // reads[c]: old cells (< cells, != c) cell c reads, with byte counts.
    let reads: Vec<HashMap<usize, u64>> = per_cell
        .iter()
        .enumerate()
        .map(|(c, ops)| {
            let mut m = HashMap::new();
            for op in ops {
                for (x, n) in old_cells(op, cell) {
                    if x < cells && x != c {
                        *m.entry(x).or_insert(0) += n;
                    }
                }
            }
            m
        })
        .collect();
    // needed_by[x]: cells still to run that read x, and how many bytes.
    let mut needed_by: Vec<HashMap<usize, u64>> = vec![HashMap::new(); cells];
    for (c, m) in reads.iter().enumerate() {
        for (&x, &n) in m {
            needed_by[x].insert(c, n);
        }
    }
    let mut order = Vec::with_capacity(cells);
    let mut done = vec![false; cells];
    let mut ready: BinaryHeap<Reverse<usize>> = (0..cells)
        .filter(|&x| needed_by[x].is_empty())
        .map(Reverse)
        .collect();
    // Cycle breaking: cheapest cell by bytes still needed (lazy entries).
    let cost = |x: usize, nb: &[HashMap<usize, u64>]| nb[x].values().sum::<u64>();
    let mut by_cost: BinaryHeap<Reverse<(u64, usize)>> = (0..cells)
        .map(|x| Reverse((cost(x, &needed_by), x)))
        .collect();
    let mut forced: Vec<(usize, usize)> = Vec::new(); // (reader, cell whose reads become literal)
    while order.len() < cells {
        let x = match ready.pop() {
            Some(Reverse(x)) if !done[x] => x,
            Some(_) => continue,
            None => {
                // Every remaining cell is still needed: break the cheapest.
                let x = loop {
                    let Some(Reverse((c, x))) = by_cost.pop() else {
                        unreachable_cycle()
                    };
                    if !done[x] && c == cost(x, &needed_by) {
                        break x;
                    }
                };
                for reader in std::mem::take(&mut needed_by[x]).into_keys() {
                    forced.push((reader, x));
                }
                x
            }
        };
        done[x] = true;
        order.push(x);
        for &y in reads[x].keys() {
            if needed_by[y].remove(&x).is_some() && !done[y] {
                if needed_by[y].is_empty() {
                    ready.push(Reverse(y));
                } else {
                    by_cost.push(Reverse((cost(y, &needed_by), y)));
                }
            }
        }
    }

    // Rewrite each cell's ops: no reads from cells written before it.
    let mut position = vec![0usize; cells];
    for (p, &c) in order.iter().enumerate() {
        position[c] = p;
    }
    let mut forced_literal_bytes = 0;
    let segments = order
        .iter()
        .map(|&c| {
            let written_before = |x: usize| x < cells && x != c && position[x] < position[c];
            let (ops, lit) = forbid_reads(&per_cell[c], cell, written_before);
            forced_literal_bytes += lit;
            let new_offset = c as u64 * cell;
            let new_len = cell.min(new_len - new_offset);
            SegmentPlan {
                new_offset,
                new_len,
                old_start: ops.first().map_or(0, |o| o.old_start),
                ops,
            }
        })
        .collect();
    debug_assert!(forced.iter().all(|&(r, x)| position[x] < position[r]));
    InPlacePlan {
        segments,
        forced_literal_bytes,
    }
}

fn unreachable_cycle() -> ! {
    // by_cost holds an entry for every cell not yet done, refreshed whenever a
    // cost drops, so it cannot run dry while cells remain.
    panic!("in-place planner: no cell left to break a cycle (internal error)")
}

/// Split ops at cell boundaries of the new image: `out[c]` tiles cell `c`.
fn split_into_cells(ops: &[Op], cell: u64, cells: usize) -> Vec<Vec<Op>> {
    let mut out = vec![Vec::new(); cells];
    let mut at = 0u64;
    for &op in ops {
        let mut op = op;
        while !op.is_empty() {
            let c = (at / cell) as usize;
            let room = (c as u64 + 1) * cell - at;
            let (head, tail) = if op.len() > room {
                split_op(op, room)
            } else {
                (op, Op::literal(0))
            };
            at += head.len();
            out[c].push(head);
            op = tail;
        }
    }
    out
}

/// Old cells an op's diff range reads, with byte counts.
fn old_cells(op: &Op, cell: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
    let (start, end) = (op.old_start, op.old_end());
    let first = start / cell;
    let last = if end > start { (end - 1) / cell } else { first };
    (first..=last).filter(move |_| end > start).map(move |x| {
        let lo = start.max(x * cell);
        let hi = end.min((x + 1) * cell);
        (x as usize, hi - lo)
    })
}

/// Rewrite `ops` so no diff byte reads an old cell for which `forbidden`
/// holds: such bytes become literals. Returns the ops and the bytes converted.
fn forbid_reads(ops: &[Op], cell: u64, forbidden: impl Fn(usize) -> bool) -> (Vec<Op>, u64) {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    let mut converted = 0;
    let mut cursor = ops.first().map_or(0, |o| o.old_start);
    for op in ops {
        let mut pos = op.old_start;
        let end = op.old_end();
        while pos < end {
            let x = pos / cell;
            let run_end = end.min((x + 1) * cell);
            let n = run_end - pos;
            if forbidden(x as usize) {
                converted += n;
                push_literal(&mut out, n, cursor);
            } else {
                out.push(Op {
                    old_start: pos,
                    diff_len: n,
                    literal_len: 0,
                });
                cursor = run_end;
            }
            pos = run_end;
        }
        if op.literal_len > 0 {
            push_literal(&mut out, op.literal_len, cursor);
        }
    }
    // Merge adjacent diff runs that continue each other (cell boundaries that
    // needed no conversion), then fold literals into the previous op.
    let mut merged: Vec<Op> = Vec::with_capacity(out.len());
    for op in out {
        match merged.last_mut() {
            Some(last)
                if last.literal_len == 0 && op.diff_len > 0 && last.old_end() == op.old_start =>
            {
                last.diff_len += op.diff_len;
                last.literal_len = op.literal_len;
            }
            Some(last) if op.diff_len == 0 => last.literal_len += op.literal_len,
            _ => merged.push(op),
        }
    }
    (merged, converted)
}

fn push_literal(out: &mut Vec<Op>, n: u64, cursor: u64) {
    match out.last_mut() {
        Some(last) => last.literal_len += n,
        None => out.push(Op {
            old_start: cursor,
            diff_len: 0,
            literal_len: n,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling_ok(plan: &InPlacePlan, new_len: u64, cell: u64) {
        let mut seen = vec![false; new_len.div_ceil(cell) as usize];
        for s in &plan.segments {
            assert_eq!(s.new_offset % cell, 0);
            let c = (s.new_offset / cell) as usize;
            assert!(!seen[c], "cell {c} twice");
            seen[c] = true;
            assert_eq!(s.ops.iter().map(Op::len).sum::<u64>(), s.new_len);
        }
        assert!(seen.iter().all(|&b| b));
    }

    /// Every diff read must hit a cell not written before (or the own cell).
    fn no_stale_reads(plan: &InPlacePlan, cell: u64) {
        let mut written = std::collections::HashSet::new();
        for s in &plan.segments {
            let own = s.new_offset / cell;
            for op in &s.ops {
                for (x, _) in old_cells(op, cell) {
                    assert!(
                        x as u64 == own || !written.contains(&(x as u64)),
                        "cell {own} reads written cell {x}"
                    );
                }
            }
            written.insert(own);
        }
    }

    #[test]
    fn insertion_is_ordered_back_to_front_without_literals() {
        // new = 100 inserted bytes + old: every cell reads the cell before it.
        let cell = 4096u64;
        let old_len = 10 * cell;
        let ops = vec![
            Op {
                old_start: 0,
                diff_len: 0,
                literal_len: 100,
            },
            Op {
                old_start: 0,
                diff_len: old_len,
                literal_len: 0,
            },
        ];
        let new_len = old_len + 100;
        let plan = plan(&ops, new_len, 12);
        tiling_ok(&plan, new_len, cell);
        no_stale_reads(&plan, cell);
        assert_eq!(
            plan.forced_literal_bytes, 0,
            "a pure shift needs no literals"
        );
        let order: Vec<u64> = plan.segments.iter().map(|s| s.new_offset / cell).collect();
        assert_eq!(order.first(), Some(&10), "last cell first: {order:?}");
    }

    #[test]
    fn swap_forces_literals() {
        // new = old with two cells swapped: a 2-cycle, one side becomes literal.
        let cell = 4096u64;
        let ops = vec![
            Op {
                old_start: cell,
                diff_len: cell,
                literal_len: 0,
            },
            Op {
                old_start: 0,
                diff_len: cell,
                literal_len: 0,
            },
        ];
        let plan = plan(&ops, 2 * cell, 12);
        tiling_ok(&plan, 2 * cell, cell);
        no_stale_reads(&plan, cell);
        assert_eq!(plan.forced_literal_bytes, cell);
    }

    #[test]
    fn identical_image_needs_nothing() {
        let cell = 4096u64;
        let ops = vec![Op {
            old_start: 0,
            diff_len: 5 * cell + 7,
            literal_len: 0,
        }];
        let plan = plan(&ops, 5 * cell + 7, 12);
        tiling_ok(&plan, 5 * cell + 7, cell);
        no_stale_reads(&plan, cell);
        assert_eq!(plan.forced_literal_bytes, 0);
        assert_eq!(plan.segments.len(), 6);
    }
}
