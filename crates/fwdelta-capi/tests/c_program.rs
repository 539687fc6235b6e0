//! The C program `tests/c/apply_test.c`, compiled with the system `cc`
//! against the static library cargo built for these tests, applies real
//! patches made by the generator: every layout and codec, fed in pieces of
//! several sizes, resumed after cuts, and refused cleanly on bad input; once
//! under Valgrind.

use fwdelta_diff::{diff, Options};
use fwdelta_format::{Codec, Layout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `FWD_ARENA_OVERHEAD` and `FWD_ARENA_MIN` from the header.
const OVERHEAD: u64 = fwdelta_capi::FWD_ARENA_OVERHEAD as u64;
const ARENA_MIN: u64 = fwdelta_capi::FWD_ARENA_MIN as u64;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static library cargo built for this test binary: `cargo test` builds
/// the crate's staticlib into `deps/` (beside the rlib it links) without
/// copying it up, so take the newest `libfwdelta_capi-*.a` there (built from
/// the same sources; a stale one from an earlier `cargo build` is older).
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    let newest = std::fs::read_dir(deps)
        .expect("read deps")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("libfwdelta_capi-") && n.ends_with(".a")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let (_, lib) = newest.expect("cargo built no libfwdelta_capi-*.a in deps/");
    lib
}

/// Build the static library without default features (plus `args`, e.g.
/// `--features`; `env` for cargo) into `target_dir` (under the repository,
/// reused between runs); its path.
fn build_library(target_dir: &str, args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let target = repo().join(target_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args(["build", "-p", "fwdelta-capi", "--no-default-features"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .envs(env.iter().copied())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/libfwdelta_capi.a")
}

/// Compile the C program against `lib`, as `name`.
fn compile(lib: &Path, name: &str) -> PathBuf {
    compile_with(lib, name, &[])
}

/// [`compile`] with extra compiler arguments (`-D...`).
fn compile_with(lib: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let exe = dir.join(format!("{name}-{}", std::process::id()));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .args(["-D_POSIX_C_SOURCE=200809L"])
        .args(extra)
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/apply_test.c"))
        .arg(lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("cannot run cc (install a C compiler: apt-get install build-essential)");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The C program, compiled once (per test binary) against this build.
fn program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| compile(&staticlib(), "apply_test"))
}

struct Case {
    dir: tempfile::TempDir,
    name: String,
    patch_len: usize,
}

impl Case {
    /// A patch of testdata pair `pair` with `opts`, and its files.
    fn new(pair: &str, opts: &Options) -> Case {
        let src = repo().join("testdata").join(pair);
        let old = std::fs::read(src.join("old")).expect("old");
        let new = std::fs::read(src.join("new")).expect("new");
        let patch = diff(&old, &new, opts).expect("diff").bytes;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("old"), &old).unwrap();
        std::fs::write(dir.path().join("new"), &new).unwrap();
        std::fs::write(dir.path().join("patch"), &patch).unwrap();
        Case {
            dir,
            name: format!("{pair} {:?} {:?}", opts.codec, opts.layout),
            patch_len: patch.len(),
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// Run the program: `mode`, this case's files, `arena` bytes, `chunk`, extra args.
    fn run(
        &self,
        wrapper: &[&str],
        mode: &str,
        arena: u64,
        chunk: usize,
        extra: &[String],
    ) -> Output {
        self.run_with(program(), wrapper, mode, arena, chunk, extra)
    }

    /// The C program's command line for this case's files: `mode`, `arena`
    /// bytes, `chunk`, extra args (the caller adds the environment).
    fn command(&self, mode: &str, arena: u64, chunk: usize, extra: &[&str]) -> Command {
        let mut cmd = Command::new(program());
        self.add_args(&mut cmd, mode, arena, chunk, extra);
        cmd
    }

    /// Append the program's arguments for this case to `cmd`.
    fn add_args<S: AsRef<std::ffi::OsStr>>(
        &self,
        cmd: &mut Command,
        mode: &str,
        arena: u64,
        chunk: usize,
        extra: &[S],
    ) {
        cmd.arg(mode)
            .arg(self.path("old"))
            .arg(self.path("patch"))
            .arg(self.path("new"))
            .arg(arena.to_string())
            .arg(chunk.to_string())
            .args(extra);
    }

    /// [`Case::run`] with the program `exe`.
    fn run_with(
        &self,
        exe: &Path,
        wrapper: &[&str],
        mode: &str,
        arena: u64,
        chunk: usize,
        extra: &[String],
    ) -> Output {
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        self.add_args(&mut cmd, mode, arena, chunk, extra);
        cmd.output().expect("run apply_test")
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `key=N` from the program's "ok" line.
fn field(out: &Output, key: &str) -> u64 {
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("ok "))
        .expect("an ok line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn opts(codec: Codec, layout: Option<Layout>, budget: u64) -> Options {
    Options {
        codec,
        layout,
        apply_memory: budget,
        // Many small segments: checkpoints to resume from.
        segment_cost: 400,
        ..Options::default()
    }
}

/// Every layout with LZMA2, zstd, on both firmware pairs and a larger edge
/// case, each fed whole-ish and in odd small pieces: the output is the new
/// image, and the arena's peak stays within the header's claim plus the
/// overhead the header file states.
#[test]
fn c_program_applies_real_patches_of_every_layout_and_codec() {
    let configs = [
        (Codec::Lzma2, None),
        (Codec::Lzma2, Some(Layout::Split)),
        (Codec::Lzma2, Some(Layout::Interleaved)),
        (Codec::Zstd, None),
    ];
    for pair in ["fw-cortex-m4", "fw-x86-64", "edge-block-moved"] {
        for (codec, layout) in configs {
            let case = Case::new(pair, &opts(codec, layout, 4 << 20));
            let arena = (4 << 20) + OVERHEAD;
            for chunk in [7, 4096] {
                let out = case.run(&[], "apply", arena, chunk, &[]);
                assert!(
                    out.status.success(),
                    "{} chunk {chunk}: {}",
                    case.name,
                    text(&out)
                );
                let (claim, peak) = (field(&out, "claim"), field(&out, "peak"));
                assert!(claim > 0, "{}: no claim read", case.name);
                assert!(
                    peak <= claim + OVERHEAD,
                    "{}: peak {peak} over claim {claim} + {OVERHEAD}",
                    case.name
                );
                assert!(
                    field(&out, "checkpoints") >= 1,
                    "{}: no checkpoint",
                    case.name
                );
            }
        }
    }
}

/// Patches made for the 64 KiB .. 4 MiB budgets apply in an arena of the
/// budget plus the overhead; peak use within it.
#[test]
fn c_program_applies_within_each_budget() {
    for budget in [64u64 << 10, 256 << 10, 1 << 20, 4 << 20] {
        for pair in ["fw-x86-64", "edge-block-moved"] {
            let case = Case::new(pair, &opts(Codec::Lzma2, None, budget));
            let arena = (budget + OVERHEAD).max(ARENA_MIN);
            let out = case.run(&[], "apply", arena, 4096, &[]);
            assert!(
                out.status.success(),
                "{} @ {budget}: {}",
                case.name,
                text(&out)
            );
            let (claim, peak) = (field(&out, "claim"), field(&out, "peak"));
            assert!(
                claim <= budget.max(64 << 10),
                "{}: claim {claim} over budget {budget}",
                case.name
            );
            assert!(
                peak <= arena,
                "{}: peak {peak} over arena {arena}",
                case.name
            );
            eprintln!("{pair} budget {budget}: claim {claim}, arena peak {peak}");
        }
    }
}

/// A cut at many points of the patch, then a resume from the last persisted
/// checkpoint with the non-durable bytes garbled, in the same arena: the
/// output is the new image, and later cuts really resume mid-patch.
#[test]
fn c_program_resumes_after_a_cut() {
    for (codec, layout) in [(Codec::Lzma2, None), (Codec::Zstd, None)] {
        let case = Case::new("fw-x86-64", &opts(codec, layout, 4 << 20));
        let mut resumed_mid_patch = 0;
        for tenth in 0..=10 {
            let cut = case.patch_len * tenth / 10;
            let out = case.run(&[], "resume", 5 << 20, 333, &[cut.to_string()]);
            assert!(
                out.status.success(),
                "{} cut {cut}: {}",
                case.name,
                text(&out)
            );
            let s = String::from_utf8_lossy(&out.stdout);
            if !s.contains("patch offset 0,") {
                resumed_mid_patch += 1;
            }
        }
        assert!(
            resumed_mid_patch >= 5,
            "{}: only {resumed_mid_patch} cuts resumed mid-patch",
            case.name
        );
    }
}

/// A kept partial output that no longer matches its checkpoint is refused
/// with FWD_ERR_PARTIAL_DAMAGED (16), not continued.
#[test]
fn c_program_refuses_a_damaged_partial_output() {
    let case = Case::new("fw-x86-64", &opts(Codec::Lzma2, None, 4 << 20));
    let cut = case.patch_len * 8 / 10;
    let out = case.run(
        &[],
        "resume",
        5 << 20,
        4096,
        &[cut.to_string(), "damage".into()],
    );
    assert_eq!(out.status.code(), Some(100 + 16), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("do not match"),
        "{}",
        text(&out)
    );
}

/// Bad input through C: each refused with its own code and a message.
#[test]
fn c_program_refuses_bad_input_cleanly() {
    let case = Case::new("fw-cortex-m4", &opts(Codec::Lzma2, None, 4 << 20));
    let patch = std::fs::read(case.path("patch")).unwrap();
    let good = case.run(&[], "apply", 5 << 20, 4096, &[]);
    let claim = field(&good, "claim");

    // Another old image: FWD_ERR_WRONG_OLD.
    let other = std::fs::read(repo().join("testdata/fw-x86-64/old")).unwrap();
    std::fs::write(case.path("old"), &other).unwrap();
    let out = case.run(&[], "apply", 5 << 20, 4096, &[]);
    assert_eq!(out.status.code(), Some(104), "{}", text(&out));
    std::fs::copy(repo().join("testdata/fw-cortex-m4/old"), case.path("old")).unwrap();

    // A flipped byte in the body: FWD_ERR_BAD_PATCH.
    let mut bad = patch.clone();
    let at = bad.len() * 2 / 3;
    bad[at] ^= 0x40;
    std::fs::write(case.path("patch"), &bad).unwrap();
    let out = case.run(&[], "apply", 5 << 20, 4096, &[]);
    assert_eq!(out.status.code(), Some(103), "{}", text(&out));

    // Cut short: FWD_ERR_BAD_PATCH (truncated), at finish.
    std::fs::write(case.path("patch"), &patch[..patch.len() - 5]).unwrap();
    let out = case.run(&[], "apply", 5 << 20, 4096, &[]);
    assert_eq!(out.status.code(), Some(103), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("truncated"),
        "{}",
        text(&out)
    );
    std::fs::write(case.path("patch"), &patch).unwrap();

    // An arena one byte short of claim + overhead: FWD_ERR_LIMITS from the
    // header, before anything is written.
    let out = case.run(&[], "apply", claim + OVERHEAD - 1, 4096, &[]);
    assert_eq!(out.status.code(), Some(105), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("memory"),
        "{}",
        text(&out)
    );
    // Exactly enough: applies.
    let out = case.run(&[], "apply", claim + OVERHEAD, 4096, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Below the minimum arena: refused by fwd_applier_new.
    let out = case.run(&[], "apply", ARENA_MIN - 1, 4096, &[]);
    assert_eq!(out.status.code(), Some(105), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("new:"),
        "{}",
        text(&out)
    );
}

/// In-place patches through `fwd_apply_in_place`: applied whole, and with a
/// power loss at region writes from the first to the last, after which a
/// second call with the same region and journal slots finishes the update.
#[test]
fn c_program_applies_in_place_patches_and_finishes_after_a_cut() {
    for pair in ["fw-x86-64", "edge-block-moved"] {
        let o = Options {
            in_place: Some(12),
            ..Options::default()
        };
        let case = Case::new(pair, &o);
        let out = case.run(&[], "inplace", 5 << 20, 0, &[]);
        assert!(out.status.success(), "{pair}: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let writes: u32 = s
            .split("writes_before_cut=")
            .nth(1)
            .and_then(|w| w.trim().parse().ok())
            .unwrap_or_else(|| panic!("{pair}: {s}"));
        assert!(writes >= 4, "{pair}: only {writes} region writes");
        for cut in [1, 2, writes / 3, writes / 2, writes - 1, writes] {
            let out = case.run(&[], "inplace", 5 << 20, cut as usize, &[]);
            assert!(
                out.status.success(),
                "{pair} cut at write {cut}: {}",
                text(&out)
            );
            // The cut really stopped the first call (FWD_ERR_IO).
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("first=1 "),
                "{pair} cut at write {cut}: {}",
                text(&out)
            );
        }
    }
    // An ordinary patch is refused by the in-place entry point (6), and an
    // in-place one for another image (4), the region untouched.
    let ordinary = Case::new("fw-x86-64", &opts(Codec::Lzma2, None, 4 << 20));
    let out = ordinary.run(&[], "inplace", 5 << 20, 0, &[]);
    assert_eq!(out.status.code(), Some(106), "{}", text(&out));
    let other = Case::new(
        "fw-cortex-m4",
        &Options {
            in_place: Some(12),
            ..Options::default()
        },
    );
    std::fs::copy(repo().join("testdata/fw-x86-64/old"), other.path("old")).unwrap();
    let out = other.run(&[], "inplace", 5 << 20, 0, &[]);
    assert_eq!(out.status.code(), Some(104), "{}", text(&out));
}

/// One ordinary apply, one resumed apply and one in-place apply cut by a
/// power loss under Valgrind's memcheck: no invalid access, no
/// uninitialised read, no leak.
#[test]
fn c_program_is_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        let out = Command::new("sh")
            .args(["-c", "apt-get update && apt-get install -y valgrind"])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "cannot install valgrind:\n{}",
            text(&out)
        );
    }
    let vg = [
        "valgrind",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite,possible",
        "--quiet",
    ];
    let case = Case::new("fw-cortex-m4", &opts(Codec::Lzma2, None, 4 << 20));
    let out = case.run(&vg, "apply", 5 << 20, 1000, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let cut = (case.patch_len / 2).to_string();
    let out = case.run(&vg, "resume", 5 << 20, 1000, &[cut]);
    assert!(out.status.success(), "{}", text(&out));
    let in_place = Case::new(
        "fw-cortex-m4",
        &Options {
            in_place: Some(12),
            ..Options::default()
        },
    );
    let out = in_place.run(&vg, "inplace", 5 << 20, 3, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The same, signed, under a policy (fwd_apply_in_place_trusted).
    let signed = sign_expiring(&in_place, in_place.dir.path());
    std::fs::write(in_place.path("patch"), &signed.bytes).unwrap();
    let key_path = signed.key;
    let mut cmd = Command::new(vg[0]);
    cmd.args(&vg[1..])
        .arg(program())
        .env("FWD_TEST_KEY", &key_path);
    in_place.add_args(&mut cmd, "inplace", 5 << 20, 3, &[] as &[&str]);
    let out = cmd.output().expect("valgrind");
    assert!(out.status.success(), "{}", text(&out));
    let id = format!("patch_id {}", signed.id);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
}

/// The library built without the zstd feature (into `target/no-std`, as
/// the no_std build test does) refuses a zstd patch from its header with
/// FWD_ERR_UNSUPPORTED (6), and still applies an LZMA2 one.
#[test]
fn c_library_without_zstd_refuses_zstd_patches_as_unsupported() {
    let lib = build_library("target/no-std", &["--features", "std,lzma"], &[]);
    let exe = compile(&lib, "apply_test_lzma_only");

    let zstd = Case::new("fw-x86-64", &opts(Codec::Zstd, None, 4 << 20));
    let out = zstd.run_with(&exe, &[], "apply", 5 << 20, 4096, &[]);
    assert_eq!(out.status.code(), Some(106), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("zstd codec"),
        "{}",
        text(&out)
    );

    let lzma = Case::new("fw-x86-64", &opts(Codec::Lzma2, None, 4 << 20));
    let out = lzma.run_with(&exe, &[], "apply", 5 << 20, 4096, &[]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Signed patches through `fwd_applier_trust`: the committed signed test
/// vector applies with its key and product (fed whole, and again after a
/// cut: one segment, so it starts over with the policy set again); a key that did not sign it (7), an unsigned patch (7), another
/// product (8) and a higher security counter (9) are refused, before a byte
/// of the new image is written.
#[test]
fn c_program_checks_signatures_and_release_rules() {
    let dir = tempfile::tempdir().unwrap();
    let key = fwdelta_format::key_file::parse_public_key(
        &std::fs::read(repo().join("testdata/signed/release.pub")).unwrap(),
    )
    .expect("release.pub");
    let key_path = dir.path().join("key.bin");
    std::fs::write(&key_path, key).unwrap();
    let mut wrong = key;
    wrong[0] ^= 1;
    let wrong_path = dir.path().join("wrong.bin");
    std::fs::write(&wrong_path, wrong).unwrap();

    let signed = Case::new("fw-cortex-m4", &opts(Codec::Lzma2, None, 4 << 20));
    std::fs::copy(
        repo().join("testdata/signed/fw-cortex-m4.fwd"),
        signed.path("patch"),
    )
    .unwrap();
    let run = |case: &Case, mode: &str, key: &Path, product: &str, counter: u64, extra: &[&str]| {
        let mut cmd = case.command(mode, 5 << 20, 500, extra);
        cmd.env("FWD_TEST_KEY", key)
            .env("FWD_TEST_PRODUCT", product)
            .env("FWD_TEST_MIN_COUNTER", counter.to_string());
        cmd.output().expect("run apply_test")
    };
    let out = run(&signed, "apply", &key_path, "acme-t300", 5, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&signed, "resume", &key_path, "acme-t300", 5, &["900"]);
    assert!(out.status.success(), "{}", text(&out));
    let unsigned = Case::new("fw-cortex-m4", &opts(Codec::Lzma2, None, 4 << 20));
    for (case, key, product, counter, code) in [
        (&signed, &wrong_path, "acme-t300", 5, 107),
        (&signed, &key_path, "acme-t900", 5, 108),
        (&signed, &key_path, "acme-t300", 6, 109),
        (&unsigned, &key_path, "acme-t300", 0, 107),
    ] {
        let out = run(case, "apply", key, product, counter, &[]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("written=0\n"),
            "{}",
            text(&out)
        );
    }
}

/// When the patches [`sign_expiring`] signs expire (Unix seconds).
const EXPIRES: u64 = 2_000_000_000;

/// A case's patch signed for release: acme-t300 2.0.0, counter 5, expiring
/// at [`EXPIRES`].
struct SignedPatch {
    /// The signing key's public half, 32 bytes in a file.
    key: PathBuf,
    unsigned: Vec<u8>,
    bytes: Vec<u8>,
    /// Its identity (the signed message), in hex.
    id: String,
}

/// Sign `case`'s patch with a fresh key whose public half goes to
/// `dir/key.bin`.
fn sign_expiring(case: &Case, dir: &Path) -> SignedPatch {
    use fwdelta_diff::patch_signer::{generate_key, sign_for_release, signing_message};
    let key = generate_key().unwrap();
    let path = dir.join("key.bin");
    std::fs::write(&path, key.verifying_key().as_bytes()).unwrap();
    let unsigned = std::fs::read(case.path("patch")).unwrap();
    let release = fwdelta_format::release::Release {
        product: "acme-t300".into(),
        version: "2.0.0".into(),
        security_counter: 5,
        expires: EXPIRES,
    };
    let bytes = sign_for_release(&unsigned, Some(&release), &[key]).unwrap();
    let id = signing_message(&bytes)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    SignedPatch {
        key: path,
        unsigned,
        bytes,
        id,
    }
}

/// Expiry and replays through `fwd_applier_trust_time` and
/// `fwd_applier_trust_installed`: a signed patch that expires at a set time
/// applies before it and prints its identity (`fwd_applier_patch_id`, the
/// message its signature covers); after it, it is refused with 10; given
/// that identity as installed (alone or after another), it is refused with
/// 11 (in the apply and the resume mode), before a byte of the new image is
/// written; another
/// installed identity does not stop it. An unsigned patch has no identity.
#[test]
fn c_program_checks_expiry_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new("fw-cortex-m4", &opts(Codec::Lzma2, None, 4 << 20));
    let signed = sign_expiring(&case, dir.path());
    let (key_path, unsigned, id) = (&signed.key, &signed.unsigned, &signed.id);
    std::fs::write(case.path("patch"), &signed.bytes).unwrap();
    let run = |mode: &str, now: u64, installed: &str, extra: &[&str]| {
        let mut cmd = case.command(mode, 5 << 20, 500, extra);
        cmd.env("FWD_TEST_KEY", key_path)
            .env("FWD_TEST_PRODUCT", "acme-t300")
            .env("FWD_TEST_MIN_COUNTER", "5")
            .env("FWD_TEST_NOW", now.to_string());
        if !installed.is_empty() {
            cmd.env("FWD_TEST_INSTALLED", installed);
        }
        cmd.output().expect("run apply_test")
    };
    let out = run("apply", EXPIRES - 1, "", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("patch_id {id}\n")),
        "{}",
        text(&out)
    );
    let other = format!(
        "{}{}",
        if id.starts_with('0') { "1" } else { "0" },
        &id[1..]
    );
    let out = run("apply", EXPIRES, &format!("{other},{other}"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    for (now, installed, extra, code) in [
        (EXPIRES + 1, String::new(), vec![], 110),
        (EXPIRES - 1, id.clone(), vec![], 111),
        (EXPIRES - 1, format!("{other},{id}"), vec![], 111),
        (EXPIRES - 1, id.clone(), vec!["900"], 111),
    ] {
        let mode = if extra.is_empty() { "apply" } else { "resume" };
        let out = run(mode, now, &installed, &extra);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("written=0\n"),
            "{}",
            text(&out)
        );
    }
    // Unsigned: applies without a policy, and has no identity to print.
    std::fs::write(case.path("patch"), unsigned).unwrap();
    let out = case.command("apply", 5 << 20, 500, &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("patch_id"));
}

/// In-place updates under a policy (`fwd_apply_in_place_trusted`): a signed
/// in-place patch applies with its key, product and counter and before its
/// expiry, and gives its identity; a key that did not sign it (7), an
/// unsigned patch (7), another product (8), a higher counter (9), a time
/// past its expiry (10) and its own identity as installed (11) are refused
/// with the region neither written nor changed. Cut by a power loss before
/// its expiry, the update is finished by the call after the power comes
/// back past the expiry.
#[test]
fn c_program_checks_the_policy_in_place_and_finishes_after_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let wrong_path = dir.path().join("wrong.bin");
    let wrong = fwdelta_diff::patch_signer::generate_key().unwrap();
    std::fs::write(&wrong_path, wrong.verifying_key().as_bytes()).unwrap();
    let case = Case::new(
        "fw-x86-64",
        &Options {
            in_place: Some(12),
            ..Options::default()
        },
    );
    let made = sign_expiring(&case, dir.path());
    let (key_path, unsigned, signed, id) = (made.key, made.unsigned, made.bytes, made.id);
    let run = |patch: &[u8],
               key: &Path,
               product: &str,
               counter: u64,
               now: u64,
               env: &[(&str, String)],
               cut: usize| {
        std::fs::write(case.path("patch"), patch).unwrap();
        let mut cmd = case.command("inplace", 5 << 20, cut, &[]);
        cmd.env("FWD_TEST_KEY", key)
            .env("FWD_TEST_PRODUCT", product)
            .env("FWD_TEST_MIN_COUNTER", counter.to_string())
            .env("FWD_TEST_NOW", now.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run apply_test")
    };
    let out = run(&signed, &key_path, "acme-t300", 5, EXPIRES - 1, &[], 0);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("patch_id {id}\n")),
        "{}",
        text(&out)
    );
    let writes: usize = stdout
        .split("writes_before_cut=")
        .nth(1)
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(writes >= 4, "only {writes} region writes");

    let installed = vec![("FWD_TEST_INSTALLED", id.clone())];
    for (what, patch, key, product, counter, now, env, code) in [
        (
            "wrong key",
            &signed,
            &wrong_path,
            "acme-t300",
            5,
            EXPIRES - 1,
            vec![],
            107,
        ),
        (
            "unsigned",
            &unsigned,
            &key_path,
            "acme-t300",
            5,
            EXPIRES - 1,
            vec![],
            107,
        ),
        (
            "other product",
            &signed,
            &key_path,
            "acme-t900",
            5,
            EXPIRES - 1,
            vec![],
            108,
        ),
        (
            "downgrade",
            &signed,
            &key_path,
            "acme-t300",
            6,
            EXPIRES - 1,
            vec![],
            109,
        ),
        (
            "expired",
            &signed,
            &key_path,
            "acme-t300",
            5,
            EXPIRES + 1,
            vec![],
            110,
        ),
        (
            "replay",
            &signed,
            &key_path,
            "acme-t300",
            5,
            EXPIRES - 1,
            installed.clone(),
            111,
        ),
    ] {
        let out = run(patch, key, product, counter, now, &env, 0);
        assert_eq!(out.status.code(), Some(code), "{what}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("untouched=1\n"),
            "{what}: {}",
            text(&out)
        );
    }
    // Cut before the expiry, finished after it (the second call's time).
    for cut in [1, writes / 2, writes] {
        let later = vec![("FWD_TEST_NOW_AFTER_CUT", (EXPIRES + 1).to_string())];
        let out = run(&signed, &key_path, "acme-t300", 5, EXPIRES - 1, &later, cut);
        assert!(out.status.success(), "cut at write {cut}: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("first=1 "), "cut at write {cut}: {}", text(&out));
        assert!(s.contains(&format!("patch_id {id}\n")), "{}", text(&out));
    }
}

/// The no_std C library (built without `std`, for the host, with
/// panic=abort as firmware builds it) applies real stored patches through
/// the same C program, whole and resumed after a cut, within the arena; and
/// the one entry point that takes no arena, `fwd_checkpoint_offsets`,
/// refuses a torn or damaged checkpoint with `FWD_ERR_BAD_PATCH` (its error
/// text is allocated outside any arena: it used to find no allocator and
/// spin in the panic handler).
#[test]
fn no_std_c_library_applies_and_refuses_a_torn_checkpoint() {
    let lib = build_library(
        "target/no-std-host",
        &[],
        &[("CARGO_PROFILE_DEV_PANIC", "abort")],
    );
    let exe = compile_with(&lib, "apply_test_no_std", &["-DFWD_NO_STD"]);
    for pair in ["fw-cortex-m4", "fw-x86-64"] {
        let case = Case::new(pair, &opts(Codec::Stored, None, 256 << 10));
        let out = case.run_with(&exe, &[], "apply", 1 << 20, 333, &[]);
        assert!(out.status.success(), "{pair}: {}", text(&out));
        let cut = (case.patch_len / 2).to_string();
        let out = case.run_with(&exe, &[], "resume", 1 << 20, 333, &[cut]);
        assert!(out.status.success(), "{pair} resumed: {}", text(&out));
        assert!(field(&out, "checkpoints") > 1, "{pair}: {}", text(&out));
        // A patch of a codec this build lacks is refused as unsupported.
        let lzma = Case::new(pair, &opts(Codec::Lzma2, None, 4 << 20));
        let out = lzma.run_with(&exe, &[], "apply", 5 << 20, 4096, &[]);
        assert_eq!(out.status.code(), Some(106), "{pair}: {}", text(&out));
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("torn", vec![0u8; 10]),
        ("damaged", vec![0xA5u8; fwdelta_capi::FWD_CHECKPOINT_LEN]),
        ("empty", Vec::new()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out = Command::new(&exe)
            .arg("checkpoint")
            .arg(&path)
            .output()
            .expect("run apply_test_no_std");
        assert_eq!(out.status.code(), Some(103), "{name}: {}", text(&out));
    }
}

/// Signed patches in the arena, as an adversary would size them: a signed
/// patch of thousands of tiny segments (whose signature section holds every
/// segment's check) applies, fed whole and resumed after a cut, in an arena
/// of exactly its claim plus `FWD_ARENA_OVERHEAD`, and the arena's peak
/// stays within it; one byte less is refused up front with
/// `FWD_ERR_LIMITS`. (An allocation failing inside the arena would abort the
/// program instead.)
#[test]
fn signed_patches_of_many_segments_stay_within_their_claim() {
    use fwdelta_diff::patch_signer::{generate_key, sign_for_release};
    use fwdelta_format::release::Release;
    let mut seed = 5u64;
    let old: Vec<u8> = (0..1 << 20)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 56) as u8
        })
        .collect();
    let mut new = old.clone();
    for at in (0..new.len()).step_by(97) {
        new[at] ^= 0x5A;
    }
    let opts = Options {
        segment_cost: 16,
        ..opts(Codec::Lzma2, None, 1 << 20)
    };
    let unsigned = diff(&old, &new, &opts).expect("diff").bytes;
    let key = generate_key().unwrap();
    let release = Release {
        product: "acme-t300".into(),
        version: "2.0.0".into(),
        security_counter: 5,
        expires: 0,
    };
    let signed = sign_for_release(&unsigned, Some(&release), std::slice::from_ref(&key)).unwrap();
    let prefix = signed[..fwdelta_format::Header::PREFIX_LEN]
        .try_into()
        .unwrap();
    let len = fwdelta_format::Header::parse_prefix(prefix).expect("prefix");
    let header = fwdelta_format::Header::parse(&signed[..len]).expect("header");
    assert!(
        header.segment_count >= 500,
        "{} segments",
        header.segment_count
    );
    let case = Case {
        dir: tempfile::tempdir().unwrap(),
        name: "many signed segments".into(),
        patch_len: signed.len(),
    };
    for (name, bytes) in [("old", &old), ("new", &new), ("patch", &signed)] {
        std::fs::write(case.path(name), bytes).unwrap();
    }
    let key_path = case.path("key.bin");
    std::fs::write(&key_path, key.verifying_key().as_bytes()).unwrap();
    let claim = header.apply_memory;
    let run = |mode: &str, arena: u64, extra: &[&str]| {
        case.command(mode, arena, 4096, extra)
            .env("FWD_TEST_KEY", &key_path)
            .env("FWD_TEST_PRODUCT", "acme-t300")
            .output()
            .expect("run apply_test")
    };
    for (mode, extra) in [("apply", vec![]), ("resume", vec!["300000"])] {
        let out = run(mode, claim + OVERHEAD, &extra);
        assert!(out.status.success(), "{mode}: {}", text(&out));
        let peak = field(&out, "peak");
        assert!(
            peak <= claim + OVERHEAD,
            "{mode}: peak {peak}, claim {claim}"
        );
    }
    let out = run("apply", claim + OVERHEAD - 1, &[]);
    assert_eq!(out.status.code(), Some(105), "{}", text(&out));
}
