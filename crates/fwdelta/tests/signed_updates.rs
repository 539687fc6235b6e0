//! End-to-end tests of trusted updates through the `fwdelta` binary: keys,
//! signed patches, offline (HSM) signing, the device state directory and its
//! history, and every way a terminal must refuse an update: a damaged,
//! transplanted, forged or untrusted signature, a header changed after
//! signing, another product, a downgrade, an expired or replayed patch, a
//! forged key rotation, and a state directory it cannot trust.
//!
//! Every refusal is checked the same way ([`Case::refused`]): the documented
//! exit code, exactly one `fwdelta: error: ...` line, no output file, the old
//! image unchanged, `state.json` byte-identical, and (for refusals of a
//! patch) one new "refused" history entry carrying that exit code.

use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXIT_FAILURE: i32 = 1;
const EXIT_BAD_PATCH: i32 = 3;
const EXIT_NOT_AUTHENTIC: i32 = 7;
const EXIT_WRONG_PRODUCT: i32 = 8;
const EXIT_DOWNGRADE: i32 = 9;
const EXIT_EXPIRED: i32 = 10;
const EXIT_REPLAY: i32 = 11;
const EXIT_DEVICE_STATE: i32 = 12;
const EXIT_BUSY: i32 = 13;

const PRODUCT: &str = "acme-t300";
/// The device's installed version and counter in every test.
const DEVICE_VERSION: &str = "1.0.0";
const DEVICE_COUNTER: u64 = 4;

/// Outcome of one run of the binary.
struct Run {
    what: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "{}\nexit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, 0, "expected success\n{}", self.describe());
        self
    }

    /// Exit `code` and exactly one stderr line, `fwdelta: error: ...`.
    fn assert_error(&self, code: i32) -> &Run {
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
        self
    }
}

fn fwdelta<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let what = format!(
        "fwdelta {}",
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
        .args(&args)
        .output()
        .expect("cannot run fwdelta");
    Run {
        what,
        code: out.status.code().expect("fwdelta was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `fwdelta ARGS...` with any mix of `&str`, `String`, `Path` and `PathBuf`.
macro_rules! fw {
    ($($arg:expr),* $(,)?) => {
        fwdelta([$(AsRef::<OsStr>::as_ref(&$arg)),*])
    };
}

fn testdata(pair: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(pair)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s:?}");
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Key id as docs/FORMAT.md defines it: `BLAKE3-derive-key("fwdelta 2026-12
/// key id", public key)`, first 8 bytes, in hex.
fn key_id(public: &[u8; 32]) -> String {
    hex(&blake3::derive_key("fwdelta 2026-12 key id", public)[..8])
}

/// A key pair made by `fwdelta keygen`.
struct Key {
    secret_file: PathBuf,
    public_file: PathBuf,
    signing: SigningKey,
}

impl Key {
    fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    fn id(&self) -> String {
        key_id(&self.public())
    }
}

/// `TAG <64 hex>` (and a newline) as 32 bytes.
fn parse_key_text(text: &str, tag: &str) -> [u8; 32] {
    let t = text.trim_end();
    let (found, digits) = t.split_once(' ').expect("key file: tag and hex");
    assert_eq!(found, tag, "key file tag");
    assert_eq!(digits.len(), 64, "key file: 64 hex digits");
    unhex(digits).try_into().unwrap()
}

/// Sorted names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A scratch directory with a copy of the `fw-cortex-m4` pair.
struct Case {
    dir: tempfile::TempDir,
    old: PathBuf,
    old_bytes: Vec<u8>,
    new_bytes: Vec<u8>,
    new: PathBuf,
    outputs: std::cell::Cell<u32>,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.bin");
        let new = dir.path().join("new.bin");
        let old_bytes = fs::read(testdata("fw-cortex-m4").join("old")).unwrap();
        let new_bytes = fs::read(testdata("fw-cortex-m4").join("new")).unwrap();
        assert_ne!(old_bytes, new_bytes);
        fs::write(&old, &old_bytes).unwrap();
        fs::write(&new, &new_bytes).unwrap();
        Case {
            dir,
            old,
            old_bytes,
            new_bytes,
            new,
            outputs: std::cell::Cell::new(0),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh output path that does not exist yet.
    fn fresh_output(&self) -> PathBuf {
        let n = self.outputs.get();
        self.outputs.set(n + 1);
        let p = self.path(&format!("out-{n}.bin"));
        assert!(!p.exists());
        p
    }

    /// `fwdelta keygen -o NAME`, checked, and the secret key read back.
    fn keygen(&self, name: &str) -> Key {
        let base = self.path(name);
        let run = fw!("keygen", "-o", base);
        run.assert_ok();
        let secret_file = self.path(&format!("{name}.key"));
        let public_file = self.path(&format!("{name}.pub"));
        let secret = parse_key_text(
            &fs::read_to_string(&secret_file).unwrap(),
            "fwdelta-ed25519-secret-key-v1",
        );
        let public = parse_key_text(
            &fs::read_to_string(&public_file).unwrap(),
            "fwdelta-ed25519-public-key-v1",
        );
        let signing = SigningKey::from_bytes(&secret);
        assert_eq!(
            signing.verifying_key().to_bytes(),
            public,
            "{name}.pub is not the public half of {name}.key"
        );
        assert!(
            !run.stdout.contains(&hex(&secret)) && !run.stderr.contains(&hex(&secret)),
            "keygen printed the secret key\n{}",
            run.describe()
        );
        Key {
            secret_file,
            public_file,
            signing,
        }
    }

    /// `fwdelta diff -q OLD NEW -o NAME ARGS...` (checked).
    fn diff(&self, name: &str, args: &[&OsStr]) -> PathBuf {
        let out = self.path(name);
        let mut a: Vec<&OsStr> = vec![
            "diff".as_ref(),
            "-q".as_ref(),
            self.old.as_os_str(),
            self.new.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ];
        a.extend_from_slice(args);
        fwdelta(&a).assert_ok();
        out
    }

    /// A patch OLD -> NEW for `product` with a release statement, signed by
    /// `keys` (none: signed form, waiting for a signer); `extra` options too.
    fn release(
        &self,
        name: &str,
        product: &str,
        version: &str,
        counter: u64,
        keys: &[&Key],
        extra: &[&str],
    ) -> PathBuf {
        let counter = counter.to_string();
        let mut a: Vec<&OsStr> = vec![
            "--product".as_ref(),
            product.as_ref(),
            "--version".as_ref(),
            version.as_ref(),
            "--counter".as_ref(),
            counter.as_ref(),
        ];
        for k in keys {
            a.push("--sign".as_ref());
            a.push(k.secret_file.as_os_str());
        }
        a.extend(extra.iter().map(OsStr::new));
        self.diff(name, &a)
    }

    /// A patch for [`PRODUCT`] signed by `keys`.
    fn signed(&self, name: &str, version: &str, counter: u64, keys: &[&Key]) -> PathBuf {
        self.release(name, PRODUCT, version, counter, keys, &[])
    }

    /// `fwdelta device init` of `name` for [`PRODUCT`] at [`DEVICE_VERSION`]
    /// and [`DEVICE_COUNTER`], trusting `keys`.
    fn device(&self, name: &str, keys: &[&Key], threshold: usize) -> PathBuf {
        let dir = self.path(name);
        let counter = DEVICE_COUNTER.to_string();
        let threshold = threshold.to_string();
        let mut a: Vec<&OsStr> = vec![
            "device".as_ref(),
            "init".as_ref(),
            dir.as_os_str(),
            "--product".as_ref(),
            PRODUCT.as_ref(),
            "--version".as_ref(),
            DEVICE_VERSION.as_ref(),
            "--counter".as_ref(),
            counter.as_ref(),
            "--threshold".as_ref(),
            threshold.as_ref(),
        ];
        for k in keys {
            a.push("--trust".as_ref());
            a.push(k.public_file.as_os_str());
        }
        fwdelta(&a).assert_ok();
        assert_eq!(counter_of(&dir), DEVICE_COUNTER);
        assert!(history(&dir).is_empty());
        dir
    }

    /// `fwdelta apply --device DEV OLD PATCH -o OUT EXTRA...`.
    fn apply(&self, dev: &Path, patch: &Path, out: &Path, extra: &[&str]) -> Run {
        let mut a: Vec<&OsStr> = vec![
            "apply".as_ref(),
            "--device".as_ref(),
            dev.as_os_str(),
            self.old.as_os_str(),
            patch.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ];
        a.extend(extra.iter().map(OsStr::new));
        fwdelta(&a)
    }

    /// Apply `patch` under `dev`, expect success and the exact new image, and
    /// return the "applied" history entry it added.
    fn applies(&self, dev: &Path, patch: &Path, extra: &[&str]) -> Value {
        let before = history(dev).len();
        let out = self.fresh_output();
        self.apply(dev, patch, &out, extra).assert_ok();
        assert!(
            fs::read(&out).unwrap() == self.new_bytes,
            "{}: wrong output",
            patch.display()
        );
        assert!(fs::read(&self.old).unwrap() == self.old_bytes);
        let h = history(dev);
        assert_eq!(h.len(), before + 1, "one new history entry: {h:#?}");
        let e = h.last().unwrap().clone();
        assert_eq!(e["event"], "applied", "{e}");
        e
    }

    /// Apply `patch` under `dev` and check it is refused with `code`:
    /// one error line, no output, the old image and `state.json` unchanged;
    /// `logged`: exactly one new "refused" history entry (with that exit
    /// code), else the history file byte-identical. Returns the entry.
    fn refused(
        &self,
        what: &str,
        dev: &Path,
        patch: &Path,
        code: i32,
        logged: bool,
        extra: &[&str],
    ) -> Option<Value> {
        let state_before = fs::read(dev.join("state.json")).ok();
        let history_file = dev.join("history.log");
        let log_before = fs::read(&history_file).ok();
        let out = self.fresh_output();
        let run = self.apply(dev, patch, &out, extra);
        assert!(
            run.code == code,
            "{what}: expected exit {code}\n{}",
            run.describe()
        );
        run.assert_error(code);
        assert!(!out.exists(), "{what}: output created\n{}", run.describe());
        let name = out.file_name().unwrap().to_string_lossy().into_owned();
        let leftovers: Vec<String> = listing(self.dir.path())
            .into_iter()
            .filter(|n| n.starts_with('.') && n.contains(&name))
            .collect();
        assert!(leftovers.is_empty(), "{what}: leftovers {leftovers:?}");
        assert!(
            fs::read(&self.old).unwrap() == self.old_bytes,
            "{what}: old image modified"
        );
        assert!(
            fs::read(dev.join("state.json")).ok() == state_before,
            "{what}: state.json changed"
        );
        let log_after = fs::read(&history_file).ok();
        if !logged {
            assert!(
                log_after == log_before,
                "{what}: history changed though nothing should be recorded"
            );
            return None;
        }
        let (before, after) = (log_before.unwrap(), log_after.unwrap());
        assert!(
            after.starts_with(&before),
            "{what}: history rewritten, not appended to"
        );
        let entries = history(dev);
        let n_before = entries.len() - 1;
        assert_eq!(
            history_lines(&before),
            n_before,
            "{what}: expected exactly one new history entry"
        );
        let e = entries.last().unwrap().clone();
        assert_eq!(e["event"], "refused", "{what}: {e}");
        assert_eq!(e["exit_code"], code, "{what}: {e}");
        assert!(
            e["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {e}"
        );
        Some(e)
    }
}

fn history_lines(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// `DIR/state.json`'s first line, parsed.
fn state_of(dev: &Path) -> Value {
    let text = fs::read_to_string(dev.join("state.json")).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

fn counter_of(dev: &Path) -> u64 {
    state_of(dev)["security_counter"]
        .as_u64()
        .expect("security_counter")
}

/// `fwdelta history --device DIR --json`, one object a line.
fn history(dev: &Path) -> Vec<Value> {
    let run = fw!("history", "--device", dev, "--json");
    run.assert_ok();
    run.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

fn device_cmd(cmd: &str, dev: &Path) -> Run {
    fw!(cmd, "--device", dev)
}

/// Where a signed patch's parts are (docs/FORMAT.md, "Signed patches").
struct Layout {
    header_len: usize,
    segments: usize,
    /// Offset of sig_count.
    sig_count_at: usize,
    sig_count: usize,
    /// Offset just past the last signature.
    section_end: usize,
}

/// LEB128 varint at `at`.
fn varint(b: &[u8], at: usize) -> usize {
    let (mut v, mut shift, mut i) = (0usize, 0, at);
    loop {
        v |= usize::from(b[i] & 0x7f) << shift;
        if b[i] & 0x80 == 0 {
            return v;
        }
        shift += 7;
        i += 1;
    }
}

fn layout(patch: &[u8]) -> Layout {
    let header_len = varint(patch, 5);
    let header = fwdelta_format::Header::parse(&patch[..header_len]).unwrap();
    let segments = header.segment_count as usize;
    let sig_count_at = header_len + 8 * segments;
    let sig_count = patch[sig_count_at] as usize;
    Layout {
        header_len,
        segments,
        sig_count_at,
        sig_count,
        section_end: sig_count_at + 1 + 72 * sig_count,
    }
}

/// The 72-byte signature entry of the key with id `id`.
fn signature_entry(patch: &[u8], id: &str) -> std::ops::Range<usize> {
    let l = layout(patch);
    (0..l.sig_count)
        .map(|i| l.sig_count_at + 1 + 72 * i)
        .find(|&at| hex(&patch[at..at + 8]) == id)
        .map(|at| at..at + 72)
        .unwrap_or_else(|| panic!("no signature by {id}"))
}

/// Recompute the header check (the header's last 8 bytes: the first 8
/// bytes of BLAKE3 of the header bytes before it).
fn reseal_header(patch: &mut [u8]) {
    let hl = varint(patch, 5);
    let check = blake3::hash(&patch[..hl - 8]);
    patch[hl - 8..hl].copy_from_slice(&check.as_bytes()[..8]);
}

/// Write `bytes` to a new file named after `name` (a fresh name each time:
/// the history records refusals by patch file name, and a refusal equal to
/// the last one is recorded once).
fn write(case: &Case, name: &str, bytes: &[u8]) -> PathBuf {
    let n = case.outputs.get();
    case.outputs.set(n + 1);
    let p = case.path(&format!("{n}-{name}"));
    assert!(!p.exists());
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn keygen_makes_a_private_key_file_refuses_to_overwrite_and_never_prints_the_secret() {
    let c = Case::new();
    let k = c.keygen("release");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&k.secret_file), 0o600, "secret key file mode");
    let pub_mode = mode(&k.public_file);
    assert_eq!(pub_mode & 0o022, 0, "public key file writable by others");
    assert_eq!(
        pub_mode & 0o444,
        0o444,
        "public key file not world-readable"
    );
    let secret_text = fs::read(&k.secret_file).unwrap();
    let public_text = fs::read(&k.public_file).unwrap();
    let secret_hex = hex(k.signing.as_bytes());

    // A second keygen to the same name is refused and leaves both intact.
    let base = c.path("release");
    let again = fw!("keygen", "-o", base);
    again.assert_error(EXIT_FAILURE);
    assert_eq!(fs::read(&k.secret_file).unwrap(), secret_text);
    assert_eq!(fs::read(&k.public_file).unwrap(), public_text);
    assert_eq!(mode(&k.secret_file), 0o600);
    for s in [&again.stdout, &again.stderr] {
        assert!(!s.to_lowercase().contains(&secret_hex), "secret printed");
    }

    // NAME.pub alone in the way is refused too, and no NAME.key is made.
    let lone = c.path("lone.pub");
    fs::write(&lone, b"not a key\n").unwrap();
    let base = c.path("lone");
    fw!("keygen", "-o", base).assert_error(EXIT_FAILURE);
    assert!(!c.path("lone.key").exists());
    assert_eq!(fs::read(&lone).unwrap(), b"not a key\n");

    // Two keygens make two different keys.
    let k2 = c.keygen("other");
    assert_ne!(k2.public(), k.public());

    // Nothing that uses the secret key prints it.
    let patch = c.signed("p.fwd", "2.0.0", 5, &[&k]);
    let mut runs = vec![fw!("sign", patch, "--key", k2.secret_file)];
    let rot = c.path("rot");
    runs.push(fw!(
        "trust",
        "rotate",
        "--new-key",
        k2.secret_file,
        "--key",
        k.secret_file,
        "-o",
        rot
    ));
    runs.push(fw!("info", patch, "--json"));
    for r in &runs {
        r.assert_ok();
        for secret in [&secret_hex, &hex(k2.signing.as_bytes())] {
            assert!(
                !r.stdout.to_lowercase().contains(secret.as_str())
                    && !r.stderr.to_lowercase().contains(secret.as_str()),
                "secret printed\n{}",
                r.describe()
            );
        }
    }
}

#[test]
fn signed_update_is_applied_recorded_and_raises_the_counter_only_when_confirmed() {
    let c = Case::new();
    let k = c.keygen("release");
    let patch = c.signed("update.fwd", "2.0.0", 5, &[&k]);
    let dev = c.device("dev", &[&k], 1);
    let state0 = fs::read(dev.join("state.json")).unwrap();
    assert_eq!(state_of(&dev)["version"], DEVICE_VERSION);

    let e = c.applies(&dev, &patch, &[]);
    assert_eq!(e["key_ids"], serde_json::json!([k.id()]), "{e}");
    assert_eq!(e["old_version"], DEVICE_VERSION, "{e}");
    assert_eq!(e["new_version"], "2.0.0", "{e}");
    assert_eq!(e["security_counter"], 5, "{e}");
    assert_eq!(e["mode"], "file", "{e}");
    assert_eq!(e["bytes_written"], c.new_bytes.len(), "{e}");
    assert_eq!(e["bytes_read"], fs::metadata(&patch).unwrap().len(), "{e}");
    assert_eq!(
        e["new_blake3"],
        blake3::hash(&c.new_bytes).to_hex().as_str(),
        "{e}"
    );
    assert_eq!(e["resumed"], 0, "{e}");

    // Applied, not yet confirmed: the counter and version are unchanged.
    let s = state_of(&dev);
    assert_ne!(fs::read(dev.join("state.json")).unwrap(), state0);
    assert_eq!(s["security_counter"], DEVICE_COUNTER, "{s}");
    assert_eq!(s["version"], DEVICE_VERSION, "{s}");
    assert_eq!(s["pending"]["version"], "2.0.0", "{s}");
    let text = fw!("history", "--device", dev);
    text.assert_ok();
    assert!(
        text.stdout.contains("awaiting confirmation") && text.stdout.contains("applied"),
        "{}",
        text.describe()
    );

    device_cmd("confirm", &dev).assert_ok();
    let s = state_of(&dev);
    assert_eq!(s["security_counter"], 5, "{s}");
    assert_eq!(s["version"], "2.0.0", "{s}");
    assert!(s["pending"].is_null(), "{s}");
    let h = history(&dev);
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[1]["event"], "confirmed", "{h:#?}");
    assert_eq!(h[1]["new_version"], "2.0.0", "{h:#?}");
    assert_eq!(h[1]["patch"], h[0]["patch"], "{h:#?}");

    // Nothing is awaiting confirmation any more.
    device_cmd("confirm", &dev).assert_error(EXIT_FAILURE);
    device_cmd("rollback", &dev).assert_error(EXIT_FAILURE);
    assert_eq!(counter_of(&dev), 5);

    // The same patch again is a replay, even to a fresh output.
    c.refused("replay", &dev, &patch, EXIT_REPLAY, true, &[]);
    // A copy of it under another name is the same patch.
    let copy = write(&c, "copy.fwd", &fs::read(&patch).unwrap());
    c.refused("replay of a copy", &dev, &copy, EXIT_REPLAY, true, &[]);
    assert_eq!(counter_of(&dev), 5);
}

/// Parse the secret key the way an offline signer would get it.
fn secret_from_file(path: &Path) -> SigningKey {
    let secret = parse_key_text(
        &fs::read_to_string(path).unwrap(),
        "fwdelta-ed25519-secret-key-v1",
    );
    SigningKey::from_bytes(&secret)
}

#[test]
fn offline_signature_over_the_digest_is_attached_verified_and_applies() {
    let c = Case::new();
    let k = c.keygen("hsm");
    let other = c.keygen("other");
    let dev = c.device("dev", &[&k], 1);
    let patch = c.release("update.fwd", PRODUCT, "2.0.0", 5, &[], &[]);
    let unsigned = fs::read(&patch).unwrap();

    // Bound to its statement, no signature yet: refused by the device.
    c.refused(
        "no signature yet",
        &dev,
        &patch,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    let printed = fw!("digest", patch);
    printed.assert_ok();
    let digest_file = c.path("tosign.bin");
    fw!("digest", patch, "-o", digest_file).assert_ok();
    let digest = fs::read(&digest_file).unwrap();
    assert_eq!(digest.len(), 32, "digest -o writes the 32 raw bytes");
    assert_eq!(printed.stdout.trim(), hex(&digest));
    // The digest is the message docs/FORMAT.md defines.
    {
        let l = layout(&unsigned);
        let mut h = blake3::Hasher::new_derive_key("fwdelta 2026-12 patch signature v7");
        h.update(&unsigned[..l.sig_count_at]);
        assert_eq!(h.finalize().as_bytes()[..], digest[..], "signed message");
        assert_eq!(l.sig_count, 0);
    }

    // A signature by another key, offered as the HSM key's: refused, and
    // the patch file is left as it was.
    let forged = c.path("forged.sig");
    fs::write(&forged, other.signing.sign(&digest).to_bytes()).unwrap();
    let run = fw!(
        "sign",
        patch,
        "--signature",
        forged,
        "--public",
        k.public_file
    );
    assert_ne!(run.code, 0, "{}", run.describe());
    run.assert_error(run.code);
    assert_eq!(fs::read(&patch).unwrap(), unsigned, "patch changed");
    // A signature over other bytes by the right key: refused too.
    let wrong_msg = c.path("wrong-msg.sig");
    let mut other_digest = digest.clone();
    other_digest[0] ^= 1;
    fs::write(&wrong_msg, k.signing.sign(&other_digest).to_bytes()).unwrap();
    let run = fw!(
        "sign",
        patch,
        "--signature",
        wrong_msg,
        "--public",
        k.public_file
    );
    assert_ne!(run.code, 0, "{}", run.describe());
    assert_eq!(fs::read(&patch).unwrap(), unsigned, "patch changed");

    // The HSM's signature, as 128 hex digits, attached to a copy with -o.
    let signer = secret_from_file(&k.secret_file);
    let sig = signer.sign(&digest).to_bytes();
    let sig_hex = c.path("sig.hex");
    fs::write(&sig_hex, format!("{}\n", hex(&sig))).unwrap();
    let from_hex = c.path("from-hex.fwd");
    fw!(
        "sign",
        patch,
        "--signature",
        sig_hex,
        "--public",
        k.public_file,
        "-o",
        from_hex
    )
    .assert_ok();
    assert_eq!(fs::read(&patch).unwrap(), unsigned, "-o left PATCH alone");

    // And as 64 raw bytes, attached in place.
    let sig_raw = c.path("sig.raw");
    fs::write(&sig_raw, sig).unwrap();
    fw!(
        "sign",
        patch,
        "--signature",
        sig_raw,
        "--public",
        k.public_file
    )
    .assert_ok();
    let signed = fs::read(&patch).unwrap();
    assert_ne!(signed, unsigned);
    assert_eq!(fs::read(&from_hex).unwrap(), signed, "hex and raw differ");
    let entry = signature_entry(&signed, &k.id());
    assert_eq!(&signed[entry.start + 8..entry.end], &sig[..]);
    // Attaching changes no signed byte: the digest is the same.
    let again = fw!("digest", patch);
    again.assert_ok();
    assert_eq!(again.stdout.trim(), hex(&digest));

    let e = c.applies(&dev, &patch, &[]);
    assert_eq!(e["key_ids"], serde_json::json!([k.id()]), "{e}");
    assert_eq!(e["patch"], hex(&digest), "{e}");
}

#[test]
fn damaged_cut_or_transplanted_signatures_and_untrusted_signers_are_refused() {
    let c = Case::new();
    let k = c.keygen("release");
    let stranger = c.keygen("stranger");
    let dev = c.device("dev", &[&k], 1);
    let a_path = c.signed("a.fwd", "2.0.0", 5, &[&k]);
    let b_path = c.signed("b.fwd", "2.0.1", 6, &[&k]);
    let a = fs::read(&a_path).unwrap();
    let b = fs::read(&b_path).unwrap();
    let la = layout(&a);
    let lb = layout(&b);
    assert_eq!((la.sig_count, lb.sig_count), (1, 1));
    assert_eq!(la.segments, lb.segments, "same pair, same segments");
    assert_eq!(la.header_len, lb.header_len);
    assert_ne!(
        a[la.header_len..la.section_end],
        b[lb.header_len..lb.section_end]
    );

    // Cut inside the section: in the check table, at sig_count, inside the
    // signature.
    for (what, cut) in [
        ("cut in the check table", la.header_len + 3),
        ("cut before sig_count", la.sig_count_at),
        ("cut inside the key id", la.sig_count_at + 1 + 4),
        ("cut inside the signature", la.section_end - 20),
    ] {
        let p = write(&c, "cut.fwd", &a[..cut]);
        c.refused(what, &dev, &p, EXIT_BAD_PATCH, true, &[]);
    }

    // One bit of the signature flipped, at its start, middle and end.
    for at in [
        la.sig_count_at + 1 + 8,
        la.section_end - 32,
        la.section_end - 1,
    ] {
        let mut bad = a.clone();
        bad[at] ^= 0x01;
        let p = write(&c, "flipped.fwd", &bad);
        c.refused(
            "flipped signature byte",
            &dev,
            &p,
            EXIT_NOT_AUTHENTIC,
            true,
            &[],
        );
    }
    // The key id flipped: names no trusted key.
    let mut bad = a.clone();
    bad[la.sig_count_at + 1] ^= 0x80;
    let p = write(&c, "bad-id.fwd", &bad);
    c.refused("flipped key id", &dev, &p, EXIT_NOT_AUTHENTIC, true, &[]);

    // B's whole section in A.
    let mut bad = a[..la.header_len].to_vec();
    bad.extend_from_slice(&b[lb.header_len..lb.section_end]);
    bad.extend_from_slice(&a[la.section_end..]);
    let p = write(&c, "transplant.fwd", &bad);
    c.refused("B's section in A", &dev, &p, EXIT_NOT_AUTHENTIC, true, &[]);
    // B's signature entry alone (same trusted key) in A.
    let mut bad = a.clone();
    let (ea, eb) = (signature_entry(&a, &k.id()), signature_entry(&b, &k.id()));
    bad[ea].copy_from_slice(&b[eb]);
    let p = write(&c, "transplant-sig.fwd", &bad);
    c.refused(
        "B's signature in A",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    // A valid signature by a key the device does not trust.
    let p = c.signed("stranger.fwd", "2.0.0", 5, &[&stranger]);
    let e = c.refused("untrusted signer", &dev, &p, EXIT_NOT_AUTHENTIC, true, &[]);
    assert!(
        e.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains(&stranger.id()),
        "the refusal names the signer"
    );
    // An unsigned (plain) patch of the same pair.
    let p = c.diff("plain.fwd", &[]);
    c.refused("unsigned patch", &dev, &p, EXIT_NOT_AUTHENTIC, true, &[]);
    // The signed form with its signature removed (sig_count 0).
    let mut bad = a[..la.sig_count_at].to_vec();
    bad.push(0);
    bad.extend_from_slice(&a[la.section_end..]);
    let p = write(&c, "stripped.fwd", &bad);
    c.refused(
        "signature stripped",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );
    // The stranger's signature appended next to nothing trusted, then the
    // trusted one replaced by the stranger's: still not authentic.
    let s = fs::read(c.path("stranger.fwd")).unwrap();
    let es = signature_entry(&s, &stranger.id());
    let mut bad = a.clone();
    bad[signature_entry(&a, &k.id())].copy_from_slice(&s[es]);
    let p = write(&c, "swapped.fwd", &bad);
    c.refused(
        "stranger's signature in A",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    // The genuine patches still apply: the refusals were about the damage.
    assert_eq!(counter_of(&dev), DEVICE_COUNTER);
    c.applies(&dev, &a_path, &[]);
    // While A awaits confirmation, B (another update) is refused.
    c.refused(
        "second update pending",
        &dev,
        &b_path,
        EXIT_DEVICE_STATE,
        true,
        &[],
    );
    device_cmd("confirm", &dev).assert_ok();
    assert_eq!(counter_of(&dev), 5);
    c.applies(&dev, &b_path, &[]);
}

#[test]
fn a_header_changed_after_signing_is_refused() {
    let c = Case::new();
    let k = c.keygen("release");
    let dev = c.device("dev", &[&k], 1);
    let version = "2.0.0-rc7";
    let path = c.signed("a.fwd", version, 5, &[&k]);
    let a = fs::read(&path).unwrap();
    let l = layout(&a);
    // The reseal below recomputes exactly the stored check.
    let mut same = a.clone();
    reseal_header(&mut same);
    assert_eq!(same, a, "reseal_header does not reproduce the header check");

    let at = a[..l.header_len]
        .windows(version.len())
        .position(|w| w == version.as_bytes())
        .expect("version string in the header")
        + version.len()
        - 1;
    let mut bad = a.clone();
    bad[at] = b'8'; // 2.0.0-rc8
    let p = write(&c, "edited.fwd", &bad);
    c.refused("header edited", &dev, &p, EXIT_BAD_PATCH, true, &[]);

    // A valid header check over the edited header: the signature no longer
    // matches.
    reseal_header(&mut bad);
    fwdelta_format::Header::parse(&bad[..l.header_len]).expect("resealed header parses");
    let p = write(&c, "resealed.fwd", &bad);
    c.refused(
        "header edited and resealed",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    // The same with the counter raised (a downgrade protection bypass
    // attempt): find the counter after the version string.
    let mut bad = a.clone();
    let counter_at = at + 1;
    assert_eq!(
        bad[counter_at], 5,
        "security_counter varint after the version"
    );
    bad[counter_at] = 6;
    reseal_header(&mut bad);
    let p = write(&c, "counter.fwd", &bad);
    c.refused(
        "counter edited and resealed",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    c.applies(&dev, &path, &[]);
}

#[test]
fn downgrade_other_product_and_expired_patches_are_refused() {
    let c = Case::new();
    let k = c.keygen("release");
    let dev = c.device("dev", &[&k], 1);

    let p = c.signed("old-release.fwd", "0.9.0", DEVICE_COUNTER - 1, &[&k]);
    c.refused("downgrade", &dev, &p, EXIT_DOWNGRADE, true, &[]);
    let p = c.release("other.fwd", "acme-t400", "2.0.0", 5, &[&k], &[]);
    c.refused("other product", &dev, &p, EXIT_WRONG_PRODUCT, true, &[]);
    let expired = c.release(
        "expired.fwd",
        PRODUCT,
        "2.0.0",
        5,
        &[&k],
        &["--expires", "1000"],
    );
    c.refused("expired", &dev, &expired, EXIT_EXPIRED, true, &[]);
    c.refused(
        "expired",
        &dev,
        &expired,
        EXIT_EXPIRED,
        true,
        &["--now", "1001"],
    );
    assert_eq!(counter_of(&dev), DEVICE_COUNTER);
    // Before its expiry it applies: the refusal was about the time.
    c.applies(&dev, &expired, &["--now", "999"]);
    // The same security counter as the device's is not a downgrade.
    device_cmd("rollback", &dev).assert_ok();
    assert_eq!(counter_of(&dev), DEVICE_COUNTER);
    assert_eq!(history(&dev).last().unwrap()["event"], "rolled-back");
    let p = c.signed("same-counter.fwd", "1.0.1", DEVICE_COUNTER, &[&k]);
    c.applies(&dev, &p, &[]);
}

/// Expiry outside in-place mode: a try before the expiry that failed (here
/// the old image was not the patch's) does not carry the patch past its
/// expiry; after it the patch is refused with exit 10 (the old image is
/// intact whatever the earlier try did). In place, where a cut leaves the
/// image half-written, the journal decides: see `in_place_journal.rs`.
#[test]
fn a_failed_try_does_not_carry_a_patch_past_its_expiry() {
    let c = Case::new();
    let k = c.keygen("release");
    let dev = c.device("dev", &[&k], 1);
    let expiring = c.release(
        "expiring.fwd",
        PRODUCT,
        "2.0.0",
        5,
        &[&k],
        &["--expires", "1000"],
    );
    let mut damaged = c.old_bytes.clone();
    damaged[100] ^= 1;
    fs::write(&c.old, &damaged).unwrap();
    let out = c.fresh_output();
    c.apply(&dev, &expiring, &out, &["--now", "999"])
        .assert_error(4);
    fs::write(&c.old, &c.old_bytes).unwrap();
    c.refused(
        "expired",
        &dev,
        &expiring,
        EXIT_EXPIRED,
        true,
        &["--now", "1001"],
    );
    c.applies(&dev, &expiring, &["--now", "1000"]);
}

#[test]
fn a_device_with_threshold_two_needs_two_distinct_trusted_signatures() {
    let c = Case::new();
    let ka = c.keygen("a");
    let kb = c.keygen("b");
    let dev = c.device("dev", &[&ka, &kb], 2);
    assert_eq!(state_of(&dev)["threshold"], 2);

    let only_a = c.signed("a.fwd", "2.0.0", 5, &[&ka]);
    c.refused(
        "signed by a only",
        &dev,
        &only_a,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );
    let only_b = c.signed("b.fwd", "2.0.0", 5, &[&kb]);
    c.refused(
        "signed by b only",
        &dev,
        &only_b,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    let both_path = c.signed("ab.fwd", "2.0.0", 5, &[&ka, &kb]);
    let both = fs::read(&both_path).unwrap();
    assert_eq!(layout(&both).sig_count, 2);
    // b's entry replaced by a second copy of a's: duplicates count once.
    let mut dup = both.clone();
    let (ea, eb) = (
        signature_entry(&both, &ka.id()),
        signature_entry(&both, &kb.id()),
    );
    let a_entry = both[ea].to_vec();
    dup[eb].copy_from_slice(&a_entry);
    let p = write(&c, "aa.fwd", &dup);
    c.refused(
        "a's signature twice",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );
    // One of the two signatures damaged.
    let mut bad = both.clone();
    bad[signature_entry(&both, &kb.id()).end - 1] ^= 0x40;
    let p = write(&c, "ab-damaged.fwd", &bad);
    c.refused(
        "b's signature damaged",
        &dev,
        &p,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    let e = c.applies(&dev, &both_path, &[]);
    let mut ids: Vec<String> = e["key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![ka.id(), kb.id()];
    want.sort();
    assert_eq!(ids, want, "{e}");

    // A threshold above the number of keys is refused at init.
    let bad_dir = c.path("dev3");
    fw!(
        "device",
        "init",
        bad_dir,
        "--product",
        PRODUCT,
        "--version",
        "1",
        "--trust",
        ka.public_file,
        "--trust",
        kb.public_file,
        "--threshold",
        "3"
    )
    .assert_error(EXIT_FAILURE);
    assert!(!bad_dir.join("state.json").exists());
}

fn rotate(c: &Case, name: &str, new_key: &Key, keys: &[&Key], retire: &[&Key]) -> PathBuf {
    let out = c.path(name);
    let mut a: Vec<&OsStr> = vec![
        "trust".as_ref(),
        "rotate".as_ref(),
        "--new-key".as_ref(),
        new_key.secret_file.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    for k in keys {
        a.push("--key".as_ref());
        a.push(k.secret_file.as_os_str());
    }
    for k in retire {
        a.push("--retire".as_ref());
        a.push(k.public_file.as_os_str());
    }
    fwdelta(&a).assert_ok();
    out
}

fn trust_add(dev: &Path, statement: &Path) -> Run {
    fw!("trust", "add", "--device", dev, statement)
}

/// `trust add` of `statement` is refused: state unchanged, a
/// "trust-refused" entry.
fn trust_refused(what: &str, dev: &Path, statement: &Path) {
    let state = fs::read(dev.join("state.json")).unwrap();
    let n = history(dev).len();
    let run = trust_add(dev, statement);
    assert_ne!(run.code, 0, "{what}: accepted\n{}", run.describe());
    run.assert_error(run.code);
    assert_eq!(
        fs::read(dev.join("state.json")).unwrap(),
        state,
        "{what}: state changed"
    );
    let h = history(dev);
    assert_eq!(h.len(), n + 1, "{what}: {h:#?}");
    assert_eq!(h[n]["event"], "trust-refused", "{what}: {}", h[n]);
}

#[test]
fn only_a_rotation_signed_by_a_trusted_key_adds_a_key() {
    let c = Case::new();
    let old_key = c.keygen("old");
    let new_key = c.keygen("new");
    let stranger = c.keygen("stranger");
    let dev = c.device("dev", &[&old_key], 1);
    let by_new = c.signed("by-new.fwd", "2.0.0", 5, &[&new_key]);
    c.refused(
        "new key not yet trusted",
        &dev,
        &by_new,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    // Signed only by a key the device does not trust.
    let forged = rotate(&c, "forged.rot", &new_key, &[&stranger], &[]);
    trust_refused("rotation signed by a stranger", &dev, &forged);
    // A genuine statement with its new key swapped for the stranger's.
    let genuine = rotate(&c, "genuine.rot", &new_key, &[&old_key], &[]);
    let mut swapped = fs::read(&genuine).unwrap();
    assert_eq!(&swapped[..5], b"\x89FWK\x01");
    assert_eq!(&swapped[5..37], &new_key.public());
    swapped[5..37].copy_from_slice(&stranger.public());
    let p = write(&c, "swapped.rot", &swapped);
    trust_refused("rotation with a swapped new key", &dev, &p);
    // Damaged: the old key's signature flipped.
    let mut damaged = fs::read(&genuine).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let p = write(&c, "damaged.rot", &damaged);
    trust_refused("damaged rotation", &dev, &p);
    assert_eq!(
        state_of(&dev)["trusted_keys"],
        serde_json::json!([hex(&old_key.public())])
    );
    c.refused(
        "still untrusted",
        &dev,
        &by_new,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );

    trust_add(&dev, &genuine).assert_ok();
    let h = history(&dev);
    let e = h.last().unwrap();
    assert_eq!(e["event"], "trust-added", "{e}");
    assert_eq!(e["key_id"], new_key.id(), "{e}");
    let keys = state_of(&dev)["trusted_keys"].clone();
    assert!(
        keys.as_array()
            .unwrap()
            .contains(&Value::from(hex(&new_key.public()))),
        "{keys}"
    );
    let e = c.applies(&dev, &by_new, &[]);
    assert_eq!(e["key_ids"], serde_json::json!([new_key.id()]), "{e}");
    // The same statement again changes nothing.
    trust_refused("rotation replayed", &dev, &genuine);
}

#[test]
fn a_rotation_that_retires_the_old_key_stops_trusting_it() {
    let c = Case::new();
    let old_key = c.keygen("old");
    let new_key = c.keygen("new");
    let dev = c.device("dev", &[&old_key], 1);
    let rot = rotate(&c, "retire.rot", &new_key, &[&old_key], &[&old_key]);
    trust_add(&dev, &rot).assert_ok();
    assert_eq!(
        state_of(&dev)["trusted_keys"],
        serde_json::json!([hex(&new_key.public())])
    );
    let by_old = c.signed("by-old.fwd", "2.0.0", 5, &[&old_key]);
    c.refused("retired key", &dev, &by_old, EXIT_NOT_AUTHENTIC, true, &[]);
    c.applies(&dev, &c.signed("by-new.fwd", "2.0.0", 5, &[&new_key]), &[]);
}

#[test]
fn a_retired_key_never_comes_back_through_an_old_statement() {
    // Root adds online2; later root adds online3 and retires online2. The
    // first statement is still signed by a trusted key (root): replaying it
    // must not bring the retired key back.
    let c = Case::new();
    let root = c.keygen("root");
    let online2 = c.keygen("online2");
    let online3 = c.keygen("online3");
    let dev = c.device("dev", &[&root], 1);
    let add2 = rotate(&c, "add2.rot", &online2, &[&root], &[]);
    trust_add(&dev, &add2).assert_ok();
    let add3 = rotate(&c, "add3.rot", &online3, &[&root], &[&online2]);
    trust_add(&dev, &add3).assert_ok();
    let by_online2 = c.signed("by-online2.fwd", "6.6", 99, &[&online2]);
    c.refused(
        "retired key",
        &dev,
        &by_online2,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );
    trust_refused(
        "the statement that added the retired key, replayed",
        &dev,
        &add2,
    );
    let h = history(&dev);
    assert!(
        h.last().unwrap()["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retired")),
        "{}",
        h.last().unwrap()
    );
    c.refused(
        "retired key, after the replay",
        &dev,
        &by_online2,
        EXIT_NOT_AUTHENTIC,
        true,
        &[],
    );
    // A key retired before it was ever trusted is refused too.
    let online4 = c.keygen("online4");
    let revoke4 = c.keygen("online5");
    let r = rotate(&c, "revoke4.rot", &revoke4, &[&root], &[&online4]);
    trust_add(&dev, &r).assert_ok();
    let add4 = rotate(&c, "add4.rot", &online4, &[&root], &[]);
    trust_refused("a key retired in advance", &dev, &add4);
    // The list survives the state file's round trip (a fresh process).
    assert_eq!(
        state_of(&dev)["retired_keys"],
        serde_json::json!([online2.id(), online4.id()])
    );
}

/// Run `apply` under `dev` expecting a state-directory refusal (nothing
/// recorded, `real`'s files and listing unchanged).
fn state_refused(c: &Case, what: &str, dev: &Path, real: &Path, patch: &Path, code: i32) {
    let snapshot = |d: &Path| {
        let mut v: Vec<(String, Option<Vec<u8>>)> = listing(d)
            .into_iter()
            .map(|n| {
                let b = fs::read(d.join(&n)).ok();
                (n, b)
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(real);
    c.refused(what, dev, patch, code, false, &[]);
    assert_eq!(
        snapshot(real),
        before,
        "{what}: the state directory's files changed"
    );
}

#[test]
fn an_unusable_state_directory_refuses_every_update() {
    let c = Case::new();
    let k = c.keygen("release");
    let dev = c.device("dev", &[&k], 1);
    let patch = c.signed("update.fwd", "2.0.0", 5, &[&k]);
    let state_file = dev.join("state.json");
    let genuine = fs::read(&state_file).unwrap();

    // One byte of state.json flipped, at the start, in the counter, at the
    // end of the check line.
    let counter_at = String::from_utf8_lossy(&genuine)
        .find("\"security_counter\":")
        .unwrap()
        + "\"security_counter\":".len();
    for at in [0, counter_at, genuine.len() - 2] {
        let mut bad = genuine.clone();
        bad[at] ^= 0x01;
        fs::write(&state_file, &bad).unwrap();
        state_refused(
            &c,
            "damaged state.json",
            &dev,
            &dev,
            &patch,
            EXIT_DEVICE_STATE,
        );
        assert_eq!(fs::read(&state_file).unwrap(), bad);
    }
    // Truncated.
    fs::write(&state_file, &genuine[..genuine.len() / 2]).unwrap();
    state_refused(&c, "torn state.json", &dev, &dev, &patch, EXIT_DEVICE_STATE);
    device_cmd("confirm", &dev).assert_error(EXIT_DEVICE_STATE);

    // Missing: refused, and not recreated.
    fs::remove_file(&state_file).unwrap();
    state_refused(
        &c,
        "missing state.json",
        &dev,
        &dev,
        &patch,
        EXIT_DEVICE_STATE,
    );
    assert!(!state_file.exists(), "state.json recreated");
    let history_run = fw!("history", "--device", dev);
    history_run.assert_error(EXIT_DEVICE_STATE);
    fs::write(&state_file, &genuine).unwrap();

    // A symbolic link to the real directory.
    let link = c.path("dev-link");
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    state_refused(
        &c,
        "state dir is a symlink",
        &link,
        &dev,
        &patch,
        EXIT_DEVICE_STATE,
    );

    // Not writable (mode bits, so root is refused too).
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o500)).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        state_refused(
            &c,
            "state dir mode 0500",
            &dev,
            &dev,
            &patch,
            EXIT_DEVICE_STATE,
        );
    }));
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o700)).unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // Locked by another process: busy.
    {
        use std::os::unix::io::AsRawFd;
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dev.join(".lock"))
            .unwrap();
        // SAFETY: the descriptor is open for the duration of the call.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
        state_refused(&c, "state dir locked", &dev, &dev, &patch, EXIT_BUSY);
        device_cmd("confirm", &dev).assert_error(EXIT_BUSY);
    }

    // With the genuine state back, the same patch applies.
    assert_eq!(fs::read(&state_file).unwrap(), genuine);
    c.applies(&dev, &patch, &[]);
    assert_eq!(counter_of(&dev), DEVICE_COUNTER);
    // ... and a damaged state.json stops confirm too, changing nothing.
    let pending = fs::read(&state_file).unwrap();
    let mut bad = pending.clone();
    bad[counter_at] ^= 0x01;
    fs::write(&state_file, &bad).unwrap();
    device_cmd("confirm", &dev).assert_error(EXIT_DEVICE_STATE);
    assert_eq!(fs::read(&state_file).unwrap(), bad);
    fs::write(&state_file, &pending).unwrap();
    device_cmd("confirm", &dev).assert_ok();
    assert_eq!(counter_of(&dev), 5);
}

#[test]
fn info_and_apply_trust_report_whether_signatures_verify() {
    let c = Case::new();
    let k = c.keygen("release");
    let stranger = c.keygen("stranger");
    let patch = c.signed("update.fwd", "2.0.0", 5, &[&k]);

    let info = |trust: Option<&Key>, json: bool| {
        let mut a: Vec<&OsStr> = vec!["info".as_ref(), patch.as_os_str()];
        if let Some(t) = trust {
            a.push("--trust".as_ref());
            a.push(t.public_file.as_os_str());
        }
        if json {
            a.push("--json".as_ref());
        }
        let r = fwdelta(&a);
        r.assert_ok();
        r
    };
    let text = info(Some(&k), false).stdout;
    let line = text
        .lines()
        .find(|l| l.contains("signature") && l.contains(&k.id()))
        .unwrap_or_else(|| panic!("no signature line:\n{text}"));
    assert!(line.contains("verifies") && !line.contains("NOT"), "{line}");
    let text = info(Some(&stranger), false).stdout;
    let line = text
        .lines()
        .find(|l| l.contains("signature") && l.contains(&k.id()))
        .unwrap_or_else(|| panic!("no signature line:\n{text}"));
    assert!(line.contains("does NOT verify"), "{line}");

    let json =
        |trust: Option<&Key>| -> Value { serde_json::from_str(&info(trust, true).stdout).unwrap() };
    let v = json(Some(&k));
    assert_eq!(
        v["signatures"],
        serde_json::json!([{"key_id": k.id(), "verified": true}]),
        "{v}"
    );
    assert_eq!(v["trusted"], true);
    assert_eq!(v["release"]["product"], PRODUCT);
    assert_eq!(v["release"]["security_counter"], 5);
    let v = json(Some(&stranger));
    assert_eq!(v["signatures"][0]["verified"], false, "{v}");
    assert_eq!(v["trusted"], false);

    // A damaged signature: reported as not verifying with the right key.
    let mut bad = fs::read(&patch).unwrap();
    let end = layout(&bad).section_end;
    bad[end - 1] ^= 1;
    let bad_path = write(&c, "bad.fwd", &bad);
    let r = fw!("info", bad_path, "--trust", k.public_file, "--json");
    r.assert_ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["signatures"][0]["verified"], false, "{v}");

    // apply --trust, no device: the same verdicts, nothing written on refusal.
    let apply_trust = |key: &Key, p: &Path| {
        let out = c.fresh_output();
        let r = fw!("apply", "--trust", key.public_file, c.old, p, "-o", out);
        (r, out)
    };
    let (r, out) = apply_trust(&k, &patch);
    r.assert_ok();
    assert!(fs::read(&out).unwrap() == c.new_bytes);
    for (key, p) in [(&stranger, &patch), (&k, &bad_path)] {
        let (r, out) = apply_trust(key, p);
        r.assert_error(EXIT_NOT_AUTHENTIC);
        assert!(!out.exists());
    }
    let plain = c.diff("plain.fwd", &[]);
    let (r, out) = apply_trust(&k, &plain);
    r.assert_error(EXIT_NOT_AUTHENTIC);
    assert!(!out.exists());
    assert!(fs::read(&c.old).unwrap() == c.old_bytes);
}

/// Without `--trust` nothing is checked: `info` must not claim a signature
/// fails to verify ("not checked", JSON `verified: null`, as `trusted` is).
#[test]
fn info_without_trust_says_signatures_are_not_checked() {
    let c = Case::new();
    let k = c.keygen("release");
    let patch = c.signed("update.fwd", "2.0.0", 5, &[&k]);
    let r = fw!("info", patch, "--json");
    r.assert_ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["trusted"].is_null(), "{v}");
    assert_eq!(v["signatures"][0]["key_id"], k.id(), "{v}");
    assert!(
        v["signatures"][0]["verified"].is_null(),
        "no key given, yet verified is {}",
        v["signatures"][0]["verified"]
    );
    let r = fw!("info", patch);
    r.assert_ok();
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("signature") && l.contains(&k.id()))
        .unwrap_or_else(|| panic!("no signature line:\n{}", r.stdout));
    assert!(
        line.contains("not checked") && !line.contains("NOT verify"),
        "{line}"
    );
}

#[test]
fn signed_in_place_patch_rewrites_the_image_and_a_forged_one_leaves_it_alone() {
    let c = Case::new();
    let k = c.keygen("release");
    let stranger = c.keygen("stranger");
    let dev = c.device("dev", &[&k], 1);
    let patch = c.release("in-place.fwd", PRODUCT, "2.0.0", 5, &[&k], &["--in-place"]);
    let genuine = fs::read(&patch).unwrap();
    let img_dir = c.path("flash");
    fs::create_dir(&img_dir).unwrap();
    let img = img_dir.join("slot.bin");
    fs::write(&img, &c.old_bytes).unwrap();

    let apply_in_place = |p: &Path| fw!("apply", "--device", dev, "--in-place", img, p);
    let refused = |what: &str, p: &Path| {
        let state = fs::read(dev.join("state.json")).unwrap();
        let n = history(&dev).len();
        let r = apply_in_place(p);
        assert_eq!(r.code, EXIT_NOT_AUTHENTIC, "{what}\n{}", r.describe());
        r.assert_error(EXIT_NOT_AUTHENTIC);
        assert!(
            fs::read(&img).unwrap() == c.old_bytes,
            "{what}: image changed"
        );
        assert_eq!(listing(&img_dir), ["slot.bin"], "{what}: journal left");
        assert_eq!(fs::read(dev.join("state.json")).unwrap(), state);
        let h = history(&dev);
        assert_eq!(h.len(), n + 1, "{what}");
        assert_eq!(h[n]["event"], "refused", "{what}");
        assert_eq!(h[n]["exit_code"], EXIT_NOT_AUTHENTIC, "{what}");
    };

    let mut forged = genuine.clone();
    let end = layout(&forged).section_end;
    forged[end - 5] ^= 0x10;
    refused("damaged signature", &write(&c, "forged.fwd", &forged));
    let by_stranger = c.release(
        "stranger.fwd",
        PRODUCT,
        "2.0.0",
        5,
        &[&stranger],
        &["--in-place"],
    );
    refused("untrusted signer", &by_stranger);
    let unsigned = c.diff("unsigned.fwd", &[OsStr::new("--in-place")]);
    refused("unsigned", &unsigned);

    apply_in_place(&patch).assert_ok();
    assert!(fs::read(&img).unwrap() == c.new_bytes, "image is not new");
    assert_eq!(listing(&img_dir), ["slot.bin"], "journal left behind");
    let e = history(&dev).last().unwrap().clone();
    assert_eq!(e["event"], "applied", "{e}");
    assert_eq!(e["mode"], "in-place", "{e}");
    assert_eq!(e["key_ids"], serde_json::json!([k.id()]), "{e}");
    assert_eq!(counter_of(&dev), DEVICE_COUNTER);
    device_cmd("confirm", &dev).assert_ok();
    assert_eq!(counter_of(&dev), 5);
}
