//! The files `apply` keeps beside its output (partial image, checkpoint, its
//! temporary sibling, lock): two updates of one output never both write it,
//! no side-file name is ever followed as a link, a new image that cannot fit
//! is refused before anything is written, and a damaged partial output is
//! caught when a resume starts.

mod common;

use common::hidden_files;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EXIT_FAILURE: i32 = 1;
const EXIT_BUSY: i32 = 13;
const EXIT_NO_SPACE: i32 = 15;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_fwdelta")
}

fn run<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Output {
    Command::new(exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run fwdelta")
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit `code` and exactly one stderr line `fwdelta: error: ...` holding every needle.
fn assert_error(o: &Output, code: i32, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(code), "wrong exit\n{}", describe(o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line\n{}", describe(o));
    assert!(lines[0].starts_with("fwdelta: error: "), "{}", describe(o));
    for n in needles {
        assert!(lines[0].contains(n), "no {n:?} in\n{}", describe(o));
    }
}

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `old` with every `step`-th byte replaced from `seed`.
fn edited(old: &[u8], seed: u64, step: usize) -> Vec<u8> {
    let fresh = noise(seed, old.len());
    old.iter()
        .enumerate()
        .map(|(i, &b)| if i % step == 0 { fresh[i] } else { b })
        .collect()
}

fn diff(old: &Path, new: &Path, patch: &Path, extra: &[&str]) {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("diff"),
        old.as_os_str(),
        new.as_os_str(),
        OsStr::new("-o"),
        patch.as_os_str(),
        OsStr::new("-q"),
        OsStr::new("--arch"),
        OsStr::new("none"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let o = run(args);
    assert!(o.status.success(), "diff failed\n{}", describe(&o));
}

/// A scratch directory with a 64 KiB old image, two different new images
/// and a patch to each, and an empty `out/` for outputs.
struct Pair {
    dir: tempfile::TempDir,
    old: PathBuf,
    news: [Vec<u8>; 2],
    patches: [PathBuf; 2],
    out_dir: PathBuf,
}

impl Pair {
    fn new(extra: &[&str]) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let old_bytes = noise(1, 64 << 10);
        let old = dir.path().join("old");
        fs::write(&old, &old_bytes).unwrap();
        let news = [edited(&old_bytes, 2, 97), edited(&old_bytes, 3, 89)];
        let patches = [dir.path().join("a.fwd"), dir.path().join("b.fwd")];
        for (i, new) in news.iter().enumerate() {
            let path = dir.path().join(format!("new{i}"));
            fs::write(&path, new).unwrap();
            diff(&old, &path, &patches[i], extra);
        }
        let out_dir = dir.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        Pair {
            dir,
            old,
            news,
            patches,
            out_dir,
        }
    }

    fn out(&self) -> PathBuf {
        self.out_dir.join("image.bin")
    }

    fn apply_cmd(&self, patch: usize, extra: &[&str]) -> Command {
        let mut c = Command::new(exe());
        c.arg("apply")
            .args(extra)
            .arg(&self.old)
            .arg(&self.patches[patch])
            .arg("-o")
            .arg(self.out())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
}

/// Hole 1: two applies of different patches to one output, started together,
/// 100 times (half of them with `--resume`). Each must either succeed or be
/// refused as busy, and whenever one succeeded the output is exactly an image
/// one of the successful runs produced (the only one, if only one succeeded).
#[test]
fn two_concurrent_applies_never_succeed_with_a_wrong_image() {
    let p = Pair::new(&[]);
    let (mut wrong, mut busy, mut both_ok) = (0, 0, 0);
    let mut failures = Vec::new();
    for run in 0..100 {
        let _ = fs::remove_file(p.out());
        let extra: &[&str] = if run % 2 == 0 {
            &["-q"]
        } else {
            &["-q", "--resume"]
        };
        let children = [
            p.apply_cmd(0, extra).spawn().unwrap(),
            p.apply_cmd(1, extra).spawn().unwrap(),
        ];
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
        let got = fs::read(p.out()).ok();
        let ok: Vec<usize> = (0..2).filter(|&i| codes[i] == Some(0)).collect();
        busy += codes.iter().filter(|&&c| c == Some(EXIT_BUSY)).count();
        let right = match ok.as_slice() {
            [] => false,
            [i] => got.as_deref() == Some(&p.news[*i][..]),
            _ => {
                both_ok += 1;
                got.as_deref() == Some(&p.news[0][..]) || got.as_deref() == Some(&p.news[1][..])
            }
        };
        if !ok.is_empty() && !right {
            wrong += 1;
        }
        let codes_fine = codes.iter().all(|&c| c == Some(0) || c == Some(EXIT_BUSY));
        if !right || !codes_fine {
            failures.push(format!(
                "run {run}: exits {codes:?}, output {}, stderr {:?}",
                match &got {
                    None => "missing".to_string(),
                    Some(g) if *g == p.news[0] => "image A".to_string(),
                    Some(g) if *g == p.news[1] => "image B".to_string(),
                    Some(g) => format!("WRONG ({} bytes)", g.len()),
                },
                outs.iter()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .collect::<Vec<_>>()
            ));
        }
        assert_eq!(
            hidden_files(&p.out_dir),
            Vec::<String>::new(),
            "run {run}: side files left"
        );
    }
    eprintln!(
        "100 concurrent pairs: {wrong} ended with exit 0 and a wrong image, \
         {busy} runs refused as busy, {both_ok} pairs both succeeded one after the other"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Take `.NAME.fwdelta-lock` beside `target` the way fwdelta does.
fn hold_lock(target: &Path) -> fs::File {
    let name = target.file_name().unwrap().to_string_lossy();
    let path = target.with_file_name(format!(".{name}.fwdelta-lock"));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "cannot take the lock in the test");
    f
}

/// While another process holds the lock on an output (or an in-place image),
/// `apply`, `apply --resume` and `apply --in-place` refuse with exit 13 and
/// touch nothing.
#[test]
fn apply_refuses_while_another_update_holds_the_lock() {
    let p = Pair::new(&[]);
    fs::write(p.out(), b"precious").unwrap();
    let lock = hold_lock(&p.out());
    let before = fs::read_dir(&p.out_dir).unwrap().count();
    for extra in [&[][..], &["--resume"][..]] {
        let o = p.apply_cmd(0, extra).output().unwrap();
        assert_error(
            &o,
            EXIT_BUSY,
            &["another update of", "image.bin", "is running"],
        );
        assert_eq!(fs::read(p.out()).unwrap(), b"precious");
        assert_eq!(fs::read_dir(&p.out_dir).unwrap().count(), before);
    }
    drop(lock);

    let ip = Pair::new(&["--in-place", "--scratch", "4KiB"]);
    let old_before = fs::read(&ip.old).unwrap();
    let lock = hold_lock(&ip.old);
    let o = run([
        OsStr::new("apply"),
        OsStr::new("--in-place"),
        ip.old.as_os_str(),
        ip.patches[0].as_os_str(),
    ]);
    assert_error(&o, EXIT_BUSY, &["another update of", "old", "is running"]);
    assert!(fs::read(&ip.old).unwrap() == old_before, "image rewritten");
    drop(lock);
    let o = run([
        OsStr::new("apply"),
        OsStr::new("--in-place"),
        OsStr::new("-q"),
        ip.old.as_os_str(),
        ip.patches[0].as_os_str(),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(fs::read(&ip.old).unwrap() == ip.news[0], "wrong image");
    assert_eq!(hidden_files(ip.dir.path()), Vec::<String>::new());
}

/// Hole 2: a symbolic link (or a hard link) planted at a side-file name and
/// pointing at the old image must never let `apply` write the old image. The
/// link is refused with one error line and left as it was.
#[test]
fn apply_never_writes_through_a_link_at_a_side_file_name() {
    let p = Pair::new(&[]);
    let old_before = fs::read(&p.old).unwrap();
    for side in [
        "fwdelta-partial",
        "fwdelta-resume.tmp",
        "fwdelta-resume",
        "fwdelta-lock",
    ] {
        for hard in [false, true] {
            let link = p.out_dir.join(format!(".image.bin.{side}"));
            if hard {
                fs::hard_link(&p.old, &link).unwrap();
            } else {
                std::os::unix::fs::symlink(&p.old, &link).unwrap();
            }
            let o = p.apply_cmd(0, &["-q"]).output().unwrap();
            assert!(
                fs::read(&p.old).unwrap() == old_before,
                "old image written through a {} link at {side}\n{}",
                if hard { "hard" } else { "symbolic" },
                describe(&o)
            );
            assert_error(&o, EXIT_FAILURE, &[side]);
            assert!(
                !p.out().exists(),
                "output written despite the link at {side}"
            );
            let meta = fs::symlink_metadata(&link).unwrap();
            assert_eq!(
                meta.file_type().is_symlink(),
                !hard,
                "link at {side} replaced"
            );
            fs::remove_file(&link).unwrap();
            assert_eq!(hidden_files(&p.out_dir), Vec::<String>::new());
        }
    }
    // Without links the same apply succeeds.
    let o = p.apply_cmd(0, &["-q"]).output().unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    assert!(fs::read(p.out()).unwrap() == p.news[0], "wrong image");
}

/// Review of issue 19, finding 3: an output that is a device node, a FIFO
/// or a socket was replaced by a regular file (the new image is written
/// beside the output and renamed over it), so `-o /dev/mmcblk0p3` left the
/// partition unwritten and its node gone, and reported success. It is
/// refused, left as it is, with nothing written beside it. (Device nodes
/// take the same check; `side_file`'s unit test runs it on `/dev/null`
/// without writing.)
#[test]
fn apply_refuses_an_output_that_is_not_a_regular_file() {
    let p = Pair::new(&[]);
    let fifo = p.out_dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let socket = p.out_dir.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (target, kind) in [(&fifo, "FIFO"), (&socket, "socket")] {
        for threads in ["1", "2"] {
            let o = run([
                OsStr::new("apply"),
                p.old.as_os_str(),
                p.patches[0].as_os_str(),
                OsStr::new("-o"),
                target.as_os_str(),
                OsStr::new("-j"),
                OsStr::new(threads),
            ]);
            assert_error(&o, EXIT_FAILURE, &["refusing to replace", kind]);
            let t = fs::symlink_metadata(target).unwrap().file_type();
            assert!(!t.is_file(), "{kind} replaced by a file");
            assert_eq!(hidden_files(&p.out_dir), Vec::<String>::new());
        }
    }
    // A symbolic link is what is replaced (documented), not what it names.
    let link = p.out_dir.join("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let o = run([
        OsStr::new("apply"),
        p.old.as_os_str(),
        p.patches[0].as_os_str(),
        OsStr::new("-o"),
        link.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(fs::read(&link).unwrap() == p.news[0]);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

/// Hole 4: a patch whose header claims a new image larger than the output's
/// filesystem can hold is refused (exit 15) before anything is written.
#[test]
fn apply_refuses_a_new_image_larger_than_the_free_space() {
    use fwdelta_format::Header;
    let p = Pair::new(&[]);
    let patch = fs::read(&p.patches[0]).unwrap();
    let prefix: [u8; Header::PREFIX_LEN] = patch[..Header::PREFIX_LEN].try_into().unwrap();
    let n = Header::parse_prefix(&prefix).unwrap();
    let mut h = Header::parse(&patch[..n]).unwrap();
    h.new_len = fwdelta_format::MAX_IMAGE_LEN;
    let mut forged = h.encode();
    forged.extend_from_slice(&patch[n..]);
    let forged_path = p.dir.path().join("forged.fwd");
    fs::write(&forged_path, &forged).unwrap();

    // The claim must exceed what this filesystem has free, or the test says
    // nothing: make sure of it rather than skip.
    let dir = std::ffi::CString::new(p.out_dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs into a zeroed struct of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(dir.as_ptr(), &mut st) }, 0);
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    assert!(
        free < fwdelta_format::MAX_IMAGE_LEN,
        "this filesystem has {free} bytes free, more than the largest image"
    );

    for extra in [&[][..], &["--resume"][..]] {
        let o = run([
            OsStr::new("apply"),
            p.old.as_os_str(),
            forged_path.as_os_str(),
            OsStr::new("-o"),
            p.out().as_os_str(),
        ]
        .into_iter()
        .chain(extra.iter().map(OsStr::new)));
        assert_error(&o, EXIT_NO_SPACE, &["not enough free space", "image.bin"]);
        assert_eq!(
            fs::read_dir(&p.out_dir).unwrap().count(),
            0,
            "something was written"
        );
    }
}

/// Hole 5: a resumed partial output damaged before the resume is detected at
/// resume time by the checkpoint's hash, reported as such (not blamed on the
/// patch), and the apply starts over and succeeds.
#[test]
fn resume_detects_a_damaged_partial_output_and_starts_over() {
    use fwdelta_apply::{Applier, ApplyOptions, Sink};
    use fwdelta_format::{Checkpoint, SegmentHeader};

    /// Records the output and its checkpoints.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        checkpoints: Vec<Checkpoint>,
    }
    impl Sink for Recorder {
        fn write(&mut self, data: &[u8]) -> Result<(), fwdelta_apply::IoError> {
            self.out.extend_from_slice(data);
            Ok(())
        }
        fn segment_done(
            &mut self,
            _: &SegmentHeader,
            cp: &Checkpoint,
        ) -> Result<(), fwdelta_apply::IoError> {
            self.checkpoints.push(*cp);
            Ok(())
        }
    }

    let p = Pair::new(&["--segment-size", "256", "--level", "3"]);
    let old = fs::read(&p.old).unwrap();
    let patch = fs::read(&p.patches[0]).unwrap();
    let mut a = Applier::new(&old[..], Recorder::default(), ApplyOptions::default());
    a.feed(&patch).unwrap();
    let (_, rec) = a.finish().unwrap();
    assert!(rec.out == p.news[0], "wrong image");
    assert!(
        rec.checkpoints.len() >= 3,
        "{} segments",
        rec.checkpoints.len()
    );
    let cp = rec.checkpoints[1];
    let mut damaged = rec.out[..cp.new_offset as usize].to_vec();
    damaged[100] ^= 0x40;

    let partial = p.out_dir.join(".image.bin.fwdelta-partial");
    let state = p.out_dir.join(".image.bin.fwdelta-resume");
    fs::write(&partial, &damaged).unwrap();
    fs::write(&state, cp.encode()).unwrap();
    let o = p.apply_cmd(0, &["--resume", "-q"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("partial output damaged, starting over"),
        "{}",
        describe(&o)
    );
    assert!(!stderr.contains("patch is corrupt"), "{}", describe(&o));
    assert!(fs::read(p.out()).unwrap() == p.news[0], "wrong image");
    assert_eq!(hidden_files(&p.out_dir), Vec::<String>::new());

    // The intact partial output of the same checkpoint resumes without a word.
    fs::remove_file(p.out()).unwrap();
    fs::write(&partial, &rec.out[..cp.new_offset as usize]).unwrap();
    fs::write(&state, cp.encode()).unwrap();
    let o = p.apply_cmd(0, &["--resume", "-q"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    assert!(fs::read(p.out()).unwrap() == p.news[0], "wrong image");
}
