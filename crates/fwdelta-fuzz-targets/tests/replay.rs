//! Replay every committed fuzz corpus file (`fuzz/corpus/<target>/`) through
//! its target function, so CI runs the corpora without a fuzzer installed.
//! Any input that once crashed a target stays here as a regression test.

use fwdelta_fuzz_targets::TARGETS;
use std::path::Path;

#[test]
fn replay_committed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 10,
            "{name}: only {} corpus files",
            files.len()
        );
        for f in &files {
            let data = std::fs::read(f).unwrap();
            target(&data);
        }
        eprintln!("{name}: replayed {} inputs", files.len());
    }
}

#[test]
fn structured_target_accepts_and_refuses() {
    // The structured target must reach both verdicts on plain noise inputs,
    // or it is not testing anything.
    let mut rng = fwdelta_testkit::XorShift::new(0x1234_5678_9abc_def1);
    let mut inputs = Vec::new();
    for len in [64usize, 200, 500, 1000, 3000] {
        for _ in 0..20 {
            inputs.push(rng.bytes(len));
        }
    }
    for i in &inputs {
        fwdelta_fuzz_targets::apply_structured(i);
    }
    let (ok, refused) = fwdelta_fuzz_targets::structured_verdicts(&inputs);
    assert!(
        ok > 0 && refused > 0,
        "structured target: {ok} accepted, {refused} refused"
    );
}
