//! Inputs shared by the criterion benchmarks in this directory.
//!
//! Run them with `cargo bench -p fwdelta-benches`. They measure the inner loops
//! (matching, segment encoding, applying) on the bundled firmware and on a
//! synthetic multi-MiB image; whole-process comparisons against other tools are
//! `fwdelta bench`'s job.

use std::path::PathBuf;

/// Read `testdata/<pair>/<which>`.
pub fn testdata(pair: &str, which: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "testdata", pair, which]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A synthetic "firmware" of `len` bytes (code-like, deterministic) and a new
/// version with an insertion near the start and scattered small edits.
pub fn synthetic_pair(len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = fwdelta_testkit::XorShift::new(0x9E37_79B9_7F4A_7C15);
    let mut old = Vec::with_capacity(len);
    while old.len() < len {
        let x = rng.next_u64();
        old.extend_from_slice(&[0xf0 | (x as u8 & 7), (x >> 8) as u8 & 0x3f, 0x00, 0xbf]);
    }
    old.truncate(len);
    let mut new = old.clone();
    new.splice(4096..4096, (0..1000u32).map(|i| i as u8));
    for i in (10_000..new.len()).step_by(4099) {
        new[i] = new[i].wrapping_add(1);
    }
    (old, new)
}

#[cfg(test)]
mod tests {
    #[test]
    fn synthetic_pair_differs_but_overlaps() {
        let (old, new) = super::synthetic_pair(100_000);
        assert_eq!(old.len(), 100_000);
        assert_eq!(new.len(), 101_000);
        assert_ne!(old[..], new[..old.len()]);
        assert_eq!(old[..4096], new[..4096]);
    }
}
