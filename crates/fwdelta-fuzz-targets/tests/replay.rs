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

/// The seeds `make_seeds` writes as valid patches (every name without a
/// `-cut` or `-flipped` damage suffix) must still apply: a format change
/// that is not followed by regenerating the seeds would otherwise leave the
/// fuzzers starting from inputs every applier refuses at the header.
#[test]
fn valid_seeds_still_apply() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let opts = fwdelta_apply::ApplyOptions::default()
        .with_memory_limit(8 << 20)
        .with_max_new_len(1 << 24);
    let mut applied = 0;
    for target in ["apply_pull", "apply_push", "apply_in_place"] {
        for entry in std::fs::read_dir(root.join(target)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let (stem, kind) = name.rsplit_once('-').unwrap_or((&name, ""));
            let data = std::fs::read(&path).unwrap();
            // apply_push inputs open with a byte that picks the push sizes.
            let patch = if target == "apply_push" {
                &data[1..]
            } else {
                &data[..]
            };
            let result = match kind {
                "one" | "many" | "modelled" => {
                    fwdelta_apply::apply(fwdelta_fuzz_targets::OLD, patch, Vec::new(), opts.clone())
                        .map(|_| ())
                }
                "signed" => {
                    let key =
                        ed25519_dalek::SigningKey::from_bytes(&fwdelta_fuzz_targets::TRUSTED_SEED);
                    let mut o = opts.clone();
                    let mut policy =
                        fwdelta_apply::TrustPolicy::trusting(vec![key.verifying_key().to_bytes()]);
                    policy.product = Some("fuzz-t1".into());
                    o.policy = Some(std::sync::Arc::new(policy));
                    if target == "apply_in_place" {
                        let region =
                            fwdelta_apply::MemRegion::new(fwdelta_fuzz_targets::OLD.to_vec());
                        fwdelta_apply::apply_in_place(&region, std::io::Cursor::new(patch), o)
                            .map(|_| ())
                    } else {
                        fwdelta_apply::apply(fwdelta_fuzz_targets::OLD, patch, Vec::new(), o)
                            .map(|_| ())
                    }
                }
                "cell12" | "cell14" => {
                    let region = fwdelta_apply::MemRegion::new(fwdelta_fuzz_targets::OLD.to_vec());
                    fwdelta_apply::apply_in_place(
                        &region,
                        std::io::Cursor::new(patch),
                        opts.clone(),
                    )
                    .map(|_| ())
                }
                _ => continue,
            };
            result.unwrap_or_else(|e| panic!("{target}/{name} ({stem}): {e}"));
            applied += 1;
        }
    }
    assert!(applied >= 40, "only {applied} valid seeds found");
}

/// The journal seeds are real power-cut states of the fixture's update, some
/// with one slot damaged: every one must resume to the new image, and the
/// journal target must also see refusals (noise, both slots damaged), or it
/// is not testing the A/B choice.
#[test]
fn journal_seeds_resume_and_damage_is_survived() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/in_place_journal");
    let mut resumed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // The journals a power cut leaves (`cut-NN`, one slot damaged:
        // `cut-NN-flipped`) must resume; the inputs the fuzzer added (named
        // by their hash: any slot bytes, often both slots noise) only have
        // to keep the target's rules, which `replay_committed_corpora`
        // checks.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("cut-") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        assert!(
            fwdelta_fuzz_targets::journal_resumes(&data),
            "{}: did not reach the new image",
            path.display()
        );
        resumed += 1;
    }
    assert!(resumed >= 10, "only {resumed} journal seeds");
    // A half-written region (two cells new) with both slots noise: lost.
    let mut noise = vec![2u8, 50, 0];
    noise.extend(fwdelta_testkit::noise(5, 300));
    assert!(!fwdelta_fuzz_targets::journal_resumes(&noise));
}
