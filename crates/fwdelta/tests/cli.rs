//! End-to-end tests of the `fwdelta` binary: round trips, every refusal path of
//! `apply` (exit code, one-line error, nothing written, old image untouched),
//! option errors of `diff`, `info` and `bench`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXIT_FAILURE: i32 = 1;
const EXIT_BAD_PATCH: i32 = 3;
const EXIT_WRONG_OLD: i32 = 4;
const EXIT_LIMITS: i32 = 5;
const EXIT_UNSUPPORTED: i32 = 6;

/// Offset of the version in every header (see docs/FORMAT.md, "frozen framing").
const VERSION_AT: usize = 4;

/// The header's length, from its frozen framing (the varint after the version).
fn header_len(patch: &[u8]) -> usize {
    use fwdelta_format::Header;
    let prefix = patch[..Header::PREFIX_LEN].try_into().unwrap();
    Header::parse_prefix(&prefix).unwrap()
}

/// Where the first segment's payload starts, and its length: the segment
/// header (two or three varints) follows the patch header.
fn first_payload(patch: &[u8]) -> (usize, usize) {
    use fwdelta_format::{Header, SegmentHeader};
    let at = header_len(patch);
    let header = Header::parse(&patch[..at]).unwrap();
    let n = SegmentHeader::complete_len(&patch[at..], &header, 0)
        .unwrap()
        .unwrap();
    let seg = SegmentHeader::parse(&patch[at..at + n], &header, 0, 0).unwrap();
    (at + n, seg.payload_len as usize)
}

/// Outcome of one run of the binary.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn of(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().expect("fwdelta was killed by a signal"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn assert_ok(&self) {
        assert_eq!(self.code, 0, "expected success\n{}", self.describe());
    }

    /// Exit `code` and exactly one stderr line `fwdelta: error: ...` that
    /// contains every needle.
    fn assert_error(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "wrong exit code\n{}", self.describe());
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("fwdelta: error: "),
            "error line has the wrong prefix\n{}",
            self.describe()
        );
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "error line does not mention {needle:?}\n{}",
                self.describe()
            );
        }
    }
}

fn fwdelta<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
        .args(args)
        .output()
        .expect("cannot run fwdelta");
    Run::of(out)
}

/// Like [`fwdelta`], but fail the test if the run has not ended after 20 s
/// (e.g. blocked opening a FIFO).
fn fwdelta_within_20s<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run fwdelta");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("fwdelta still running after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Run::of(child.wait_with_output().unwrap())
}

/// `fwdelta diff OLD NEW -o PATCH -q EXTRA...`, which must succeed.
fn diff_ok(old: &Path, new: &Path, patch: &Path, extra: &[&str]) {
    diff_quiet(old, new, patch, extra).assert_ok();
}

/// `fwdelta diff OLD NEW -o PATCH -q EXTRA...`, as it ran.
fn diff_quiet(old: &Path, new: &Path, patch: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        OsStr::new("diff"),
        old.as_os_str(),
        new.as_os_str(),
        OsStr::new("-o"),
        patch.as_os_str(),
        OsStr::new("-q"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    fwdelta(&args)
}

fn testdata(pair: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(pair)
}

/// Sorted file names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A scratch directory holding a copy of a testdata pair, a patch made from it
/// with default options, and an empty `out/` directory for apply outputs.
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

struct Fixture {
    dir: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    patch: PathBuf,
    out_dir: PathBuf,
}

impl Fixture {
    fn new(pair: &str) -> Fixture {
        Fixture::from_bytes(
            &fs::read(testdata(pair).join("old")).unwrap(),
            &fs::read(testdata(pair).join("new")).unwrap(),
        )
    }

    fn from_bytes(old_bytes: &[u8], new_bytes: &[u8]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        fs::write(&old, old_bytes).unwrap();
        fs::write(&new, new_bytes).unwrap();
        let patch = dir.path().join("patch.fwd");
        fwdelta([
            OsStr::new("diff"),
            old.as_os_str(),
            new.as_os_str(),
            OsStr::new("-o"),
            patch.as_os_str(),
            OsStr::new("-q"),
            // plain, so the header has the fixed length the byte-level
            // refusal tests below poke at (round trips cover --arch auto)
            OsStr::new("--arch"),
            OsStr::new("none"),
        ])
        .assert_ok();
        let out_dir = dir.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        Fixture {
            dir,
            old,
            new,
            patch,
            out_dir,
        }
    }

    fn patch_bytes(&self) -> Vec<u8> {
        fs::read(&self.patch).unwrap()
    }

    /// Run `fwdelta diff OLD NEW -o DIR/name EXTRA...`; returns the patch path
    /// and the run.
    fn diff_to(&self, name: &str, extra: &[&str]) -> (PathBuf, Run) {
        let patch = self.dir.path().join(name);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("diff"),
            self.old.as_os_str(),
            self.new.as_os_str(),
            OsStr::new("-o"),
            patch.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let run = fwdelta(args);
        (patch, run)
    }

    fn out(&self) -> PathBuf {
        self.out_dir.join("image.bin")
    }

    /// Apply `patch` (bytes written to a scratch file) to `old`, writing to `out/image.bin`.
    fn apply_with(&self, old: &Path, patch: &[u8], extra: &[&str]) -> Run {
        let path = self.dir.path().join("candidate.fwd");
        fs::write(&path, patch).unwrap();
        let out = self.out();
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("apply"),
            old.as_os_str(),
            path.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        fwdelta(args)
    }

    /// Apply `patch` to the fixture's old image and expect a refusal: exit
    /// `code`, one error line naming the problem, the output directory exactly
    /// as it was (no output, no temporary file), the old image unchanged.
    fn refuse(&self, patch: &[u8], extra: &[&str], code: i32, needles: &[&str]) {
        self.refuse_with_old(&self.old, patch, extra, code, needles);
    }

    fn refuse_with_old(
        &self,
        old: &Path,
        patch: &[u8],
        extra: &[&str],
        code: i32,
        needles: &[&str],
    ) {
        let old_before = fs::read(old).unwrap();
        let out_before = listing(&self.out_dir);
        let contents_before = fs::read(self.out()).ok();
        let run = self.apply_with(old, patch, extra);
        run.assert_error(code, needles);
        assert_eq!(
            run.stdout,
            "",
            "nothing expected on stdout\n{}",
            run.describe()
        );
        assert_eq!(
            listing(&self.out_dir),
            out_before,
            "output directory changed (output or temporary file left)\n{}",
            run.describe()
        );
        assert_eq!(
            fs::read(self.out()).ok(),
            contents_before,
            "existing output file was modified"
        );
        assert_eq!(fs::read(old).unwrap(), old_before, "old image was modified");
    }
}

/// Overwrite bytes at `at` and re-seal the header check, so the header parses
/// as intact and its fields are validated.
fn reseal(patch: &mut [u8], at: usize, value: &[u8]) {
    patch[at..at + value.len()].copy_from_slice(value);
    let end = header_len(patch) - fwdelta_format::CHECK_LEN;
    let check = fwdelta_format::check_of(&patch[..end]);
    patch[end..end + check.len()].copy_from_slice(&check);
}

/// The patch with its header decoded, changed by `edit` and encoded again
/// (sealed), followed by the original segments.
fn with_header(patch: &[u8], edit: impl FnOnce(&mut fwdelta_format::Header)) -> Vec<u8> {
    let n = header_len(patch);
    let mut h = fwdelta_format::Header::parse(&patch[..n]).unwrap();
    edit(&mut h);
    let mut out = h.encode();
    out.extend_from_slice(&patch[n..]);
    out
}

fn info_json(patch: &Path) -> serde_json::Value {
    let run = fwdelta([OsStr::new("info"), patch.as_os_str(), OsStr::new("--json")]);
    run.assert_ok();
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("info --json is not JSON: {e}\n{}", run.describe()))
}

// ---------------------------------------------------------------- round trips

fn round_trip(pair: &str) {
    let fx = Fixture::new(pair);
    assert!(fx.patch_bytes().len() > header_len(&fx.patch_bytes()) + fwdelta_format::CHECK_LEN);

    // Default (not quiet): success, the new image byte for byte.
    let run = fx.apply_with(&fx.old, &fx.patch_bytes(), &[]);
    run.assert_ok();
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
    assert_eq!(listing(&fx.out_dir), ["image.bin"], "temporary file left");

    // Quiet diff and apply print nothing at all, and replace an existing output.
    let patch2 = fx.dir.path().join("quiet.fwd");
    let run = fwdelta([
        OsStr::new("diff"),
        fx.old.as_os_str(),
        fx.new.as_os_str(),
        OsStr::new("-o"),
        patch2.as_os_str(),
        OsStr::new("-q"),
    ]);
    run.assert_ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    fs::write(fx.out(), b"stale").unwrap();
    let out = fx.out();
    let run = fwdelta([
        OsStr::new("apply"),
        fx.old.as_os_str(),
        patch2.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("-q"),
    ]);
    run.assert_ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
    assert_eq!(listing(&fx.out_dir), ["image.bin"], "temporary file left");
    // Inputs untouched by either command.
    assert_eq!(
        fs::read(&fx.old).unwrap(),
        fs::read(testdata(pair).join("old")).unwrap()
    );
}

#[test]
fn round_trip_cortex_m4() {
    round_trip("fw-cortex-m4");
}

#[test]
fn round_trip_x86_64() {
    round_trip("fw-x86-64");
}

#[test]
fn executable_aware_diff_is_reported_and_checked() {
    let fx = Fixture::new("fw-x86-64");
    let patch = fx.dir.path().join("aware.fwd");
    let diff = |extra: &[&str]| {
        let mut args = vec![
            OsStr::new("diff"),
            fx.old.as_os_str(),
            fx.new.as_os_str(),
            OsStr::new("-o"),
            patch.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        fwdelta(args)
    };
    let run = diff(&["--arch", "x86-64"]);
    run.assert_ok();
    assert!(
        run.stderr.contains("executable-aware (x86-64"),
        "{}",
        run.describe()
    );
    let aware = fs::read(&patch).unwrap();
    assert!(
        aware.len() < fx.patch_bytes().len(),
        "not smaller than plain"
    );
    assert_eq!(info_json(&patch)["code"]["arch"], "x86-64");
    let run = fx.apply_with(&fx.old, &aware, &[]);
    run.assert_ok();
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());

    // clap's own usage message (several lines), exit 2
    let run = diff(&["--arch", "sparc"]);
    assert_eq!(run.code, 2, "{}", run.describe());
    assert!(
        run.stderr.contains("expected auto, none"),
        "{}",
        run.describe()
    );
    diff(&["--arch", "x86-64", "--in-place"]).assert_error(1, &["--in-place"]);
}

// ----------------------------------------------------------- apply refusals

#[test]
fn apply_refuses_truncated_patches() {
    let fx = Fixture::new("fw-cortex-m4");
    let patch = fx.patch_bytes();
    let len = patch.len();
    for cut in [0, 10, 50, header_len(&patch), len / 2, len - 1] {
        fx.refuse(&patch[..cut], &[], EXIT_BAD_PATCH, &["truncated"]);
    }
}

#[test]
fn apply_refuses_empty_patch() {
    let fx = Fixture::new("fw-cortex-m4");
    fx.refuse(b"", &[], EXIT_BAD_PATCH, &["truncated"]);
}

#[test]
fn apply_refuses_flipped_header_byte() {
    let fx = Fixture::new("fw-cortex-m4");
    let patch = fx.patch_bytes();
    // old-image check, new hash, the varints (lengths, count, claim), the
    // header check itself.
    let end = header_len(&patch);
    for at in [20, 40, 68, end - 1] {
        let mut bad = patch.clone();
        bad[at] ^= 0x01;
        fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["corrupt"]);
    }
    // Magic.
    let mut bad = patch.clone();
    bad[1] ^= 0x20;
    fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["not an fwdelta patch"]);
}

#[test]
fn apply_refuses_flipped_segment_payload_byte() {
    let fx = Fixture::new("fw-cortex-m4");
    let patch = fx.patch_bytes();
    let (payload_at, payload_len) = first_payload(&patch);
    assert!(
        payload_len > 4,
        "first segment payload is {payload_len} bytes"
    );
    for at in [
        payload_at,
        payload_at + payload_len / 2,
        payload_at + payload_len - 1,
    ] {
        let mut bad = patch.clone();
        bad[at] ^= 0x01;
        fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["corrupt"]);
    }
}

/// The last segment has no check: the new image's hash is what refuses
/// damage there.
#[test]
fn apply_refuses_flipped_last_bytes() {
    let fx = Fixture::new("fw-cortex-m4");
    let patch = fx.patch_bytes();
    let len = patch.len();
    for at in [len - fwdelta_format::CHECK_LEN, len - 1] {
        let mut bad = patch.clone();
        bad[at] ^= 0x80;
        fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["corrupt"]);
    }
}

#[test]
fn apply_refuses_other_old_image() {
    let fx = Fixture::new("fw-cortex-m4");
    let patch = fx.patch_bytes();

    // Same length, one byte different.
    let same_len = fx.dir.path().join("other-same-len");
    let mut bytes = fs::read(&fx.old).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&same_len, &bytes).unwrap();
    fx.refuse_with_old(&same_len, &patch, &[], EXIT_WRONG_OLD, &["wrong old image"]);

    // Different length (one byte longer, same prefix).
    let longer = fx.dir.path().join("other-longer");
    let mut bytes = fs::read(&fx.old).unwrap();
    bytes.push(0);
    fs::write(&longer, &bytes).unwrap();
    fx.refuse_with_old(&longer, &patch, &[], EXIT_WRONG_OLD, &["wrong old image"]);

    // The new image is not the old one either.
    fx.refuse_with_old(&fx.new, &patch, &[], EXIT_WRONG_OLD, &["wrong old image"]);
}

#[test]
fn apply_refuses_unknown_format_version() {
    let fx = Fixture::new("fw-cortex-m4");
    let mut bad = fx.patch_bytes();
    bad[VERSION_AT] = fwdelta_format::FORMAT_VERSION + 1;
    // Without a matching header check this is damage, not a newer version.
    fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["corrupt"]);
    // With the header check re-sealed it is a genuinely newer version.
    let mut bad = fx.patch_bytes();
    reseal(&mut bad, VERSION_AT, &[fwdelta_format::FORMAT_VERSION + 1]);
    fx.refuse(
        &bad,
        &[],
        EXIT_UNSUPPORTED,
        &["unsupported patch format version"],
    );
    // A patch in the older container (8-byte magic) is an old version too.
    let mut legacy = fwdelta_format::LEGACY_MAGIC.to_vec();
    legacy.extend_from_slice(&fx.patch_bytes()[8..]);
    fx.refuse(&legacy, &[], EXIT_UNSUPPORTED, &["version 1 or 2"]);
}

#[test]
fn apply_refuses_absurd_new_size() {
    let fx = Fixture::new("fw-cortex-m4");
    for size in [1u64 << 62, (1u64 << 40) + 1] {
        let bad = with_header(&fx.patch_bytes(), |h| h.new_len = size);
        fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["absurd"]);
    }
}

#[test]
fn reseal_helper_produces_a_valid_header() {
    // Guards the absurd-size and version tests: re-sealing or re-encoding an
    // unchanged header must give back the same patch, so the refusals above
    // are about the field, not the check.
    let fx = Fixture::new("fw-cortex-m4");
    let mut patch = fx.patch_bytes();
    let version = patch[VERSION_AT..VERSION_AT + 1].to_vec();
    reseal(&mut patch, VERSION_AT, &version);
    assert_eq!(patch, fx.patch_bytes());
    assert_eq!(with_header(&patch, |_| {}), fx.patch_bytes());
}

#[test]
fn apply_refuses_garbage() {
    let fx = Fixture::new("fw-cortex-m4");
    let garbage = fwdelta_testkit::noise(0x9e37_79b9_7f4a_7c15, 4096);
    fx.refuse(&garbage, &[], EXIT_BAD_PATCH, &["not an fwdelta patch"]);
    // A text file.
    fx.refuse(
        b"this is not a patch, just some text\n",
        &[],
        EXIT_BAD_PATCH,
        &["not an fwdelta patch"],
    );
}

#[test]
fn apply_refuses_trailing_garbage() {
    let fx = Fixture::new("fw-cortex-m4");
    for extra in [&b"x"[..], &b"\0\0\0\0junk after the last segment"[..]] {
        let mut bad = fx.patch_bytes();
        bad.extend_from_slice(extra);
        fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["unexpected data"]);
    }
    // A second copy of the whole patch appended.
    let mut bad = fx.patch_bytes();
    bad.extend_from_slice(&fx.patch_bytes());
    fx.refuse(&bad, &[], EXIT_BAD_PATCH, &["unexpected data"]);
}

#[test]
fn apply_refuses_patch_over_memory_limit() {
    let fx = Fixture::new("fw-cortex-m4");
    let claim = info_json(&fx.patch)["apply_memory"].as_u64().unwrap();
    fx.refuse(
        &fx.patch_bytes(),
        &["--memory-limit", "100KiB"],
        EXIT_LIMITS,
        &["memory"],
    );
    fx.refuse(
        &fx.patch_bytes(),
        &["--memory-limit", &(claim - 1).to_string()],
        EXIT_LIMITS,
        &["memory"],
    );
    // The same patch applies under a limit equal to its own claim.
    let run = fx.apply_with(
        &fx.old,
        &fx.patch_bytes(),
        &["--memory-limit", &claim.to_string(), "-q"],
    );
    run.assert_ok();
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
}

#[test]
fn apply_refuses_patch_over_max_size() {
    let fx = Fixture::new("fw-cortex-m4");
    fx.refuse(
        &fx.patch_bytes(),
        &["--max-size", "10"],
        EXIT_LIMITS,
        &["limit"],
    );
    let new_len = fs::metadata(&fx.new).unwrap().len();
    fx.refuse(
        &fx.patch_bytes(),
        &["--max-size", &(new_len - 1).to_string()],
        EXIT_LIMITS,
        &["limit"],
    );
    let run = fx.apply_with(
        &fx.old,
        &fx.patch_bytes(),
        &["--max-size", &new_len.to_string(), "-q"],
    );
    run.assert_ok();
}

#[test]
fn failed_apply_leaves_existing_output_untouched() {
    let fx = Fixture::new("fw-cortex-m4");
    fs::write(fx.out(), b"precious").unwrap();
    let patch = fx.patch_bytes();
    let len = patch.len();

    let mut corrupt = patch.clone();
    corrupt[len - 1] ^= 1;
    let mut payload = patch.clone();
    payload[first_payload(&patch).0 + 2] ^= 1;
    fx.refuse(&patch[..len / 2], &[], EXIT_BAD_PATCH, &["truncated"]);
    fx.refuse(&patch[..len - 1], &[], EXIT_BAD_PATCH, &["truncated"]);
    fx.refuse(&corrupt, &[], EXIT_BAD_PATCH, &["corrupt"]);
    fx.refuse(&payload, &[], EXIT_BAD_PATCH, &["corrupt"]);
    fx.refuse(&patch, &["--max-size", "10"], EXIT_LIMITS, &["limit"]);
    fx.refuse_with_old(&fx.new, &patch, &[], EXIT_WRONG_OLD, &["wrong old image"]);

    assert_eq!(fs::read(fx.out()).unwrap(), b"precious");
    assert_eq!(listing(&fx.out_dir), ["image.bin"]);
}

#[test]
fn apply_refuses_output_that_is_an_input() {
    let fx = Fixture::new("fw-cortex-m4");
    let old_before = fs::read(&fx.old).unwrap();
    let patch_before = fx.patch_bytes();
    let dir_before = listing(fx.dir.path());
    let dotted = fx.dir.path().join(".").join("old");
    let hard_link = fx.dir.path().join("old-link");
    fs::hard_link(&fx.old, &hard_link).unwrap();
    let dir_before_link = {
        let mut d = dir_before.clone();
        d.push("old-link".into());
        d.sort();
        d
    };
    for output in [&fx.old, &dotted, &hard_link, &fx.patch] {
        let run = fwdelta([
            OsStr::new("apply"),
            fx.old.as_os_str(),
            fx.patch.as_os_str(),
            OsStr::new("-o"),
            output.as_os_str(),
        ]);
        assert_ne!(
            run.code,
            0,
            "-o {} accepted\n{}",
            output.display(),
            run.describe()
        );
        run.assert_error(EXIT_FAILURE, &["same file"]);
        assert_eq!(fs::read(&fx.old).unwrap(), old_before, "old image modified");
        assert_eq!(fx.patch_bytes(), patch_before, "patch modified");
        assert_eq!(listing(fx.dir.path()), dir_before_link, "file left behind");
    }
}

#[test]
fn apply_missing_inputs_fail_with_one_line() {
    let fx = Fixture::new("fw-cortex-m4");
    let missing = fx.dir.path().join("does-not-exist");
    let out = fx.out();
    let run = fwdelta([
        OsStr::new("apply"),
        missing.as_os_str(),
        fx.patch.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    run.assert_error(EXIT_FAILURE, &["does-not-exist"]);
    assert!(listing(&fx.out_dir).is_empty());

    let run = fwdelta([
        OsStr::new("apply"),
        fx.old.as_os_str(),
        missing.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    run.assert_error(EXIT_FAILURE, &["does-not-exist"]);
    assert!(listing(&fx.out_dir).is_empty());

    // Output directory that does not exist.
    let nowhere = fx.dir.path().join("no-such-dir").join("image.bin");
    let run = fwdelta([
        OsStr::new("apply"),
        fx.old.as_os_str(),
        fx.patch.as_os_str(),
        OsStr::new("-o"),
        nowhere.as_os_str(),
    ]);
    run.assert_error(EXIT_FAILURE, &[]);
    assert!(!nowhere.exists());
}

// ------------------------------------------------------------ diff options

fn diff_refused(extra: &[&str], old: Option<&Path>, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let default_old = testdata("fw-cortex-m4").join("old");
    let old = old.unwrap_or(&default_old);
    let new = testdata("fw-cortex-m4").join("new");
    let patch = dir.path().join("patch.fwd");
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("diff"),
        old.as_os_str(),
        new.as_os_str(),
        OsStr::new("-o"),
        patch.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let run = fwdelta(args);
    run.assert_error(EXIT_FAILURE, needles);
    assert!(
        listing(dir.path()).is_empty(),
        "diff left files behind: {:?}",
        listing(dir.path())
    );
}

#[test]
fn diff_refuses_too_small_apply_memory() {
    // 64 KiB is the smallest budget (stored payloads); below it, refused.
    diff_refused(
        &["--apply-memory", "63KiB"],
        None,
        &["minimum of 65536 bytes"],
    );
}

#[test]
fn tiny_budget_uses_stored_payloads_and_round_trips() {
    let fx = Fixture::new("fw-x86-64");
    let (patch, run) = fx.diff_to("tiny.fwd", &["--apply-memory", "64KiB", "-q"]);
    run.assert_ok();
    let v = info_json(&patch);
    assert_eq!(v["codec"], "stored");
    assert!(v["apply_memory"].as_u64().unwrap() <= 64 << 10);
    let run = fx.apply_with(
        &fx.old,
        &fs::read(&patch).unwrap(),
        &["--memory-limit", "64KiB", "-q"],
    );
    run.assert_ok();
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
}

#[test]
fn diff_refuses_bad_level() {
    diff_refused(&["--level", "30"], None, &["level"]);
    diff_refused(&["--level", "0"], None, &["level"]);
}

#[test]
fn codec_zstd_is_chosen_on_request_and_round_trips() {
    let fx = Fixture::new("fw-x86-64");
    let (patch, run) = fx.diff_to("zstd.fwd", &["--codec", "zstd", "-q"]);
    run.assert_ok();
    assert_eq!(info_json(&patch)["codec"], "zstd");
    assert_eq!(info_json(&fx.patch)["codec"], "lzma2");
    fx.apply_with(&fx.old, &fs::read(&patch).unwrap(), &["-q"])
        .assert_ok();
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
    // clap's own usage message (several lines), exit 2, nothing written
    let (bad, run) = fx.diff_to("gzip.fwd", &["--codec", "gzip"]);
    assert_eq!(run.code, 2, "{}", run.describe());
    assert!(
        run.stderr.contains("expected lzma2 or zstd"),
        "{}",
        run.describe()
    );
    assert!(!bad.exists());
}

#[test]
fn fast_diff_round_trips_and_conflicts_with_level() {
    let fx = Fixture::new("fw-x86-64");
    let (patch, run) = fx.diff_to("fast.fwd", &["--fast", "-q"]);
    run.assert_ok();
    fx.apply_with(&fx.old, &fs::read(&patch).unwrap(), &["-q"])
        .assert_ok();
    assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
    // --fast is a level: naming both is a usage error, nothing written.
    let (bad, run) = fx.diff_to("both.fwd", &["--fast", "--level", "19"]);
    assert_eq!(run.code, 2, "{}", run.describe());
    assert!(run.stderr.contains("--fast"), "{}", run.describe());
    assert!(!bad.exists());
}

#[test]
fn layout_is_chosen_on_request_and_round_trips() {
    let fx = Fixture::new("fw-x86-64");
    for (layout, name) in [
        ("modelled", "split-streams-modelled"),
        ("split", "split-streams"),
        ("interleaved", "interleaved-records"),
    ] {
        let (patch, run) = fx.diff_to(&format!("{layout}.fwd"), &["--layout", layout, "-q"]);
        run.assert_ok();
        assert_eq!(info_json(&patch)["layout"], name);
        fx.apply_with(&fx.old, &fs::read(&patch).unwrap(), &["-q"])
            .assert_ok();
        assert_eq!(fs::read(fx.out()).unwrap(), fs::read(&fx.new).unwrap());
    }
    // a budget without room for three decoders: one line, exit 1, nothing written
    let (small, run) = fx.diff_to(
        "small.fwd",
        &["--layout", "split", "--apply-memory", "300KiB"],
    );
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(
        run.stderr.contains("the split-streams layout needs"),
        "{}",
        run.describe()
    );
    assert!(!small.exists());
    // the diff model's tables alone take more than 1 MiB: at 1 MiB the
    // modelled layout is refused and automatic falls back to split
    let (two, run) = fx.diff_to(
        "two.fwd",
        &["--layout", "modelled", "--apply-memory", "1MiB"],
    );
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(
        run.stderr
            .contains("the split-streams-modelled layout needs"),
        "{}",
        run.describe()
    );
    assert!(!two.exists());
    let (auto, run) = fx.diff_to("auto1.fwd", &["--apply-memory", "1MiB", "-q"]);
    run.assert_ok();
    assert_ne!(info_json(&auto)["layout"], "split-streams-modelled");
    assert!(info_json(&auto)["apply_memory"].as_u64().unwrap() <= 1 << 20);
    let (bad, run) = fx.diff_to("bad.fwd", &["--layout", "columns"]);
    assert_eq!(run.code, 2, "{}", run.describe());
    assert!(!bad.exists());
}

#[test]
fn diff_refuses_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    diff_refused(&[], Some(&missing), &["does-not-exist"]);
}

// -------------------------------------------------------------------- info

#[test]
fn info_human_and_json() {
    let fx = Fixture::new("fw-cortex-m4");
    let v = info_json(&fx.patch);
    let old_len = fs::metadata(&fx.old).unwrap().len();
    let new_len = fs::metadata(&fx.new).unwrap().len();
    assert_eq!(
        v["format_version"],
        u64::from(fwdelta_format::FORMAT_VERSION)
    );
    assert_eq!(v["old"]["len"].as_u64(), Some(old_len));
    assert_eq!(v["new"]["len"].as_u64(), Some(new_len));
    assert_eq!(v["codec"], "lzma2");
    assert_eq!(v["patch_len"].as_u64(), Some(fx.patch_bytes().len() as u64));
    assert_eq!(
        v["old"]["blake3_prefix"].as_str(),
        Some(&blake3::hash(&fs::read(&fx.old).unwrap()).to_hex()[..2 * fwdelta_format::CHECK_LEN])
    );
    assert_eq!(
        v["new"]["blake3"].as_str(),
        Some(blake3::hash(&fs::read(&fx.new).unwrap()).to_hex().as_str())
    );
    let window_log = v["window_log"].as_u64().expect("window_log");
    assert!((10..=30).contains(&window_log), "window_log {window_log}");
    let apply_memory = v["apply_memory"].as_u64().expect("apply_memory");
    assert!(apply_memory >= 1 << window_log);
    assert!(apply_memory <= 2 << 20, "default budget is 2 MiB");
    let segments = v["segments"].as_array().expect("segments array");
    assert!(!segments.is_empty());
    let covered: u64 = segments
        .iter()
        .map(|s| s["new_len"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, new_len);

    let run = fwdelta([OsStr::new("info"), fx.patch.as_os_str()]);
    run.assert_ok();
    assert!(
        run.stdout.contains(&format!(
            "format version {}",
            fwdelta_format::FORMAT_VERSION
        )),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains(&format!("segments: {},", segments.len())),
        "{}",
        run.describe()
    );
}

#[test]
fn info_refuses_corrupt_patch() {
    let fx = Fixture::new("fw-cortex-m4");
    // Several segments: `info` verifies the checks of all but the last (which
    // has none; applying it verifies it, by the new image's hash).
    let (multi, run) = fx.diff_to("multi.fwd", &["--segment-size", "256", "-q"]);
    run.assert_ok();
    let patch = fs::read(multi).unwrap();
    assert!(
        fwdelta_apply::inspect(&patch[..]).unwrap().segments.len() > 1,
        "want several segments"
    );
    let bad_path = fx.dir.path().join("bad.fwd");
    let len = patch.len();
    let (payload_at, payload_len) = first_payload(&patch);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = patch.clone();
                b[payload_at + payload_len] ^= 1;
                b
            },
            "check mismatch",
        ),
        (
            {
                let mut b = patch.clone();
                b[20] ^= 1;
                b
            },
            "corrupt",
        ),
        (
            {
                let mut b = patch.clone();
                b[first_payload(&patch).0 + 1] ^= 1;
                b
            },
            "corrupt",
        ),
        (patch[..len - 1].to_vec(), "truncated"),
        (
            {
                let mut b = patch.clone();
                b.push(0);
                b
            },
            "unexpected data",
        ),
    ];
    for (bytes, needle) in cases {
        fs::write(&bad_path, &bytes).unwrap();
        for json in [false, true] {
            let mut args = vec![OsStr::new("info"), bad_path.as_os_str()];
            if json {
                args.push(OsStr::new("--json"));
            }
            let run = fwdelta(args);
            run.assert_error(EXIT_BAD_PATCH, &[needle]);
            assert_eq!(run.stdout, "", "{}", run.describe());
        }
    }
}

// ------------------------------------------------------------------- bench

fn copy_pair(pair: &str, into: &Path) {
    let d = into.join(pair);
    fs::create_dir(&d).unwrap();
    fs::copy(testdata(pair).join("old"), d.join("old")).unwrap();
    fs::copy(testdata(pair).join("new"), d.join("new")).unwrap();
}

#[test]
fn bench_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    copy_pair("fw-cortex-m4", dir.path());
    copy_pair("edge-one-byte", dir.path());
    // Not a pair: ignored.
    fs::create_dir(dir.path().join("not-a-pair")).unwrap();
    fs::write(dir.path().join("not-a-pair").join("old"), b"x").unwrap();

    let run = fwdelta([OsStr::new("bench"), dir.path().as_os_str()]);
    run.assert_ok();
    for pair in ["fw-cortex-m4", "edge-one-byte"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {pair} |"))),
            "table has no row for {pair}\n{}",
            run.describe()
        );
    }
    assert!(!run.stdout.contains("not-a-pair"), "{}", run.describe());
    assert!(!run.stdout.contains("FAILED"), "{}", run.describe());

    let run = fwdelta([
        OsStr::new("bench"),
        dir.path().as_os_str(),
        OsStr::new("--json"),
    ]);
    run.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("bench --json is not JSON: {e}\n{}", run.describe()));
    let pairs = v["pairs"].as_array().expect("pairs array");
    let mut names: Vec<&str> = pairs.iter().map(|p| p["pair"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["edge-one-byte", "fw-cortex-m4"]);
    for p in pairs {
        assert_eq!(p["ok"], true, "pair failed: {p}");
        assert!(p["patch_len"].as_u64().unwrap() > 0, "{p}");
    }
    // Bench writes nothing into the pairs directory.
    assert_eq!(
        listing(dir.path()),
        ["edge-one-byte", "fw-cortex-m4", "not-a-pair"]
    );
}

#[test]
fn bench_without_pairs_fails() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("half")).unwrap();
    fs::write(dir.path().join("half").join("new"), b"x").unwrap();
    for json in [false, true] {
        let mut args = vec![OsStr::new("bench"), dir.path().as_os_str()];
        if json {
            args.push(OsStr::new("--json"));
        }
        let run = fwdelta(args);
        assert_ne!(run.code, 0, "{}", run.describe());
        run.assert_error(EXIT_FAILURE, &["no pairs"]);
    }
    let missing = dir.path().join("does-not-exist");
    let run = fwdelta([OsStr::new("bench"), missing.as_os_str()]);
    run.assert_error(EXIT_FAILURE, &["does-not-exist"]);
}

// ------------------------------------------------------------ apply memory

#[test]
fn apply_memory_option_sets_window_and_round_trips() {
    // One segment holding a 3 MiB stream, larger than the default budget's
    // window, so the budget decides the window.
    let fx = Fixture::from_bytes(&noise(1, 3 << 20), &noise(2, 3 << 20));
    let diff_with = |out: &Path, extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("diff"),
            fx.old.as_os_str(),
            fx.new.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("--segment-size"),
            OsStr::new("64MiB"),
            OsStr::new("--level"),
            OsStr::new("3"),
            OsStr::new("-q"),
        ];
        args.extend(extra.iter().map(OsStr::new));
        fwdelta(args).assert_ok();
    };
    let default_patch = fx.dir.path().join("default-window.fwd");
    diff_with(&default_patch, &[]);
    let default = info_json(&default_patch);
    let big = fx.dir.path().join("big-window.fwd");
    diff_with(&big, &["--apply-memory", "8MiB"]);
    let v = info_json(&big);
    let wl_default = default["window_log"].as_u64().unwrap();
    let wl_big = v["window_log"].as_u64().unwrap();
    assert!(
        wl_big > wl_default,
        "8MiB window 2^{wl_big} is not larger than default 2^{wl_default}"
    );
    let mem_default = default["apply_memory"].as_u64().unwrap();
    let mem_big = v["apply_memory"].as_u64().unwrap();
    assert!(mem_big > mem_default);
    assert!(
        mem_big <= 8 << 20,
        "claim {mem_big} exceeds the 8 MiB budget"
    );
    assert!(mem_big > 1 << 20, "claim {mem_big} fits the default budget");

    let out = fx.out();
    let run = fwdelta([
        OsStr::new("apply"),
        fx.old.as_os_str(),
        big.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("-q"),
    ]);
    run.assert_ok();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.new).unwrap());

    // An applier limited to the default budget refuses it.
    fs::remove_file(&out).unwrap();
    let bytes = fs::read(&big).unwrap();
    fx.refuse(
        &bytes,
        &["--memory-limit", "1MiB"],
        EXIT_LIMITS,
        &["memory"],
    );
}

/// `apply -j N` decodes several segments at once: whatever N, and whatever
/// the memory limit lets it run, the same image and nothing left beside it;
/// a damaged last segment (which has no check of its own) is refused with
/// exit 3 and no output.
#[test]
fn apply_threads_give_the_same_image_and_the_same_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        testdata("fw-x86-64").join("old"),
        testdata("fw-x86-64").join("new"),
    );
    let patch = dir.path().join("p.fwd");
    diff_ok(&old, &new, &patch, &["--segment-size", "300"]);
    let bytes = fs::read(&patch).unwrap();
    let header = fwdelta_format::Header::parse(&bytes[..header_len(&bytes)]).unwrap();
    assert!(
        header.segment_count >= 3,
        "{} segments",
        header.segment_count
    );
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("image.bin");
    let just_under_two = (2 * header.apply_memory - 1).to_string();
    for extra in [
        vec!["-j", "1"],
        vec!["-j", "2"],
        vec!["-j", "16"],
        vec!["-j", "4", "--memory-limit", just_under_two.as_str()],
    ] {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("apply"),
            old.as_os_str(),
            patch.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("-q"),
        ];
        args.extend(extra.iter().map(OsStr::new));
        fwdelta(&args).assert_ok();
        assert_eq!(
            fs::read(&out).unwrap(),
            fs::read(&new).unwrap(),
            "{extra:?}"
        );
        assert_eq!(listing(&out_dir), ["image.bin"], "{extra:?}");
        fs::remove_file(&out).unwrap();
    }
    let mut bad = bytes.clone();
    let last = bad.len() - 2;
    bad[last] ^= 0x40;
    fs::write(&patch, &bad).unwrap();
    let run = fwdelta([
        OsStr::new("apply"),
        old.as_os_str(),
        patch.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("-j"),
        OsStr::new("4"),
    ]);
    assert_eq!(run.code, EXIT_BAD_PATCH, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
}

/// An old image that is a FIFO (nothing ever writes to it) is refused at
/// once with one line, exit 1, and nothing written: `apply` used to block
/// forever in `open(2)` waiting for a writer.
#[test]
fn apply_refuses_a_fifo_as_the_old_image_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("old.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let pair = testdata("fw-cortex-m4");
    let patch = dir.path().join("p.fwd");
    diff_ok(&pair.join("old"), &pair.join("new"), &patch, &[]);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let image = out_dir.join("image.bin");
    let run = fwdelta_within_20s([
        OsStr::new("apply"),
        fifo.as_os_str(),
        patch.as_os_str(),
        OsStr::new("-o"),
        image.as_os_str(),
    ]);
    run.assert_error(
        EXIT_FAILURE,
        &["old image", "not a regular file or block device"],
    );
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
}

/// `diff --json` and `apply --json`: one JSON object on stdout that says
/// what was made (sizes that match the files, the new image's BLAKE3 and
/// the signed patch's identity), nothing on stderr with `-q`; a refused
/// apply prints no JSON, only its one error line.
#[test]
fn diff_and_apply_report_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (testdata("fw-x86-64/old"), testdata("fw-x86-64/new"));
    let patch = dir.path().join("p.fwd");
    let run = diff_quiet(&old, &new, &patch, &["--json"]);
    run.assert_ok();
    assert!(run.stderr.is_empty(), "{}", run.describe());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    let patch_len = fs::metadata(&patch).unwrap().len();
    assert_eq!(v["patch_bytes"], patch_len, "{v}");
    assert_eq!(v["unsigned_bytes"], patch_len, "{v}");
    assert_eq!(v["old_bytes"], fs::metadata(&old).unwrap().len(), "{v}");
    assert_eq!(v["new_bytes"], fs::metadata(&new).unwrap().len(), "{v}");
    assert_eq!(
        v["diff_bytes"].as_u64().unwrap() + v["literal_bytes"].as_u64().unwrap(),
        fs::metadata(&new).unwrap().len(),
        "{v}"
    );
    assert!(v["segments"].as_u64().unwrap() >= 1, "{v}");

    let out = dir.path().join("new.bin");
    let apply = |patch: &Path, out: &Path| {
        fwdelta([
            OsStr::new("apply"),
            old.as_os_str(),
            patch.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("-q"),
            OsStr::new("--json"),
        ])
    };
    let run = apply(&patch, &out);
    run.assert_ok();
    assert!(run.stderr.is_empty(), "{}", run.describe());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    let made = fs::read(&out).unwrap();
    assert_eq!(made, fs::read(&new).unwrap());
    assert_eq!(
        v["new_blake3"],
        blake3::hash(&made).to_hex().as_str(),
        "{v}"
    );
    assert_eq!(v["new_bytes"], made.len(), "{v}");
    assert_eq!(v["patch_bytes"], patch_len, "{v}");
    assert_eq!(v["patch_id"], serde_json::Value::Null, "unsigned: {v}");

    // The committed signed vector carries its identity and release.
    let signed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/signed/fw-cortex-m4.fwd");
    let (old4, out4) = (testdata("fw-cortex-m4/old"), dir.path().join("new4.bin"));
    let run = fwdelta([
        OsStr::new("apply"),
        old4.as_os_str(),
        signed.as_os_str(),
        OsStr::new("-o"),
        out4.as_os_str(),
        OsStr::new("--json"),
    ]);
    run.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(v["release"]["product"], "acme-t300", "{v}");
    assert_eq!(v["patch_id"].as_str().map(str::len), Some(64), "{v}");

    // Refused (the wrong old image): no JSON, one error line, exit 4.
    let refused = fwdelta([
        OsStr::new("apply"),
        new.as_os_str(),
        patch.as_os_str(),
        OsStr::new("-o"),
        dir.path().join("never.bin").as_os_str(),
        OsStr::new("--json"),
    ]);
    refused.assert_error(4, &["old image"]);
    assert!(refused.stdout.is_empty(), "{}", refused.describe());
}

/// `diff` names its phase on a spinner when stderr is a terminal (here a
/// pseudo-terminal from util-linux's `script`, with the spinner's delay set
/// to 0), and prints none when stderr is piped or with `-q`.
#[test]
fn diff_shows_its_phases_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(3, 3 << 20);
    let mut new = old.clone();
    for at in (0..new.len()).step_by(1000) {
        new[at] ^= 0x21;
    }
    let (o, n, p) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("p.fwd"),
    );
    fs::write(&o, &old).unwrap();
    fs::write(&n, &new).unwrap();
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let on_tty = |quiet: &str| {
        let log = dir.path().join("tty.log");
        let cmd = format!(
            "{exe} diff {} {} -o {} {quiet}",
            o.display(),
            n.display(),
            p.display()
        );
        let st = Command::new("script")
            .args(["-qec", &cmd])
            .arg(&log)
            .env("FWDELTA_PROGRESS_AFTER_MS", "0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("cannot run `script` (util-linux; apt-get install bsdutils)");
        assert!(st.success());
        String::from_utf8_lossy(&fs::read(&log).unwrap()).into_owned()
    };
    let seen = on_tty("");
    // Which phases a tick catches depends on the machine's load; at least
    // one, by its name.
    let phases = [
        "diff: hashing, sorting and matching",
        "diff: predicting code references, sorting again",
        "diff: probing candidate patches",
        "diff: encoding",
    ];
    assert!(phases.iter().any(|p| seen.contains(p)), "{seen}");
    assert!(
        seen.contains("p.fwd: "),
        "the summary is printed too: {seen}"
    );
    let quiet = on_tty("-q");
    assert!(!quiet.contains("diff: "), "-q: {quiet}");
    // Piped: the summary alone.
    let mut cmd = Command::new(exe);
    cmd.args([
        OsStr::new("diff"),
        o.as_os_str(),
        n.as_os_str(),
        OsStr::new("-o"),
        p.as_os_str(),
    ])
    .env("FWDELTA_PROGRESS_AFTER_MS", "0");
    let run = Run::of(cmd.output().unwrap());
    run.assert_ok();
    assert!(!run.stderr.contains("diff: "), "{}", run.describe());
    assert!(run.stderr.contains("p.fwd: "), "{}", run.describe());
}

/// `-` for the patch: `diff -o -` writes it to stdout (the same bytes as
/// to a file, and no file named `-`), `apply OLD -` reads it from stdin; a
/// damaged patch from stdin is refused like a damaged file, leaving nothing
/// in the output's directory; `-` where it cannot work is refused in one line.
#[test]
fn patches_go_through_stdout_and_stdin() {
    use std::io::Write as _;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (testdata("fw-x86-64/old"), testdata("fw-x86-64/new"));
    let exe = env!("CARGO_BIN_EXE_fwdelta");
    let out = Command::new(exe)
        .current_dir(dir.path())
        .args([OsStr::new("diff"), old.as_os_str(), new.as_os_str()])
        .args(["-o", "-", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = out.stdout;
    let file = dir.path().join("p.fwd");
    diff_ok(&old, &new, &file, &[]);
    assert_eq!(piped, fs::read(&file).unwrap(), "stdout holds the patch");
    assert!(!dir.path().join("-").exists());

    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    let apply_stdin = |patch: &[u8], target: &Path| {
        let mut child = Command::new(exe)
            .args([OsStr::new("apply"), old.as_os_str(), OsStr::new("-")])
            .args([OsStr::new("-o"), target.as_os_str(), OsStr::new("-q")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(patch).unwrap();
        Run::of(child.wait_with_output().unwrap())
    };
    let target = outdir.join("new.bin");
    apply_stdin(&piped, &target).assert_ok();
    assert_eq!(fs::read(&target).unwrap(), fs::read(&new).unwrap());

    let mut damaged = piped.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x10;
    let refused = apply_stdin(&damaged, &outdir.join("bad.bin"));
    refused.assert_error(3, &[]);
    assert_eq!(
        listing(&outdir),
        ["new.bin"],
        "nothing else in the output's directory"
    );

    let run = fwdelta([
        OsStr::new("diff"),
        old.as_os_str(),
        new.as_os_str(),
        OsStr::new("-o"),
        OsStr::new("-"),
        OsStr::new("--json"),
    ]);
    run.assert_error(1, &["--json"]);
    let run = fwdelta([
        OsStr::new("apply"),
        OsStr::new("--in-place"),
        target.as_os_str(),
        OsStr::new("-"),
    ]);
    run.assert_error(1, &["stdin"]);
}
