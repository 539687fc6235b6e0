//! Power-loss stress of `fwdelta apply --device`: the update is killed with
//! SIGKILL at random moments (while it checks the policy, marks the update in
//! progress, writes the image, records it in the history or marks it awaiting
//! confirmation), rerun until it succeeds, and must always end with the exact
//! new image, exactly one "applied" history entry, the security counter
//! untouched until `confirm`, and nothing left behind in the output or the
//! state directory.
//!
//! Kill moments are seeded fractions of one uninterrupted apply measured
//! first, so they land inside the apply on fast and slow machines alike.
//! `FWDELTA_KILL_RUNS` sets the number of runs (default here: 100).

mod common;

use common::{hidden_files, kill_runs_or, stress_pair};
use fwdelta_testkit::XorShift;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const PRODUCT: &str = "acme-t300";
const COUNTER: u64 = 4;
const NEW_COUNTER: u64 = 5;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_fwdelta")
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(exe()).args(args).output().unwrap()
}

fn ok(args: &[&std::ffi::OsStr]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "fwdelta {:?} failed: {}",
        args,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A 2 MiB old image and a new one with scattered edits and an insertion,
/// so the patch has many segments and the apply many checkpoints.
fn make_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let insert = fwdelta_testkit::noise(17, 9000);
    stress_pair(
        dir,
        ("old.bin", "new.bin"),
        2 << 20,
        0xD1B5_4A32_D192_ED03,
        30_000,
        4096,
        insert,
    )
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn state_of(dev: &Path) -> Value {
    let text = fs::read_to_string(dev.join("state.json")).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// `fwdelta history --json`: the entries, and what it said on stderr (torn
/// or damaged lines skipped).
fn history(dev: &Path) -> (Vec<Value>, String) {
    let o = ok(&[
        "history".as_ref(),
        "--device".as_ref(),
        dev.as_os_str(),
        "--json".as_ref(),
    ]);
    let entries = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (entries, String::from_utf8_lossy(&o.stderr).into_owned())
}

struct Setup {
    old: PathBuf,
    new_bytes: Vec<u8>,
    old_bytes: Vec<u8>,
    patch: PathBuf,
    public: PathBuf,
    digest: String,
}

impl Setup {
    /// (Re)create the device state directory `dev`.
    fn init(&self, dev: &Path) {
        if dev.exists() {
            fs::remove_dir_all(dev).unwrap();
        }
        let counter = COUNTER.to_string();
        ok(&[
            "device".as_ref(),
            "init".as_ref(),
            dev.as_os_str(),
            "--product".as_ref(),
            PRODUCT.as_ref(),
            "--version".as_ref(),
            "1.0.0".as_ref(),
            "--counter".as_ref(),
            counter.as_ref(),
            "--trust".as_ref(),
            self.public.as_os_str(),
        ]);
    }

    fn apply(&self, dev: &Path, out: &Path) -> Command {
        let mut c = Command::new(exe());
        c.arg("apply")
            .arg("-q")
            .arg("--device")
            .arg(dev)
            .arg(&self.old)
            .arg(&self.patch)
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
}

#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    /// Reruns that found a killed run's partial output beside the output.
    found_partial: usize,
    /// Runs whose "applied" entry says the update was resumed.
    resumed_entries: usize,
}

#[test]
fn sigkill_during_apply_device_always_ends_with_one_applied_update() {
    let runs = kill_runs_or(100);
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = make_pair(dir.path());
    let key = dir.path().join("release");
    ok(&[
        "keygen".as_ref(),
        "-q".as_ref(),
        "-o".as_ref(),
        key.as_os_str(),
    ]);
    let public = dir.path().join("release.pub");
    let secret = dir.path().join("release.key");
    let patch = dir.path().join("update.fwd");
    ok(&[
        "diff".as_ref(),
        "-q".as_ref(),
        "--level".as_ref(),
        "3".as_ref(),
        "--segment-size".as_ref(),
        "4KiB".as_ref(),
        old.as_os_str(),
        new.as_os_str(),
        "-o".as_ref(),
        patch.as_os_str(),
        "--product".as_ref(),
        PRODUCT.as_ref(),
        "--version".as_ref(),
        "2.0.0".as_ref(),
        "--counter".as_ref(),
        NEW_COUNTER.to_string().as_ref(),
        "--sign".as_ref(),
        secret.as_os_str(),
    ]);
    let digest = String::from_utf8(ok(&["digest".as_ref(), patch.as_os_str()]).stdout)
        .unwrap()
        .trim()
        .to_owned();
    let s = Setup {
        old_bytes: fs::read(&old).unwrap(),
        new_bytes: fs::read(&new).unwrap(),
        old,
        patch,
        public,
        digest,
    };
    let info = ok(&["info".as_ref(), "--json".as_ref(), s.patch.as_os_str()]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let segments = info["segments"].as_array().unwrap().len();
    assert!(
        segments >= 8,
        "want many checkpoints, got {segments} segments"
    );

    let dev = dir.path().join("dev");
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("image.bin");

    // One uninterrupted apply sets the time scale.
    s.init(&dev);
    let t = Instant::now();
    let o = s.apply(&dev, &out).output().unwrap();
    let full = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&out).unwrap() == s.new_bytes);

    let mut rng = XorShift::new(0x005E_ED0F_D1E5);
    let mut tally = Tally::default();
    for r in 0..runs {
        fs::remove_file(&out).unwrap();
        s.init(&dev);
        let state0 = fs::read(dev.join("state.json")).unwrap();

        // Kill up to twice in a row, then let it finish.
        let mut done = false;
        for _ in 0..2 {
            if !hidden_files(&out_dir).is_empty() {
                tally.found_partial += 1;
            }
            let mut child = s.apply(&dev, &out).spawn().unwrap();
            // 0..110% of an uninterrupted apply (process start included).
            let frac = (rng.next_u64() % 1100) as u32;
            std::thread::sleep(full * frac / 1000);
            let killed = child.try_wait().unwrap().is_none();
            if killed {
                child.kill().unwrap();
                tally.kills += 1;
            }
            let o = child.wait_with_output().unwrap();
            if !killed {
                assert!(
                    o.status.success(),
                    "run {r}: apply failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                done = true;
                break;
            }
            // The kill may still have come after it finished.
            if o.status.success() {
                done = true;
                break;
            }
        }
        if !done {
            if !hidden_files(&out_dir).is_empty() {
                tally.found_partial += 1;
            }
            let o = s.apply(&dev, &out).output().unwrap();
            assert!(
                o.status.success(),
                "run {r}: rerun after kill failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }

        assert!(
            fs::read(&out).unwrap() == s.new_bytes,
            "run {r}: wrong image"
        );
        assert!(
            fs::read(&s.old).unwrap() == s.old_bytes,
            "run {r}: old image modified"
        );
        assert_eq!(listing(&out_dir), ["image.bin"], "run {r}: stray files");
        assert_eq!(
            listing(&dev),
            [".lock", "history.log", "state.json"],
            "run {r}: stray files in the state directory"
        );
        let (h, warnings) = history(&dev);
        assert!(warnings.is_empty(), "run {r}: history: {warnings}");
        let applied: Vec<&Value> = h.iter().filter(|e| e["event"] == "applied").collect();
        assert_eq!(
            applied.len(),
            1,
            "run {r}: expected exactly one \"applied\" entry: {h:#?}"
        );
        assert_eq!(h.len(), 1, "run {r}: other entries: {h:#?}");
        let e = applied[0];
        assert_eq!(e["patch"], s.digest.as_str(), "run {r}: {e}");
        assert_eq!(e["new_version"], "2.0.0", "run {r}: {e}");
        if e["resumed"].as_u64().unwrap_or(0) > 0 {
            tally.resumed_entries += 1;
        }
        let st = state_of(&dev);
        assert_eq!(st["security_counter"], COUNTER, "run {r}: {st}");
        assert_eq!(st["version"], "1.0.0", "run {r}: {st}");
        assert!(st["in_progress"].is_null(), "run {r}: {st}");
        assert_eq!(st["pending"]["patch"], s.digest.as_str(), "run {r}: {st}");
        assert_ne!(fs::read(dev.join("state.json")).unwrap(), state0);

        ok(&[
            "confirm".as_ref(),
            "-q".as_ref(),
            "--device".as_ref(),
            dev.as_os_str(),
        ]);
        let st = state_of(&dev);
        assert_eq!(st["security_counter"], NEW_COUNTER, "run {r}: {st}");
        assert_eq!(st["version"], "2.0.0", "run {r}: {st}");
        assert!(st["pending"].is_null(), "run {r}: {st}");
        let (h, _) = history(&dev);
        assert_eq!(h.len(), 2, "run {r}: {h:#?}");
        assert_eq!(h[1]["event"], "confirmed", "run {r}: {h:#?}");
    }
    eprintln!(
        "device kill stress: {runs} runs, {segments} segments, uninterrupted apply {:.1} ms, {tally:?}",
        full.as_secs_f64() * 1e3
    );
    assert!(tally.kills > 0, "no apply was ever interrupted");
    assert!(
        tally.resumed_entries > 0,
        "no kill ever landed after the update was marked in progress"
    );
    assert!(
        tally.found_partial > 0,
        "no kill ever landed while the image was being written"
    );
}
