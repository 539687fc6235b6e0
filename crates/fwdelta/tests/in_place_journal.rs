//! The in-place journal's side files against a hostile directory: a planted
//! symbolic link is never written through.

use std::fs;
use std::process::Command;

/// `fwdelta diff` for a small in-place patch (OLD NEW -o PATCH follow).
const IN_PLACE_DIFF: [&str; 7] = [
    "diff",
    "-q",
    "--level",
    "3",
    "--in-place",
    "--scratch",
    "4KiB",
];

fn testdata(pair: &str, which: &str) -> Vec<u8> {
    fs::read(format!(
        "{}/../../testdata/{pair}/{which}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Issue 18: a link planted at `.IMG.fwdelta-journal` made `apply --in-place`
/// overwrite the link's target with a staged cell and exit 0.
#[test]
fn a_symlink_planted_at_a_journal_file_is_not_written_through() {
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        testdata("fw-cortex-m4", "old"),
        testdata("fw-cortex-m4", "new"),
    );
    let (o, n, p) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("patch.fwd"),
    );
    fs::write(&o, &old).unwrap();
    fs::write(&n, &new).unwrap();
    let st = Command::new(exe)
        .args(IN_PLACE_DIFF)
        .arg(&o)
        .arg(&n)
        .arg("-o")
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    for side in ["fwdelta-journal", "fwdelta-inplace"] {
        let work = dir.path().join(format!("dev-{side}"));
        fs::create_dir(&work).unwrap();
        let image = work.join("IMG");
        fs::write(&image, &old).unwrap();
        let victim = dir.path().join(format!("victim-{side}"));
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, work.join(format!(".IMG.{side}"))).unwrap();
        let out = Command::new(exe)
            .args(["apply", "--in-place", "-q"])
            .arg(&image)
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            fs::read(&victim).unwrap() == b"precious",
            "{side}: written through"
        );
        assert!(!out.status.success(), "{side}: exit 0 with a planted link");
        assert!(fs::read(&image).unwrap() == old, "{side}: image touched");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("symbolic link"), "{side}: {err}");
    }
    // a hard link to a file of ours is refused too
    let work = dir.path().join("dev-hard");
    fs::create_dir(&work).unwrap();
    let image = work.join("IMG");
    fs::write(&image, &old).unwrap();
    let victim = dir.path().join("victim-hard");
    fs::write(&victim, b"precious").unwrap();
    fs::hard_link(&victim, work.join(".IMG.fwdelta-journal")).unwrap();
    let out = Command::new(exe)
        .args(["apply", "--in-place", "-q"])
        .arg(&image)
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        fs::read(&victim).unwrap() == b"precious",
        "written through a hard link"
    );
    assert!(fs::read(&image).unwrap() == old);
    assert!(String::from_utf8_lossy(&out.stderr).contains("hard links"));
    // and a FIFO is refused, not waited on
    fs::remove_file(work.join(".IMG.fwdelta-journal")).unwrap();
    let fifo = std::ffi::CString::new(
        work.join(".IMG.fwdelta-journal")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = Command::new(exe)
        .args(["apply", "--in-place", "-q"])
        .arg(&image)
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(fs::read(&image).unwrap() == old);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

/// A file region whose power goes at its `cut`-th write, half of which lands.
struct CutFile {
    inner: fwdelta_apply::FileRegion,
    cut: std::cell::Cell<u32>,
}

impl fwdelta_apply::Region for CutFile {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.cut.get() == 0 {
            self.inner.write_at(offset, &data[..data.len() / 2])?;
            return Err(std::io::Error::other("power cut"));
        }
        self.cut.set(self.cut.get() - 1);
        self.inner.write_at(offset, data)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
}

/// Interrupt an in-place apply of `patch` to `image` (holding `old`) at its
/// third cell write, leaving the journal beside it.
fn interrupt(image: &std::path::Path, old: &[u8], patch: &std::path::Path) {
    fs::write(image, old).unwrap();
    let region = CutFile {
        inner: fwdelta_apply::FileRegion::open(image).unwrap(),
        cut: std::cell::Cell::new(2),
    };
    let mut journal = fwdelta_apply::FileJournal::beside(image).unwrap();
    let r = fwdelta_apply::apply_in_place_with(
        &region,
        std::io::BufReader::new(fs::File::open(patch).unwrap()),
        fwdelta_apply::ApplyOptions::default(),
        &mut journal,
    );
    assert!(r.is_err(), "the cut went unnoticed");
}

fn in_place_patch(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, std::path::PathBuf) {
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let (o, n, p) = (dir.join("old"), dir.join("new"), dir.join("patch.fwd"));
    fs::write(&o, &old).unwrap();
    fs::write(&n, &new).unwrap();
    let st = Command::new(exe)
        .args(IN_PLACE_DIFF)
        .arg(&o)
        .arg(&n)
        .arg("-o")
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    (old, new, p)
}

/// Issue 18, hole 3, end to end: after a power cut mid-update, one damaged
/// journal file is survived (exit 0, exact image, nothing left behind); both
/// damaged is exit 14 with one line saying what the image is, and the image
/// and journal are left as they were for a reflash.
#[test]
fn a_damaged_journal_copy_resumes_and_two_lost_copies_exit_14() {
    use std::os::unix::fs::PermissionsExt;
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let dir = tempfile::tempdir().unwrap();
    let (old, new, patch) = in_place_patch(dir.path());
    let work = dir.path().join("dev");
    fs::create_dir(&work).unwrap();
    let image = work.join("IMG");
    let sides = [
        work.join(".IMG.fwdelta-inplace"),
        work.join(".IMG.fwdelta-journal"),
    ];
    let flip = |path: &std::path::Path, at: usize| {
        let mut b = fs::read(path).unwrap();
        let at = at.min(b.len() - 1);
        b[at] ^= 0x04;
        fs::write(path, &b).unwrap();
    };
    let apply = || {
        Command::new(exe)
            .args(["apply", "--in-place", "-q"])
            .arg(&image)
            .arg(&patch)
            .output()
            .unwrap()
    };
    for side in &sides {
        interrupt(&image, &old, &patch);
        for s in &sides {
            let mode = fs::metadata(s).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", s.display());
        }
        flip(side, 200);
        let out = apply();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(fs::read(&image).unwrap() == new);
        let left: Vec<_> = fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["IMG"], "left behind");
    }

    interrupt(&image, &old, &patch);
    for s in &sides {
        flip(s, 200);
    }
    let before = fs::read(&image).unwrap();
    let out = apply();
    assert_eq!(out.status.code(), Some(14));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fwdelta: error: "), "{err}");
    assert!(
        err.contains("may be torn") && err.trim_end().ends_with("reflash it"),
        "{err}"
    );
    assert!(fs::read(&image).unwrap() == before, "image changed");
    assert!(sides.iter().all(|s| s.exists()), "journal removed");
}

/// An in-place update under a device, cut by a power loss before its patch
/// expired, is finished by `apply --device --in-place` after the expiry: the
/// journal beside the image names the patch (refusing it would leave an
/// image that is neither version), even after another patch was tried in
/// between. Without such a journal the expired patch is refused with exit 10
/// and the image untouched.
#[test]
fn a_device_finishes_an_in_place_update_cut_before_its_expiry() {
    use std::ffi::OsStr;
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let run = |args: &[&OsStr]| Command::new(exe).args(args).output().unwrap();
    let ok = |args: &[&OsStr]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    fs::write(d("old"), &old).unwrap();
    fs::write(d("new"), &new).unwrap();
    ok(&["keygen".as_ref(), "-o".as_ref(), d("rel").as_os_str()]);
    let dev = d("dev");
    ok(&[
        "device".as_ref(),
        "init".as_ref(),
        dev.as_os_str(),
        "--product".as_ref(),
        "acme-t300".as_ref(),
        "--trust".as_ref(),
        d("rel.pub").as_os_str(),
        "--version".as_ref(),
        "1.0.0".as_ref(),
        "--counter".as_ref(),
        "4".as_ref(),
    ]);
    let make = |name: &str, version: &str, extra: &[&str]| {
        let out = d(name);
        let mut args: Vec<&OsStr> = IN_PLACE_DIFF.iter().map(OsStr::new).collect();
        let key = d("rel.key");
        let (o, n) = (d("old"), d("new"));
        args.extend([o.as_os_str(), n.as_os_str(), "-o".as_ref(), out.as_os_str()]);
        args.extend(
            [
                "--product",
                "acme-t300",
                "--version",
                version,
                "--counter",
                "5",
            ]
            .map(OsStr::new),
        );
        args.extend(["--sign".as_ref(), key.as_os_str()]);
        args.extend(extra.iter().map(OsStr::new));
        ok(&args);
        out
    };
    let expiring = make("a.fwd", "2.0.0", &["--expires", "1000"]);
    let other = make("b.fwd", "2.0.1", &[]);
    let work = d("work");
    fs::create_dir(&work).unwrap();
    let image = work.join("IMG");
    let apply = |patch: &std::path::Path, now: &str| {
        run(&[
            "apply".as_ref(),
            "--device".as_ref(),
            dev.as_os_str(),
            "--in-place".as_ref(),
            "-q".as_ref(),
            image.as_os_str(),
            patch.as_os_str(),
            "--now".as_ref(),
            now.as_ref(),
        ])
    };
    let listing = || {
        let mut v: Vec<_> = fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // Not begun: refused as expired, the image untouched.
    fs::write(&image, &old).unwrap();
    let out = apply(&expiring, "1001");
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(&image).unwrap() == old);
    assert_eq!(listing(), ["IMG"]);

    // Cut before the expiry; another patch tried meanwhile is refused (the
    // image is in the middle of this one); after the expiry it is finished.
    interrupt(&image, &old, &expiring);
    let before = fs::read(&image).unwrap();
    assert!(
        before != old && before != new,
        "the cut left no half-written image"
    );
    let out = apply(&other, "999");
    assert!(
        !out.status.success(),
        "another patch went over a half-written image"
    );
    assert!(fs::read(&image).unwrap() == before);
    let out = apply(&expiring, "1001");
    assert!(
        out.status.success(),
        "the update cut before its expiry was not finished: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(&image).unwrap() == new);
    assert_eq!(listing(), ["IMG"]);
    let state = fs::read_to_string(dev.join("state.json")).unwrap();
    assert!(state.contains("\"2.0.0\""), "{state}");
}
