//! Helpers shared by the CLI stress tests.
// Each test crate uses some of them.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// Kill-and-resume runs per stress test: `FWDELTA_KILL_RUNS`, default 12.
pub fn kill_runs() -> usize {
    kill_runs_or(12)
}

/// `FWDELTA_KILL_RUNS`, or `default` when it is unset or not a number.
pub fn kill_runs_or(default: usize) -> usize {
    std::env::var("FWDELTA_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A stress test's pair, written to `dir/names.0` and `dir/names.1`: an old
/// image of `len` bytes (every third byte from an xorshift seeded with
/// `seed`, the rest a slow ramp), and a new one with `edits` scattered byte
/// changes and `insert` spliced in at `insert_at`, so the patch has many
/// segments and the apply many checkpoints.
pub fn stress_pair(
    dir: &Path,
    names: (&str, &str),
    len: usize,
    seed: u64,
    edits: usize,
    insert_at: usize,
    insert: Vec<u8>,
) -> (PathBuf, PathBuf) {
    let mut rng = fwdelta_testkit::XorShift::new(seed);
    let old: Vec<u8> = (0..len)
        .map(|i| {
            if i % 3 == 0 {
                rng.next_u64() as u8
            } else {
                (i >> 9) as u8
            }
        })
        .collect();
    let mut new = old.clone();
    for _ in 0..edits {
        let at = (rng.next_u64() % new.len() as u64) as usize;
        new[at] = rng.next_u64() as u8;
    }
    new.splice(insert_at..insert_at, insert);
    let (o, n) = (dir.join(names.0), dir.join(names.1));
    fs::write(&o, old).unwrap();
    fs::write(&n, new).unwrap();
    (o, n)
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

/// [`hidden_files`] without empty lock files (`*.fwdelta-lock`): a process
/// killed after renaming its output into place but before removing its lock
/// file leaves that empty file, which the next update of the output takes
/// over and removes.
pub fn hidden_files_but_stale_locks(dir: &Path) -> Vec<String> {
    hidden_files(dir)
        .into_iter()
        .filter(|n| {
            !(n.ends_with(".fwdelta-lock")
                && fs::symlink_metadata(dir.join(n)).is_ok_and(|m| m.is_file() && m.len() == 0))
        })
        .collect()
}
