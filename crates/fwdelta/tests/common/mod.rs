//! Helpers shared by the CLI stress tests.
// Each test crate uses some of them.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

/// Kill-and-resume runs per stress test: `FWDELTA_KILL_RUNS`, default 12.
pub fn kill_runs() -> usize {
    std::env::var("FWDELTA_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
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
