//! Helpers shared by the CLI stress tests.

use std::fs;
use std::path::Path;

/// Deterministic xorshift generator (tests must reproduce).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Names of the hidden (dot) files in `dir`, sorted: fwdelta's partial,
/// checkpoint and journal files are all hidden.
pub fn hidden_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}
