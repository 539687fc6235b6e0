//! The release tests' fleet: the cortex-m4 test pair's old image and six
//! deterministic mutations of it, a key pair and a description file, and
//! helpers to run the binary and compare release directories. Included by
//! `release.rs`, `release_plan.rs` and `ray_release.rs`.
// Each test crate uses some of them.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success\n{}", self.stderr);
        self
    }

    /// Exit `code` and exactly one stderr line, `fwdelta: error: ...`.
    pub fn error(self, code: i32) -> Run {
        assert_eq!(self.code, code, "wrong exit code\n{}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        let errors: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("fwdelta: error: "))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line\n{}", self.stderr);
        assert_eq!(
            lines.last(),
            errors.first().copied(),
            "error line must be last\n{}",
            self.stderr
        );
        self
    }
}

pub fn fwdelta<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
        .args(args)
        .output()
        .expect("run fwdelta");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A deterministic mutation of `base` (version `i`): scattered byte changes,
/// and for odd `i` a few bytes inserted, so lengths differ too.
pub fn mutate(base: &[u8], i: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut b = base.to_vec();
    for _ in 0..16 * (i + 1) {
        let at = (next() % b.len() as u64) as usize;
        b[at] = next() as u8;
    }
    if i % 2 == 1 {
        let at = (next() % b.len() as u64) as usize;
        b.splice(at..at, [0xA5u8; 12]);
    }
    b
}

/// A release workspace: keys, a fleet directory and a description file.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Seven old images in `fleet/` (named VERSION.bin), a key pair `rel`,
    /// and `release.toml` signed by it, with `extra` appended.
    pub fn new(extra: &str) -> Fixture {
        Fixture::with_keys(extra, true)
    }

    pub fn with_keys(extra: &str, signed: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fleet = dir.path().join("fleet");
        fs::create_dir(&fleet).unwrap();
        let base = fs::read(testdata("fw-cortex-m4/old")).unwrap();
        fs::write(fleet.join("1.0.0.bin"), &base).unwrap();
        for i in 0..6 {
            fs::write(fleet.join(format!("1.{}.0.bin", i + 1)), mutate(&base, i)).unwrap();
        }
        fwdelta([
            OsStr::new("keygen"),
            OsStr::new("-q"),
            OsStr::new("-o"),
            dir.path().join("rel").as_os_str(),
        ])
        .ok();
        fwdelta([
            OsStr::new("keygen"),
            OsStr::new("-q"),
            OsStr::new("-o"),
            dir.path().join("other").as_os_str(),
        ])
        .ok();
        let new = testdata("fw-cortex-m4/new");
        let keys = if signed { "keys = [\"rel.key\"]\n" } else { "" };
        fs::write(
            dir.path().join("release.toml"),
            format!(
                "product = \"acme-t300\"\nversion = \"2.0.0\"\nsecurity_counter = 7\n\
                 new_image = {:?}\n{keys}old_dir = \"fleet\"\n{extra}",
                new.display().to_string()
            ),
        )
        .unwrap();
        Fixture { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn olds(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.path("fleet"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// `fwdelta release release.toml -o OUT`, as it ran.
    pub fn release_run(&self, out: &str) -> Run {
        fwdelta([
            OsStr::new("release"),
            self.path("release.toml").as_os_str(),
            OsStr::new("-o"),
            self.path(out).as_os_str(),
        ])
    }

    /// `fwdelta release release.toml -o OUT --json`; the parsed report.
    pub fn release(&self, out: &str) -> Value {
        let run = fwdelta([
            OsStr::new("release"),
            self.path("release.toml").as_os_str(),
            OsStr::new("-o"),
            self.path(out).as_os_str(),
            OsStr::new("--json"),
            OsStr::new("-q"),
        ])
        .ok();
        assert!(run.stderr.is_empty(), "-q printed: {}", run.stderr);
        serde_json::from_str(&run.stdout).expect("release --json prints JSON")
    }

    /// `fwdelta apply --manifest OUT/manifest.json OLD -o NEW` plus `extra`.
    pub fn apply(&self, out: &str, old: &Path, new: &str, extra: &[&OsStr]) -> Run {
        let mut args: Vec<&OsStr> = vec![OsStr::new("apply"), OsStr::new("--manifest")];
        let manifest = self.path(out).join("manifest.json");
        let target = self.path(new);
        args.push(manifest.as_os_str());
        args.push(old.as_os_str());
        args.push(OsStr::new("-o"));
        args.push(target.as_os_str());
        args.extend_from_slice(extra);
        fwdelta(args)
    }

    /// `fwdelta device init DIR` for an acme-t300 trusting `rel.pub`, at
    /// `version` and security `counter`.
    pub fn device_init(&self, dir: &Path, version: &str, counter: u64) {
        fwdelta([
            OsStr::new("device"),
            OsStr::new("init"),
            dir.as_os_str(),
            OsStr::new("--product"),
            OsStr::new("acme-t300"),
            OsStr::new("--version"),
            OsStr::new(version),
            OsStr::new("--counter"),
            OsStr::new(&counter.to_string()),
            OsStr::new("--trust"),
            self.path("rel.pub").as_os_str(),
        ])
        .ok();
    }

    pub fn manifest(&self, out: &str) -> Value {
        serde_json::from_slice(&fs::read(self.path(out).join("manifest.json")).unwrap()).unwrap()
    }
}

/// `fwdelta history --device DEV --json`: the device's history entries.
pub fn device_history(dev: &Path) -> Vec<serde_json::Value> {
    let run = fwdelta([
        OsStr::new("history"),
        OsStr::new("--device"),
        dev.as_os_str(),
        OsStr::new("--json"),
    ])
    .ok();
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file in `dir` (hidden ones too) by name, with its bytes.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

pub fn assert_same_dirs(a: &Path, b: &Path) {
    let (fa, fb) = (files(a), files(b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "the two release directories hold different files"
    );
    for (name, bytes) in &fa {
        assert!(bytes == &fb[name], "{name} differs between the two runs");
    }
}

pub fn new_image() -> Vec<u8> {
    fs::read(testdata("fw-cortex-m4/new")).unwrap()
}
