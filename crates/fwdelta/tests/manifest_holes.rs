//! Holes an adversarial review found in `apply --manifest` (each test
//! reproduced its hole before the fix): a patch that makes another image
//! than the manifest's new image; `-o` naming the manifest's signature or a
//! file of the device state; a named temp file for the full image's empty
//! old image; a FIFO at a patch's name.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/release_fixture.rs"]
mod release_fixture;
use release_fixture::*;

const EXIT_FAILURE: i32 = 1;
/// The manifest is malformed (README's exit code table).
const EXIT_BAD_MANIFEST: i32 = 19;
const EXIT_BAD_PATCH: i32 = 3;

/// Point the (unsigned, so editable) manifest's entry for `old` at `file`
/// in OUT, with that file's true length and BLAKE3.
fn repoint(f: &Fixture, old: &Path, file: &str) {
    let mut m = f.manifest("out");
    let key = blake3::hash(&fs::read(old).unwrap()).to_hex().to_string();
    let bytes = fs::read(f.path("out").join(file)).unwrap();
    let entry = &mut m["old_images"][&key]["patch"];
    entry["file"] = file.into();
    entry["bytes"] = bytes.len().into();
    entry["blake3"] = blake3::hash(&bytes).to_hex().to_string().into();
    fs::write(
        f.path("out/manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

/// A manifest entry whose file is exactly the bytes it names, but whose
/// patch makes another image (an older signed release of the same product:
/// what a file swapped after the manifest check gives) is refused before
/// any output; it used to install that image and exit 0.
#[test]
fn a_patch_making_another_image_than_the_manifests_is_refused() {
    let f = Fixture::new("");
    f.release("out");
    let old = f.path("fleet/1.0.0.bin");
    let other = f.path("other-new");
    fs::write(&other, mutate(&new_image(), 3)).unwrap();
    fwdelta([
        OsStr::new("diff"),
        old.as_os_str(),
        other.as_os_str(),
        OsStr::new("-o"),
        f.path("out/older.fwd").as_os_str(),
        OsStr::new("--product"),
        OsStr::new("acme-t300"),
        OsStr::new("--version"),
        OsStr::new("1.9.0"),
        OsStr::new("--counter"),
        OsStr::new("7"),
        OsStr::new("--sign"),
        f.path("rel.key").as_os_str(),
        OsStr::new("-q"),
    ])
    .ok();
    repoint(&f, &old, "older.fwd");
    let run = f.apply("out", &old, "new", &[]).error(EXIT_BAD_PATCH);
    assert!(
        run.stderr
            .contains("makes another image than the manifest's"),
        "{}",
        run.stderr
    );
    assert!(!f.path("new").exists());
}

#[test]
fn output_over_the_manifests_signature_is_refused() {
    let f = Fixture::new("");
    f.release("out");
    let sig = fs::read(f.path("out/manifest.sig")).unwrap();
    let run = f
        .apply("out", &f.path("fleet/1.0.0.bin"), "out/manifest.sig", &[])
        .error(EXIT_FAILURE);
    assert!(run.stderr.contains("same file as input"), "{}", run.stderr);
    assert_eq!(fs::read(f.path("out/manifest.sig")).unwrap(), sig);
}

#[test]
fn output_inside_the_device_directory_is_refused() {
    let f = Fixture::new("");
    f.release("out");
    let dev = f.path("dev");
    f.device_init(&dev, "1.0.0", 6);
    let before = files(&dev);
    let old = f.path("fleet/1.0.0.bin");
    for target in ["dev/state.json", "dev/history.log", "dev/new.bin"] {
        let run = f
            .apply(
                "out",
                &old,
                target,
                &[OsStr::new("--device"), dev.as_os_str()],
            )
            .error(EXIT_FAILURE);
        assert!(
            run.stderr.contains("inside the device state directory"),
            "{target}: {}",
            run.stderr
        );
        assert_eq!(files(&dev), before, "{target}: device state changed");
    }
    // Without --manifest too.
    let patch = f.manifest("out")["full_image"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let run = fwdelta([
        OsStr::new("apply"),
        old.as_os_str(),
        f.path("out").join(patch).as_os_str(),
        OsStr::new("-o"),
        f.path("dev/state.json").as_os_str(),
        OsStr::new("--device"),
        dev.as_os_str(),
    ])
    .error(EXIT_FAILURE);
    assert!(run.stderr.contains("inside the device state directory"));
    assert_eq!(files(&dev), before);
}

/// The full image's empty old image leaves nothing in TMPDIR and needs no
/// writable TMPDIR.
#[test]
fn the_full_image_fallback_uses_no_named_temp_file() {
    let f = Fixture::new("");
    f.release("out");
    let stranger = testdata("fw-x86-64/old");
    let tmp = f.path("tmp");
    fs::create_dir(&tmp).unwrap();
    for (tmpdir, new) in [(tmp.clone(), "new"), (f.path("missing"), "new2")] {
        let mut args: Vec<std::ffi::OsString> = vec!["apply".into(), "--manifest".into()];
        args.push(f.path("out/manifest.json").into());
        args.push(stranger.clone().into());
        args.push("-o".into());
        args.push(f.path(new).into());
        let out = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
            .args(&args)
            .env("TMPDIR", &tmpdir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "TMPDIR={}: {}",
            tmpdir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(f.path(new)).unwrap(), new_image());
    }
    assert!(
        files(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        files(&tmp).keys()
    );
}

/// Run `fwdelta ARGS`; fail the test if it has not ended after 20 s (a read
/// that blocks on a FIFO, or one that never ends). Returns its exit status
/// and stderr.
fn run_within_20s(args: &[&OsStr]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("fwdelta {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// A FIFO at the patch's name is refused at once, not read forever.
#[test]
fn a_fifo_at_the_patch_name_is_refused_at_once() {
    let f = Fixture::new("");
    f.release("out");
    let old = f.path("fleet/1.0.0.bin");
    let key = blake3::hash(&fs::read(&old).unwrap()).to_hex().to_string();
    let file = f.manifest("out")["old_images"][&key]["patch"]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let at = f.path("out").join(&file);
    fs::remove_file(&at).unwrap();
    let made = Command::new("mkfifo").arg(&at).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let (status, _) = run_within_20s(&[
        OsStr::new("apply"),
        OsStr::new("--manifest"),
        f.path("out/manifest.json").as_os_str(),
        old.as_os_str(),
        OsStr::new("-o"),
        f.path("new").as_os_str(),
    ]);
    assert_eq!(status.code(), Some(EXIT_FAILURE));
    assert!(!f.path("new").exists());
}

/// Control characters in a manifest (an old image's version, the release's)
/// never reach the terminal: the manifest is refused as malformed, in one
/// line. Before, `"\u001b[2J\nfwdelta: all good"` was printed raw.
#[test]
fn control_characters_in_a_manifest_are_refused_in_one_line() {
    let f = Fixture::new("");
    f.release("out");
    let old = f.path("fleet/1.0.0.bin");
    let key = blake3::hash(&fs::read(&old).unwrap()).to_hex().to_string();
    let good = f.manifest("out");
    for which in ["entry", "release"] {
        let mut m = good.clone();
        let evil = "\u{1b}[2J\nfwdelta: all good";
        match which {
            "entry" => m["old_images"][&key]["version"] = evil.into(),
            _ => m["version"] = evil.into(),
        }
        fs::write(
            f.path("out/manifest.json"),
            serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
        let run = f.apply("out", &old, "new", &[]).error(EXIT_BAD_MANIFEST);
        assert!(!run.stderr.contains('\u{1b}'), "{which}: {:?}", run.stderr);
        assert!(
            run.stderr.contains("malformed manifest"),
            "{which}: {}",
            run.stderr
        );
        assert!(!f.path("new").exists());
    }
}

/// An error naming untrusted text (here a description file's unknown key
/// with an escape sequence and a newline in it) is still one line, with
/// the control characters shown escaped.
#[test]
fn an_error_quoting_control_characters_stays_one_line() {
    let f = Fixture::new("\"evil\\u001b[2J\\nkey\" = 1\n");
    let run = f.release_run("out").error(EXIT_FAILURE);
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
    assert!(run.stderr.contains("evil\\u{1b}"), "{:?}", run.stderr);
}

/// A signature file that is a directory is a bad signature: exit 7 (not
/// authentic), like every other damaged signature file, not exit 1.
#[test]
fn a_signature_file_that_is_a_directory_is_not_authentic() {
    let f = Fixture::new("");
    f.release("out");
    fs::remove_file(f.path("out/manifest.sig")).unwrap();
    fs::create_dir(f.path("out/manifest.sig")).unwrap();
    let run = f
        .apply(
            "out",
            &f.path("fleet/1.0.0.bin"),
            "new",
            &[OsStr::new("--trust"), f.path("rel.pub").as_os_str()],
        )
        .error(7);
    assert!(run.stderr.contains("signature"), "{}", run.stderr);
    assert!(!f.path("new").exists());
}

/// An old image that is a FIFO or an endless character device is refused at
/// once, before the manifest picks a patch: it used to be hashed by reading
/// it to its end (forever, for `/dev/zero`; blocked, for a FIFO).
#[test]
fn an_old_image_that_is_not_a_file_is_refused_at_once() {
    let f = Fixture::new("");
    f.release("out");
    let fifo = f.path("old.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    for old in [fifo.as_path(), Path::new("/dev/zero")] {
        let (status, stderr) = run_within_20s(&[
            OsStr::new("apply"),
            OsStr::new("--manifest"),
            f.path("out/manifest.json").as_os_str(),
            old.as_os_str(),
            OsStr::new("-o"),
            f.path("new").as_os_str(),
        ]);
        assert_eq!(
            status.code(),
            Some(EXIT_FAILURE),
            "{}: {stderr}",
            old.display()
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("not a regular file or block device"),
            "{stderr}"
        );
        assert!(!f.path("new").exists());
    }
}

/// A device records every update it refuses; a manifest it refused (here a
/// manifest edited after it was signed) was refused without a trace.
#[test]
fn a_refused_manifest_is_recorded_in_the_device_history() {
    let f = Fixture::new("");
    f.release("out");
    let dev = f.path("dev");
    f.device_init(&dev, "1.0.0", 6);
    let state = fs::read(dev.join("state.json")).unwrap();
    let mut m = f.manifest("out");
    m["version"] = "9.9.9".into();
    fs::write(
        f.path("out/manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let before = device_history(&dev).len();
    let old = f.path("fleet/1.0.0.bin");
    let run = f.apply(
        "out",
        &old,
        "new",
        &[OsStr::new("--device"), dev.as_os_str()],
    );
    let code = run.code;
    assert_ne!(code, 0, "{}", run.stderr);
    assert!(!f.path("new").exists());
    let h = device_history(&dev);
    assert_eq!(h.len(), before + 1, "{h:?}");
    let last = &h[h.len() - 1];
    assert_eq!(last["event"], "refused", "{last}");
    assert_eq!(last["exit_code"], code, "{last}");
    assert!(
        last["manifest"]
            .as_str()
            .unwrap()
            .ends_with("manifest.json"),
        "{last}"
    );
    assert!(
        last["reason"].as_str().unwrap().contains("manifest"),
        "{last}"
    );
    // Only the history changed.
    assert_eq!(fs::read(dev.join("state.json")).unwrap(), state);
}
