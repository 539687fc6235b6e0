//! `fwdelta release` and `fwdelta apply --manifest` end to end, through the
//! binary: a fleet of seven old images (the cortex-m4 test pair's old image
//! and six deterministic mutations of it) released to the pair's new image.
//!
//! Checked: every old image updates to exactly the new image by the
//! manifest; two releases of the same inputs are byte-identical; a release
//! with a deleted or truncated patch and no manifest, rerun, ends
//! byte-identical to a clean one; `max_share` sends terminals to the full
//! image; an old image the manifest does not know gets the full image; a
//! tampered manifest, a swapped patch, a wrong key or an unsigned manifest
//! is refused with its exit code before any output exists; an unknown TOML
//! key is a one-line error.

use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::process::Command;

const EXIT_FAILURE: i32 = 1;
const EXIT_BAD_PATCH: i32 = 3;
const EXIT_WRONG_OLD_IMAGE: i32 = 4;
const EXIT_NOT_AUTHENTIC: i32 = 7;

#[path = "common/release_fixture.rs"]
mod release_fixture;
use release_fixture::*;

fn trust(f: &Fixture, key: &str) -> Vec<std::ffi::OsString> {
    vec!["--trust".into(), f.path(key).into_os_string()]
}

#[test]
fn every_old_image_updates_to_exactly_the_new_image() {
    let f = Fixture::new("");
    let report = f.release("out");
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 8, "seven old images and the full image");
    for j in jobs {
        assert_eq!(j["verified"], true);
        assert_eq!(j["reused"], false);
        assert!(j["diff_seconds"].as_f64().is_some());
    }
    let m = f.manifest("out");
    assert_eq!(m["manifest_version"], 1);
    assert_eq!(m["product"], "acme-t300");
    assert_eq!(m["version"], "2.0.0");
    assert_eq!(m["security_counter"], 7);
    let new = new_image();
    assert_eq!(m["new_image"]["len"], new.len() as u64);
    assert_eq!(
        m["new_image"]["blake3"],
        blake3::hash(&new).to_hex().as_str()
    );
    let olds = m["old_images"].as_object().unwrap();
    assert_eq!(olds.len(), 7);
    let full_len = m["full_image"]["bytes"].as_u64().unwrap();
    for (i, old) in f.olds().iter().enumerate() {
        let bytes = fs::read(old).unwrap();
        let entry = &olds[blake3::hash(&bytes).to_hex().as_str()];
        let version = old.file_stem().unwrap().to_string_lossy();
        assert_eq!(
            entry["version"],
            version.as_ref(),
            "version from the file name"
        );
        // Each delta is far below the full image on these near-identical olds.
        let patch = entry["patch"]["bytes"].as_u64().unwrap();
        assert!(patch * 2 < full_len, "{patch} vs full {full_len}");
        let out = format!("new-{i}");
        let run = f
            .apply(
                "out",
                old,
                &out,
                &[OsStr::new("--trust"), f.path("rel.pub").as_os_str()],
            )
            .ok();
        assert!(
            run.stderr.contains(&format!("is version {version}")),
            "{}",
            run.stderr
        );
        assert_eq!(fs::read(f.path(&out)).unwrap(), new, "{}", old.display());
    }
    // No temporary file is left in the release directory.
    assert!(files(&f.path("out")).keys().all(|n| !n.starts_with('.')));
}

#[test]
fn two_runs_give_byte_identical_directories() {
    let f = Fixture::new("");
    f.release("a");
    f.release("b");
    assert_same_dirs(&f.path("a"), &f.path("b"));
    // 7 deltas, the full image, manifest.json and manifest.sig.
    assert_eq!(files(&f.path("a")).len(), 10);
}

#[test]
fn a_killed_release_rerun_ends_with_the_same_manifest() {
    let f = Fixture::new("");
    f.release("clean");
    f.release("resumed");
    let m = f.manifest("resumed");
    let olds = m["old_images"].as_object().unwrap();
    let mut patches: Vec<String> = olds
        .values()
        .map(|e| e["patch"]["file"].as_str().unwrap().to_string())
        .collect();
    patches.sort();
    let dir = f.path("resumed");
    // As a kill would leave it: one patch and the manifest gone, one
    // patch cut short, one patch's bytes damaged.
    fs::remove_file(dir.join(&patches[0])).unwrap();
    fs::remove_file(dir.join("manifest.json")).unwrap();
    let cut = fs::read(dir.join(&patches[1])).unwrap();
    fs::write(dir.join(&patches[1]), &cut[..cut.len() / 2]).unwrap();
    let mut bad = fs::read(dir.join(&patches[2])).unwrap();
    let at = bad.len() - 5;
    bad[at] ^= 0x40;
    fs::write(dir.join(&patches[2]), &bad).unwrap();
    // A temporary file a killed write left behind.
    fs::write(dir.join(".manifest.json.fwdelta-4242-0.tmp"), b"{\"half").unwrap();
    let report = f.release("resumed");
    assert_same_dirs(&f.path("clean"), &dir);
    let remade: Vec<&str> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["reused"] == false)
        .map(|j| j["patch_file"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = patches[..3].iter().map(String::as_str).collect();
    expected.sort();
    let mut remade = remade;
    remade.sort();
    assert_eq!(
        remade, expected,
        "only the three damaged patches are remade"
    );
}

#[test]
fn deltas_over_max_share_send_terminals_to_the_full_image() {
    let f = Fixture::new("max_share = 0.05\n");
    let report = f.release("out");
    let m = f.manifest("out");
    for e in m["old_images"].as_object().unwrap().values() {
        assert_eq!(e["patch"], Value::Null);
        assert_eq!(e["use_full_image"], true);
    }
    for j in report["jobs"].as_array().unwrap() {
        if j["old_version"].is_null() {
            assert_eq!(j["in_manifest"], true);
        } else {
            assert_eq!(j["in_manifest"], false);
            assert_eq!(j["patch_file"], Value::Null);
        }
    }
    // Only the full image's patch and the manifest are written.
    let names: Vec<String> = files(&f.path("out")).into_keys().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("full-")));
    let old = &f.olds()[3];
    let run = f.apply("out", old, "new", &[]).ok();
    assert!(
        run.stderr.contains("left out as too large"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read(f.path("new")).unwrap(), new_image());
}

#[test]
fn an_old_image_not_in_the_manifest_gets_the_full_image() {
    let f = Fixture::new("");
    f.release("out");
    let stranger = testdata("fw-x86-64/old");
    let run = f
        .apply(
            "out",
            &stranger,
            "new",
            &[OsStr::new("--trust"), f.path("rel.pub").as_os_str()],
        )
        .ok();
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("no entry"))
        .collect();
    assert_eq!(said.len(), 1, "{}", run.stderr);
    assert!(said[0].contains("applying the full image"), "{}", said[0]);
    assert_eq!(fs::read(f.path("new")).unwrap(), new_image());
    // Without a full image in the (unsigned, edited) manifest: refused.
    let mut m = f.manifest("out");
    m["full_image"] = Value::Null;
    fs::write(
        f.path("out/manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let run = f
        .apply("out", &stranger, "new2", &[])
        .error(EXIT_WRONG_OLD_IMAGE);
    assert!(run.stderr.contains("no patch for"), "{}", run.stderr);
    assert!(!f.path("new2").exists());
}

#[test]
fn a_tampered_manifest_or_swapped_patch_is_refused_before_any_output() {
    let f = Fixture::new("");
    f.release("out");
    let manifest = f.path("out/manifest.json");
    let original = fs::read(&manifest).unwrap();
    let old = f.olds()[2].clone();
    let t = trust(&f, "rel.pub");
    let t: Vec<&OsStr> = t.iter().map(|s| s.as_os_str()).collect();
    let refused = |code: i32, extra: &[&OsStr], why: &str| {
        let run = f.apply("out", &old, "new", extra).error(code);
        assert!(!f.path("new").exists(), "{why}: output left behind");
        let hidden: Vec<String> = fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".new"))
            .collect();
        assert!(hidden.is_empty(), "{why}: side files {hidden:?}");
        run
    };
    // One byte flipped (inside a version string, so it still parses).
    let text = String::from_utf8(original.clone()).unwrap();
    let at = text.find("\"2.0.0\"").unwrap() + 1;
    let mut flipped = original.clone();
    flipped[at] = b'3';
    fs::write(&manifest, &flipped).unwrap();
    refused(EXIT_NOT_AUTHENTIC, &t, "flipped byte");
    // An entry changed: this old image pointed at another image's patch.
    let mut m: Value = serde_json::from_slice(&original).unwrap();
    let key = blake3::hash(&fs::read(&old).unwrap()).to_hex().to_string();
    let other = m["old_images"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| **k != key)
        .map(|(_, v)| v["patch"].clone())
        .unwrap();
    m["old_images"][&key]["patch"] = other;
    fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    refused(EXIT_NOT_AUTHENTIC, &t, "changed entry");
    // Unverified (no --trust), that patch is for another old image.
    refused(4, &[], "changed entry, no trust");
    // The manifest intact, its patch file swapped for another one.
    fs::write(&manifest, &original).unwrap();
    let mine = m["old_images"][&key]["patch"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let orig: Value = serde_json::from_slice(&original).unwrap();
    let mine_file = orig["old_images"][&key]["patch"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(mine, mine_file);
    let keep = fs::read(f.path("out").join(&mine_file)).unwrap();
    fs::copy(f.path("out").join(&mine), f.path("out").join(&mine_file)).unwrap();
    let run = refused(EXIT_BAD_PATCH, &t, "swapped patch");
    assert!(
        run.stderr.contains("does not match the manifest"),
        "{}",
        run.stderr
    );
    refused(EXIT_BAD_PATCH, &[], "swapped patch, no trust");
    // Restored, it applies.
    fs::write(f.path("out").join(&mine_file), keep).unwrap();
    f.apply("out", &old, "new", &t).ok();
    assert_eq!(fs::read(f.path("new")).unwrap(), new_image());
}

#[test]
fn an_unknown_key_in_the_description_is_a_one_line_error() {
    let f = Fixture::new("[diff]\nlevle = 3\n");
    let run = f.release_run("out").error(EXIT_FAILURE);
    assert!(
        run.stderr
            .contains("release.toml:8:1: unknown field `levle`"),
        "{}",
        run.stderr
    );
    assert!(!f.path("out").join("manifest.json").exists());
    let f = Fixture::new("colour = \"red\"\n");
    let run = f.release_run("out").error(EXIT_FAILURE);
    assert!(
        run.stderr.contains("unknown field `colour`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_signed_manifest_verifies_with_its_key_only() {
    let f = Fixture::new("");
    f.release("out");
    let old = f.olds()[1].clone();
    let sig = fs::read_to_string(f.path("out/manifest.sig")).unwrap();
    assert!(sig.starts_with("fwdelta-manifest-signature-v1 "), "{sig}");
    let wrong = trust(&f, "other.pub");
    let wrong: Vec<&OsStr> = wrong.iter().map(|s| s.as_os_str()).collect();
    let run = f
        .apply("out", &old, "new", &wrong)
        .error(EXIT_NOT_AUTHENTIC);
    assert!(
        run.stderr.contains("not signed by a trusted key"),
        "{}",
        run.stderr
    );
    assert!(!f.path("new").exists());
    let right = trust(&f, "rel.pub");
    let right: Vec<&OsStr> = right.iter().map(|s| s.as_os_str()).collect();
    f.apply("out", &old, "new", &right).ok();
    assert_eq!(fs::read(f.path("new")).unwrap(), new_image());
    // A device that trusts the key takes it, and records the update.
    let dev = f.path("device");
    f.device_init(&dev, "1.1.0", 3);
    f.apply(
        "out",
        &old,
        "new-dev",
        &[OsStr::new("--device"), dev.as_os_str()],
    )
    .ok();
    assert_eq!(fs::read(f.path("new-dev")).unwrap(), new_image());
    // Without manifest.sig the device (and --trust) refuse it.
    fs::remove_file(f.path("out/manifest.sig")).unwrap();
    let run = f
        .apply(
            "out",
            &old,
            "new-dev2",
            &[OsStr::new("--device"), dev.as_os_str()],
        )
        .error(EXIT_NOT_AUTHENTIC);
    assert!(run.stderr.contains("not signed"), "{}", run.stderr);
    f.apply("out", &old, "new-dev2", &right)
        .error(EXIT_NOT_AUTHENTIC);
    assert!(!f.path("new-dev2").exists());
}

#[test]
fn an_unsigned_release_has_no_signature_and_is_refused_under_trust() {
    let f = Fixture::with_keys("", false);
    f.release("out");
    assert!(!f.path("out/manifest.sig").exists());
    let old = f.olds()[0].clone();
    f.apply("out", &old, "new", &[]).ok();
    assert_eq!(fs::read(f.path("new")).unwrap(), new_image());
    let t = trust(&f, "rel.pub");
    let t: Vec<&OsStr> = t.iter().map(|s| s.as_os_str()).collect();
    f.apply("out", &old, "new2", &t).error(EXIT_NOT_AUTHENTIC);
    assert!(!f.path("new2").exists());
}

#[test]
fn without_a_terminal_stderr_has_plain_lines_and_no_progress_bar() {
    let f = Fixture::new("");
    let run = f.release_run("out").ok();
    assert!(
        !run.stderr.contains('\x1b') && !run.stderr.contains('\r'),
        "terminal control codes on a pipe: {:?}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "stdout without --json: {}",
        run.stdout
    );
    // One line per job and a summary.
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 9, "{}", run.stderr);
    assert!(lines[8].contains("7 old image(s), 7 patch(es), 0 to the full image, signed"));
}

#[test]
fn a_release_killed_at_any_moment_and_rerun_equals_a_clean_one() {
    let f = Fixture::new("");
    f.release("clean");
    // Kill a run after a varying delay (somewhere between the first job and
    // the manifest), rerun, compare.
    let mut interrupted = 0;
    for (i, ms) in [30u64, 150, 400].into_iter().enumerate() {
        let out = format!("killed-{i}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
            .args([
                OsStr::new("release"),
                f.path("release.toml").as_os_str(),
                OsStr::new("-o"),
                f.path(&out).as_os_str(),
                OsStr::new("-q"),
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        // A second run while nothing else holds the directory finishes it.
        f.release(&out);
        assert_same_dirs(&f.path("clean"), &f.path(&out));
    }
    assert!(interrupted > 0, "no run was killed before it finished");
}

#[test]
fn two_releases_cannot_write_one_directory_at_once() {
    use std::os::unix::io::AsRawFd;
    let f = Fixture::new("");
    fs::create_dir(f.path("out")).unwrap();
    let held = fs::File::open(f.path("out")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let run = f.release_run("out").error(EXIT_FAILURE);
    assert!(run.stderr.contains("is locked"), "{}", run.stderr);
    assert!(files(&f.path("out")).is_empty());
}
