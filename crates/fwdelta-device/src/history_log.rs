//! The update history (`history.log`): append-only, one entry a line, each
//! line `JSON TAB check NEWLINE` where the check is the first 8 bytes (hex) of
//! the JSON's BLAKE3. A power cut can only tear the last line: a reader skips
//! any line whose check fails (and counts it), the entries before it are
//! intact, and the next append starts on a fresh line.

use crate::safe_file;
use serde_json::Value;
use std::io;
use std::path::Path;

/// A decoded history, oldest entry first.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Intact entries, in order.
    pub entries: Vec<Value>,
    /// Lines skipped because they were torn or damaged.
    pub skipped: usize,
}

fn check(json: &str) -> String {
    blake3::hash(json.as_bytes()).to_hex()[..16].to_owned()
}

/// Parse a history file's bytes.
pub fn parse(bytes: &[u8]) -> History {
    let mut h = History::default();
    for line in bytes.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let entry = std::str::from_utf8(line).ok().and_then(|l| {
            let (json, c) = l.rsplit_once('\t')?;
            (check(json) == c).then(|| serde_json::from_str::<Value>(json).ok())?
        });
        match entry {
            Some(v) if v.is_object() => h.entries.push(v),
            _ => h.skipped += 1,
        }
    }
    // A final line without its newline is torn even if its check passed
    // (it could not have been synced as complete): it is still counted as
    // an entry here, since its check proves every byte of it arrived.
    h
}

/// Read the history at `path` (missing: empty).
pub fn read(path: &Path) -> io::Result<History> {
    match safe_file::read(path) {
        Ok(b) => Ok(parse(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(History::default()),
        Err(e) => Err(e),
    }
}

/// Append `entry` to the history at `path` and sync it, unless the last
/// intact entry already is `entry` except for its time (a rerun after a
/// power cut records an event once). A torn last line is closed with a
/// newline first, so it stays one skipped line.
pub fn append(path: &Path, entry: &Value) -> io::Result<()> {
    let existing = match safe_file::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let history = parse(&existing);
    if let Some(last) = history.entries.last() {
        if same_event(last, entry) {
            return Ok(());
        }
    }
    let json = entry.to_string();
    let mut line = String::new();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        line.push('\n');
    }
    line.push_str(&json);
    line.push('\t');
    line.push_str(&check(&json));
    line.push('\n');
    safe_file::append(path, line.as_bytes()).map(|_| ())
}

/// Whether two entries record the same event (all fields but the times
/// and measurements equal).
fn same_event(a: &Value, b: &Value) -> bool {
    const VARYING: [&str; 6] = [
        "time",
        "duration_ms",
        "bytes_read",
        "bytes_written",
        "resumed",
        "already_applied",
    ];
    // Only outcomes a rerun repeats are folded; every refusal is recorded.
    if !matches!(
        a["event"].as_str(),
        Some("applied" | "confirmed" | "rolled-back")
    ) {
        return false;
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for k in VARYING {
                o.remove(k);
            }
        }
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_torn_tail_at_every_byte_keeps_the_entries_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.log");
        let entries: Vec<Value> = (0..3)
            .map(|i| json!({"event": "applied", "n": i}))
            .collect();
        for e in &entries {
            append(&path, e).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        let two = full
            .iter()
            .take(full.len() - 1)
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        for cut in two..full.len() {
            let torn = &full[..cut];
            let h = parse(torn);
            // the last entry is either gone (torn) or whole (cut at its newline)
            let whole = cut == full.len() - 1;
            assert_eq!(h.entries.len(), if whole { 3 } else { 2 }, "cut {cut}");
            assert_eq!(h.entries[..2], entries[..2]);
            assert_eq!(h.skipped, usize::from(cut > two && !whole));
            // and the next append is intact after it
            std::fs::write(&path, torn).unwrap();
            let next = json!({"event": "confirmed"});
            append(&path, &next).unwrap();
            let after = read(&path).unwrap();
            assert_eq!(after.entries.last(), Some(&next), "cut {cut}");
            assert_eq!(after.entries[..2], entries[..2]);
        }
    }

    #[test]
    fn damage_inside_a_line_skips_only_that_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.log");
        for i in 0..3 {
            append(&path, &json!({"n": i})).unwrap();
        }
        let mut b = std::fs::read(&path).unwrap();
        let second = b.iter().position(|&c| c == b'\n').unwrap() + 3;
        b[second] ^= 1;
        let h = parse(&b);
        assert_eq!(h.skipped, 1);
        assert_eq!(h.entries, vec![json!({"n": 0}), json!({"n": 2})]);
    }

    #[test]
    fn the_same_event_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.log");
        append(&path, &json!({"event": "applied", "time": 1, "resumed": 0})).unwrap();
        append(&path, &json!({"event": "applied", "time": 2, "resumed": 2})).unwrap();
        append(&path, &json!({"event": "confirmed", "time": 3})).unwrap();
        assert_eq!(read(&path).unwrap().entries.len(), 2);
        // refusals are all recorded, even the same one twice
        append(&path, &json!({"event": "refused", "reason": "x"})).unwrap();
        append(&path, &json!({"event": "refused", "reason": "x"})).unwrap();
        assert_eq!(read(&path).unwrap().entries.len(), 4);
    }
}
