//! The address mapper: derives an executable-aware patch's [`AddressMap`]
//! (where each old offset is expected in the new image) from a first edit
//! script, by reading each long enough match as "this old range moved here".

use crate::matcher::Op;
use fwdelta_format::address_map::{AddressMap, MAX_MAP_RUNS};

/// Matches shorter than this say little about how code moved.
pub const MIN_EVIDENCE: u64 = 64;

/// Build a map from `ops` (which tile the new image) over an old image of
/// `old_len` bytes, keeping at most `max_runs` runs (the longest). Where
/// matches overlap in the old image, the longer one wins; old bytes no match
/// uses (deleted code) take the shift of the run before them.
///
/// Cost: O(m log m) for m matches, 40 bytes per match.
pub fn build_map(ops: &[Op], old_len: u64, max_runs: usize) -> AddressMap {
    let max_runs = max_runs.clamp(1, MAX_MAP_RUNS);
    // (old start, old end, shift)
    let mut eqs: Vec<(u64, u64, i64)> = Vec::new();
    let mut at = 0u64;
    for op in ops {
        if op.diff_len >= MIN_EVIDENCE {
            eqs.push((op.old_start, op.old_end(), at as i64 - op.old_start as i64));
        }
        at += op.len();
    }
    eqs.sort_unstable_by_key(|e| e.0);
    let mut runs: Vec<(u64, u64, i64)> = Vec::with_capacity(eqs.len());
    for (s, e, shift) in eqs {
        match runs.last_mut() {
            Some(last) if s < last.1 => {
                // an earlier split may have moved `last` past `s`
                let s = s.max(last.0);
                if e <= s {
                    continue;
                }
                if e - s > last.1 - last.0 {
                    last.1 = s;
                    if last.0 == last.1 {
                        runs.pop();
                    }
                    runs.push((s, e, shift));
                } else if e > last.1 {
                    let from = last.1;
                    runs.push((from, e, shift));
                }
            }
            _ => runs.push((s, e, shift)),
        }
    }
    if runs.len() > max_runs {
        runs.sort_unstable_by_key(|r| std::cmp::Reverse(r.1 - r.0));
        runs.truncate(max_runs);
        runs.sort_unstable_by_key(|r| r.0);
    }
    let mut wire: Vec<(u64, i64)> = runs.iter().map(|r| (r.0, r.2)).collect();
    if let Some(first) = wire.first_mut() {
        first.0 = 0;
    }
    AddressMap::from_runs(&wire, old_len).unwrap_or_default()
}

/// As [`build_map`], with as many runs as fit `max_bytes` of wire form
/// (starting from [`MAX_MAP_RUNS`] and dropping the shortest quarter until
/// it fits).
pub fn build_map_fitting(ops: &[Op], old_len: u64, max_bytes: usize) -> AddressMap {
    let mut runs = MAX_MAP_RUNS;
    loop {
        let map = build_map(ops, old_len, runs);
        let mut wire = Vec::new();
        map.encode(&mut wire);
        if wire.len() <= max_bytes || runs == 1 {
            return map;
        }
        runs = runs * 3 / 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insertion_gives_two_runs() {
        // new = old[0..1000] + 100 inserted bytes + old[1000..3000]
        let ops = [
            Op {
                old_start: 0,
                diff_len: 1000,
                literal_len: 100,
            },
            Op {
                old_start: 1000,
                diff_len: 2000,
                literal_len: 0,
            },
        ];
        let m = build_map(&ops, 3000, 100);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(0, 0), (1000, 100)]);
        assert_eq!(m.map(2999), 3099);
    }

    #[test]
    fn keeps_the_longest_runs() {
        let mut ops = Vec::new();
        for k in 0..10u64 {
            ops.push(Op {
                old_start: k * 1000,
                diff_len: 100 + k * 10,
                literal_len: k + 1,
            });
        }
        let m = build_map(&ops, 10_000, 3);
        assert_eq!(m.runs(), 3);
        let starts: Vec<u64> = m.iter().map(|r| r.0).collect();
        assert_eq!(starts, vec![0, 8000, 9000]);
    }
}
