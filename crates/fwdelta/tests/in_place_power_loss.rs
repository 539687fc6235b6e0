//! In-place power-loss stress: `fwdelta apply --in-place --resume` rewrites
//! the image file itself and is SIGKILLed at random moments; rerunning must
//! always finish with the exact new image and no journal left behind.
//! `FWDELTA_KILL_RUNS` sets the number of runs (default 12).

mod common;

use common::{hidden_files, kill_runs};
use fwdelta_testkit::XorShift;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigkill_during_in_place_apply_always_resumes_to_the_exact_image() {
    let runs = kill_runs();
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift::new(0x0123_4567_89AB_CDEF);
    // 4 MiB with an insertion near the start (every cell shifts) and edits.
    let old: Vec<u8> = (0..4 << 20)
        .map(|i: u32| {
            if i % 5 == 0 {
                rng.next_u64() as u8
            } else {
                (i >> 10) as u8
            }
        })
        .collect();
    let mut new = old.clone();
    new.splice(2000..2000, (0..3000u32).map(|i| (i * 13) as u8));
    for _ in 0..5000 {
        let at = (rng.next_u64() % new.len() as u64) as usize;
        new[at] = rng.next_u64() as u8;
    }
    let (o, n, p) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("patch.fwd"),
    );
    fs::write(&o, &old).unwrap();
    fs::write(&n, &new).unwrap();
    let st = Command::new(exe)
        .args([
            "diff",
            "-q",
            "--level",
            "3",
            "--in-place",
            "--scratch",
            "16KiB",
        ])
        .arg(&o)
        .arg(&n)
        .arg("-o")
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());

    let work = dir.path().join("dev");
    fs::create_dir(&work).unwrap();
    let image = work.join("image.bin");
    let apply = || {
        let mut c = Command::new(exe);
        c.args(["apply", "--in-place", "--resume", "-q"])
            .arg(&image)
            .arg(&p);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    fs::write(&image, &old).unwrap();
    let t = Instant::now();
    let out = apply().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = t.elapsed();
    assert!(fs::read(&image).unwrap() == new);

    let (mut kills, mut resumed) = (0, 0);
    for run in 0..runs {
        fs::write(&image, &old).unwrap();
        assert!(
            hidden_files(&work).is_empty(),
            "run {run}: leftovers {:?}",
            hidden_files(&work)
        );
        let mut finished = false;
        for _ in 0..3 {
            if work.join(".image.bin.fwdelta-inplace").exists() {
                resumed += 1;
            }
            let mut child = apply().spawn().unwrap();
            std::thread::sleep(Duration::from_micros(
                rng.next_u64() % (full.as_micros() as u64).max(1),
            ));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills += 1;
            }
            let status = child.wait().unwrap();
            if status.success() {
                finished = true;
                break;
            }
        }
        if !finished {
            let out = apply().output().unwrap();
            assert!(
                out.status.success(),
                "run {run}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(fs::read(&image).unwrap() == new, "run {run}: wrong image");
        assert!(
            hidden_files(&work).is_empty(),
            "run {run}: leftovers {:?}",
            hidden_files(&work)
        );
    }
    eprintln!(
        "in-place power-loss stress: {runs} runs, {kills} kills, {resumed} resumes from a journal, \
         uninterrupted apply {:.1} ms",
        full.as_secs_f64() * 1e3
    );
    assert!(kills > 0 && resumed > 0, "{kills} kills, {resumed} resumes");
}
