//! The address map of an executable-aware patch: where the generator expects
//! each old-image offset to land in the new image, as a piecewise-constant shift.
//!
//! The map is a list of runs `(start, shift)` sorted by `start`, the first at 0:
//! an old offset `x` in the run starting at `s` maps to `x + shift`. The
//! reference rewriter ([`crate::reference_rewriter`]) uses it to predict how a
//! branch or load moved by an insertion will read in the new image.
//!
//! Wire form (the value of the `EXT_CODE_REFS` header extension after its
//! architecture byte): a varint run count, then per run the varint gap from the
//! previous run's start (the first run's gap is 0) and the zig-zag varint change
//! of shift from the previous run (the first from 0).

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::varint::{get_i64, get_u64, put_i64, put_u64};
use crate::MAX_IMAGE_LEN;

/// Most runs a map may have. Bounds the applier's memory for the map to
/// 16 bytes per run, 256 KiB in all.
pub const MAX_MAP_RUNS: usize = 16384;

/// A piecewise-constant old-to-new offset shift. Cost: 16 bytes per run;
/// [`AddressMap::map`] is a binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressMap {
    starts: Vec<u64>,
    shifts: Vec<i64>,
}

impl Default for AddressMap {
    fn default() -> Self {
        Self::identity()
    }
}

fn bad(detail: String) -> FormatError {
    FormatError::BadField {
        field: "address map",
        detail,
    }
}

impl AddressMap {
    /// The map that moves nothing (one run, shift 0).
    pub fn identity() -> Self {
        AddressMap {
            starts: vec![0],
            shifts: vec![0],
        }
    }

    /// Build a map from runs `(start, shift)`. The runs must be strictly
    /// increasing in `start`, the first at 0, at most [`MAX_MAP_RUNS`] of them,
    /// each start inside `0..old_len` (or 0) and each shift at most
    /// [`MAX_IMAGE_LEN`] in size. Adjacent runs with equal shifts are merged.
    pub fn from_runs(runs: &[(u64, i64)], old_len: u64) -> Result<Self, FormatError> {
        let mut starts = Vec::with_capacity(runs.len().min(MAX_MAP_RUNS));
        let mut shifts = Vec::with_capacity(runs.len().min(MAX_MAP_RUNS));
        for (i, &(start, shift)) in runs.iter().enumerate() {
            if i == 0 && start != 0 {
                return Err(bad("the first run does not start at 0".into()));
            }
            if i > 0 && (start <= starts[starts.len() - 1] || start >= old_len) {
                return Err(bad(format!(
                    "run {i} starts at {start}, out of order or past the image"
                )));
            }
            if shift.unsigned_abs() > MAX_IMAGE_LEN {
                return Err(bad(format!("run {i} shifts by {shift}")));
            }
            if shifts.last() == Some(&shift) {
                continue;
            }
            if starts.len() == MAX_MAP_RUNS {
                return Err(bad(format!("more than {MAX_MAP_RUNS} runs")));
            }
            starts.push(start);
            shifts.push(shift);
        }
        if starts.is_empty() {
            return Ok(Self::identity());
        }
        Ok(AddressMap { starts, shifts })
    }

    /// Number of runs.
    pub fn runs(&self) -> usize {
        self.starts.len()
    }

    /// The runs as `(start, shift)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.starts.iter().copied().zip(self.shifts.iter().copied())
    }

    /// Whether the map moves nothing.
    pub fn is_identity(&self) -> bool {
        self.shifts.iter().all(|&s| s == 0)
    }

    /// Shift of the run holding old offset `x`.
    pub fn shift_at(&self, x: u64) -> i64 {
        let i = self.starts.partition_point(|&s| s <= x);
        // starts[0] == 0, so i >= 1.
        self.shifts[i.saturating_sub(1)]
    }

    /// Where old offset `x` is expected in the new image.
    pub fn map(&self, x: u64) -> i64 {
        x as i64 + self.shift_at(x)
    }

    /// Append the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.starts.len() as u64);
        let (mut prev_start, mut prev_shift) = (0u64, 0i64);
        for (start, shift) in self.iter() {
            put_u64(out, start - prev_start);
            put_i64(out, shift - prev_shift);
            prev_start = start;
            prev_shift = shift;
        }
    }

    /// Parse the wire form, which must fill `bytes` exactly, validating it as
    /// [`Self::from_runs`] does. Allocation is bounded by the smaller of the run
    /// count and what `bytes` can hold (two bytes per run at least).
    pub fn decode(bytes: &[u8], old_len: u64) -> Result<Self, FormatError> {
        let truncated = || bad("truncated".into());
        let (count, mut at) = get_u64(bytes)?.ok_or_else(truncated)?;
        if count == 0 || count > MAX_MAP_RUNS as u64 || count > (bytes.len() / 2) as u64 {
            return Err(bad(format!("{count} runs in {} bytes", bytes.len())));
        }
        let mut runs = Vec::with_capacity(count as usize);
        let (mut start, mut shift) = (0u64, 0i64);
        for _ in 0..count {
            let (gap, n) = get_u64(&bytes[at..])?.ok_or_else(truncated)?;
            at += n;
            let (change, n) = get_i64(&bytes[at..])?.ok_or_else(truncated)?;
            at += n;
            start = start
                .checked_add(gap)
                .ok_or_else(|| bad("run start overflows".into()))?;
            shift = shift
                .checked_add(change)
                .ok_or_else(|| bad("shift overflows".into()))?;
            runs.push((start, shift));
        }
        if at != bytes.len() {
            return Err(bad("trailing bytes".into()));
        }
        let map = Self::from_runs(&runs, old_len)?;
        if map.runs() != runs.len() {
            return Err(bad("adjacent runs with equal shifts".into()));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lookups() {
        let m = AddressMap::from_runs(&[(0, 0), (100, 8), (200, -4)], 1000).unwrap();
        assert_eq!(m.map(0), 0);
        assert_eq!(m.map(99), 99);
        assert_eq!(m.map(100), 108);
        assert_eq!(m.map(199), 207);
        assert_eq!(m.map(200), 196);
        assert_eq!(m.map(999), 995);
        assert!(!m.is_identity());
        assert!(AddressMap::identity().is_identity());
    }

    #[test]
    fn refuses_bad_runs() {
        assert!(AddressMap::from_runs(&[(5, 0)], 10).is_err());
        assert!(AddressMap::from_runs(&[(0, 0), (4, 1), (4, 2)], 10).is_err());
        assert!(AddressMap::from_runs(&[(0, 0), (10, 1)], 10).is_err());
        assert!(AddressMap::from_runs(&[(0, i64::MAX)], 10).is_err());
        // equal neighbours merge
        let m = AddressMap::from_runs(&[(0, 3), (4, 3), (6, 1)], 10).unwrap();
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(0, 3), (6, 1)]);
    }

    #[test]
    fn decode_refuses_hostile_bytes() {
        // huge count in few bytes: refused before allocating
        let mut b = Vec::new();
        put_u64(&mut b, u64::MAX);
        assert!(AddressMap::decode(&b, 100).is_err());
        assert!(AddressMap::decode(&[], 100).is_err());
        // trailing byte
        let mut b = Vec::new();
        AddressMap::identity().encode(&mut b);
        b.push(0);
        assert!(AddressMap::decode(&b, 100).is_err());
        // unmerged equal runs are not canonical
        let b = [2u8, 0, 2, 5, 0];
        assert!(AddressMap::decode(&b, 100).is_err());
    }

    proptest! {
        #[test]
        fn wire_round_trip(gaps in proptest::collection::vec((1u64..5000, -100_000i64..100_000), 0..200)) {
            let mut runs = vec![(0u64, 7i64)];
            let mut at = 0;
            for (g, s) in gaps {
                at += g;
                runs.push((at, s));
            }
            let m = AddressMap::from_runs(&runs, at + 1).unwrap();
            let mut b = Vec::new();
            m.encode(&mut b);
            prop_assert_eq!(AddressMap::decode(&b, at + 1).unwrap(), m.clone());
            for cut in 0..b.len() {
                prop_assert!(AddressMap::decode(&b[..cut], at + 1).is_err());
            }
        }
    }
}
