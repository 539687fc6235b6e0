//! The Ray runner (`pipelines/ray`, package `fwdelta_ray`) end to end: a
//! release of the release tests' fleet (seven old images) planned with
//! `fwdelta release plan`, run as Ray tasks on a local Ray instance (2
//! CPUs, a 100 MB object store, no dashboard) with one worker process
//! SIGKILLed mid-job, collected, and compared byte for byte with a local
//! `fwdelta release` of the same description.
//!
//! Sets Python up itself: a venv at `target/ray-venv` (reused when
//! present; `FWDELTA_PYTHON` names the interpreter that creates it,
//! default `python3`) with `ray==2.60.0` from PyPI and `pip install
//! ./pipelines/ray`. If an install fails the test fails with pip's output:
//! it never skips. The runner's process group is killed if the test fails
//! or times out, and any process left in it afterwards, so no Ray process
//! outlives the test.

use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

#[path = "common/release_fixture.rs"]
mod release_fixture;
use release_fixture::*;

const RAY_VERSION: &str = "2.60.0";
/// The runner's whole run (Ray's start-up dominates); a hung run fails.
const TIMEOUT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo target directory: the binary is `target/PROFILE/fwdelta`.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_fwdelta"))
        .ancestors()
        .nth(2)
        .expect("target/PROFILE/fwdelta")
        .to_path_buf()
}

fn must(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The venv's python, with Ray and the runner installed.
fn ray_venv() -> PathBuf {
    let venv = target_dir().join("ray-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let base = std::env::var("FWDELTA_PYTHON").unwrap_or_else(|_| "python3".into());
        must(
            &format!("{base} -m venv {}", venv.display()),
            Command::new(&base)
                .args([OsStr::new("-m"), OsStr::new("venv"), venv.as_os_str()])
                .output(),
        );
    }
    let has_ray = Command::new(&python)
        .args([
            "-c",
            &format!("import sys, ray; sys.exit(ray.__version__ != {RAY_VERSION:?})"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ray {
        must(
            &format!("pip install ray=={RAY_VERSION}"),
            Command::new(&python)
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .arg(format!("ray=={RAY_VERSION}"))
                .output(),
        );
    }
    // The runner itself, every time (it is the code under test), from a
    // copy: pip's build leaves build/ and *.egg-info beside the sources.
    let src = tempfile::tempdir().unwrap();
    let copy = src.path().join("ray");
    fs::create_dir_all(copy.join("fwdelta_ray")).unwrap();
    let from = repo().join("pipelines/ray");
    for rel in [
        "pyproject.toml",
        "README.md",
        "fwdelta_ray/__init__.py",
        "fwdelta_ray/__main__.py",
        "fwdelta_ray/runner.py",
    ] {
        fs::copy(from.join(rel), copy.join(rel))
            .unwrap_or_else(|e| panic!("cannot copy pipelines/ray/{rel}: {e}"));
    }
    must(
        "pip install ./pipelines/ray",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-deps",
                "--force-reinstall",
            ])
            .arg(&copy)
            .output(),
    );
    python
}

/// Kills the runner's process group (the driver and the Ray processes it
/// started) unless it finished, and afterwards any process still in it.
struct Group {
    child: Child,
    finished: bool,
}

impl Group {
    fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Processes whose process group is the runner's (read from /proc).
    fn members(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces.
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|p| p.parse::<i32>().ok());
            if pgrp == Some(self.pgid()) {
                v.push(pid);
            }
        }
        v
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.finished {
            // SAFETY: a signal to the process group this test created.
            unsafe { libc::kill(-self.pgid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
        for pid in self.members() {
            // SAFETY: a process of the group this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_release_on_ray_with_a_killed_worker_equals_a_local_release() {
    let python = ray_venv();
    let f = Fixture::new("");
    f.release("ref");
    fwdelta([
        OsStr::new("release"),
        OsStr::new("plan"),
        f.path("release.toml").as_os_str(),
        OsStr::new("-o"),
        f.path("plan.jsonl").as_os_str(),
        OsStr::new("--cpus"),
        OsStr::new("1"),
        OsStr::new("-q"),
    ])
    .ok();
    let marker = f.path("killed-job-3.json");
    let start = Instant::now();
    let child = Command::new(&python)
        .args([OsStr::new("-m"), OsStr::new("fwdelta_ray")])
        .arg(f.path("plan.jsonl"))
        .arg(f.path("out"))
        .arg("--fwdelta")
        .arg(env!("CARGO_BIN_EXE_fwdelta"))
        .args([
            "--num-cpus",
            "2",
            "--object-store-memory",
            "100000000",
            "--json",
        ])
        .env("FWDELTA_RAY_TEST_KILL", format!("3:{}", marker.display()))
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start python -m fwdelta_ray");
    let mut group = Group {
        child,
        finished: false,
    };
    // Drain the pipes on threads so a chatty run cannot block on them.
    let pipe = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = pipe(group.child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = pipe(group.child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(s) = group.child.try_wait().unwrap() {
            group.finished = true;
            break s;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the Ray runner did not finish in {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    eprintln!("Ray runner: {:.1}s", start.elapsed().as_secs_f64());
    assert!(
        status.success(),
        "the Ray runner failed ({status}):\n{stderr}"
    );
    // The hook killed job 3's first worker while its run-job was running,
    // and Ray retried the job on another worker.
    let killed: Value = serde_json::from_slice(
        &fs::read(&marker).unwrap_or_else(|e| panic!("no kill happened ({e}):\n{stderr}")),
    )
    .unwrap();
    assert_eq!(killed["run_job_was_running"], true, "{killed}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the runner's report is not JSON ({e}):\n{stdout}"));
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 8);
    assert_ne!(jobs[3]["attempt_pid"], killed["worker_pid"]);
    assert_eq!(report["collect"]["verified"], 8);
    // Byte-identical to the local release: the manifest, its signature and
    // every patch. A killed run-job may leave its temporary file, nothing
    // else.
    let mut out = files(&f.path("out"));
    out.retain(|name, _| {
        let temporary = name.starts_with('.') && name.ends_with(".tmp");
        assert!(
            temporary || !name.starts_with('.'),
            "unexpected file {name}"
        );
        !temporary
    });
    let reference = files(&f.path("ref"));
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &reference {
        assert!(out[name] == *bytes, "{name} differs from the local release");
    }
}
