//! `fwdelta device init`, `apply --device`, `confirm`, `rollback`,
//! `history` and `trust add`: the terminal side of signed updates.

use crate::signing_cmd::read_public;
use anyhow::{Context, Result};
use clap::Args;
use fwdelta_apply::{ApplyError, ApplyOptions, ApplyReport, TrustPolicy, Verdict};
use fwdelta_device::state_file::Update;
use fwdelta_device::{unix_now, DeviceDir, InitOptions};
use fwdelta_format::key_file::hex;
use fwdelta_format::signature::SignatureSection;
use fwdelta_format::Header;
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `fwdelta device init`.
#[derive(Args)]
pub struct InitArgs {
    /// The state directory to create (must not exist, or be empty).
    pub dir: PathBuf,
    /// This device's product id.
    #[arg(long)]
    pub product: String,
    /// A public key file to trust (repeatable).
    #[arg(long = "trust", required = true)]
    pub trust: Vec<PathBuf>,
    /// The version installed now.
    #[arg(long = "version")]
    pub version: String,
    /// The security counter of the installed version.
    #[arg(long, default_value_t = 0)]
    pub counter: u64,
    /// How many distinct trusted keys must sign a patch.
    #[arg(long, default_value_t = 1)]
    pub threshold: usize,
}

/// `fwdelta device pin-server`.
#[derive(Args)]
pub struct PinServerArgs {
    /// The device state directory.
    pub dir: PathBuf,
    /// The update server's TLS authority: a PEM certificate file (its CA,
    /// or its own self-signed certificate).
    #[arg(long)]
    pub ca: PathBuf,
    /// The time (Unix seconds) to record instead of the clock's (tests).
    #[arg(long, hide = true)]
    pub now: Option<u64>,
}

/// `fwdelta device pin-server DIR --ca FILE`.
pub fn cmd_pin_server(a: &PinServerArgs) -> Result<()> {
    let pem = std::fs::read(&a.ca).with_context(|| format!("cannot read {}", a.ca.display()))?;
    anyhow::ensure!(
        pem.len() <= fwdelta_device::MAX_SERVER_CA_LEN,
        "{} is over {} bytes",
        a.ca.display(),
        fwdelta_device::MAX_SERVER_CA_LEN
    );
    let certs = crate::fetch_cmd::parse_pem_certificates(&pem)
        .with_context(|| format!("cannot pin {}", a.ca.display()))?;
    fwdelta_fetch::pinned_tls(&certs)
        .with_context(|| format!("cannot pin {}: not a usable authority", a.ca.display()))?;
    let mut dev = open(&a.dir)?;
    dev.pin_server_ca(&pem, a.now.unwrap_or_else(unix_now))?;
    eprintln!(
        "{}: server authority pinned ({} certificate(s), BLAKE3 {})",
        a.dir.display(),
        certs.len(),
        &blake3::hash(&pem).to_hex()[..16]
    );
    Ok(())
}

/// `fwdelta confirm` / `fwdelta rollback`.
#[derive(Args)]
pub struct DeviceArgs {
    /// The device state directory.
    #[arg(long)]
    pub device: PathBuf,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
    /// The time (Unix seconds) to record instead of the clock's (tests).
    #[arg(long, hide = true)]
    pub now: Option<u64>,
}

/// `fwdelta history`.
#[derive(Args)]
pub struct HistoryArgs {
    /// The device state directory.
    #[arg(long)]
    pub device: PathBuf,
    /// One JSON object per entry, as stored.
    #[arg(long)]
    pub json: bool,
}

/// `fwdelta trust add`.
#[derive(Args)]
pub struct TrustAddArgs {
    /// The device state directory.
    #[arg(long)]
    pub device: PathBuf,
    /// A rotation statement made by `fwdelta trust rotate`.
    pub statement: PathBuf,
    /// The time (Unix seconds) to record instead of the clock's (tests).
    #[arg(long, hide = true)]
    pub now: Option<u64>,
}

/// `fwdelta device init`.
pub fn cmd_init(a: &InitArgs) -> Result<()> {
    let keys = a
        .trust
        .iter()
        .map(|p| read_public(p))
        .collect::<Result<Vec<_>>>()?;
    DeviceDir::init(
        &a.dir,
        &InitOptions {
            product: a.product.clone(),
            version: a.version.clone(),
            counter: a.counter,
            keys,
            threshold: a.threshold,
        },
    )
    .with_context(|| format!("cannot initialise {}", a.dir.display()))
}

/// `fwdelta confirm --device DIR`.
pub fn cmd_confirm(a: &DeviceArgs) -> Result<()> {
    let mut dev = open(&a.device)?;
    let u = dev.confirm(a.now.unwrap_or_else(unix_now))?;
    if !a.quiet {
        eprintln!(
            "{}: version {} confirmed; security counter now {}",
            a.device.display(),
            u.version,
            dev.state().counter
        );
    }
    Ok(())
}

/// `fwdelta rollback --device DIR`.
pub fn cmd_rollback(a: &DeviceArgs) -> Result<()> {
    let mut dev = open(&a.device)?;
    let u = dev.rollback(a.now.unwrap_or_else(unix_now))?;
    if !a.quiet {
        eprintln!(
            "{}: update to {} rolled back; still version {}, counter {}",
            a.device.display(),
            u.version,
            dev.state().version,
            dev.state().counter
        );
    }
    Ok(())
}

/// `fwdelta trust add --device DIR STATEMENT`.
pub fn cmd_trust_add(a: &TrustAddArgs) -> Result<()> {
    let mut dev = open(&a.device)?;
    let bytes = std::fs::read(&a.statement)
        .with_context(|| format!("cannot read {}", a.statement.display()))?;
    let now = a.now.unwrap_or_else(unix_now);
    match dev.add_trust(&bytes, now) {
        Ok(id) => {
            eprintln!("{}: now trusts key {id}", a.device.display());
            Ok(())
        }
        Err(e) => {
            let _ = dev.refused(&json!({
                "time": now, "event": "trust-refused", "reason": e.to_string(),
            }));
            Err(e.into())
        }
    }
}

/// `fwdelta history --device DIR`.
pub fn cmd_history(a: &HistoryArgs) -> Result<()> {
    let dev = open(&a.device)?;
    let h = dev.history()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for e in &h.entries {
            writeln!(out, "{e}")?;
        }
    } else {
        let s = dev.state();
        writeln!(
            out,
            "device {}: product {}, version {}, security counter {}{}",
            a.device.display(),
            s.product,
            s.version,
            s.counter,
            s.pending
                .as_ref()
                .map(|p| format!(", {} awaiting confirmation", p.version))
                .unwrap_or_default()
        )?;
        for e in &h.entries {
            writeln!(out, "  {}", describe(e))?;
        }
    }
    if h.skipped > 0 {
        eprintln!(
            "fwdelta: {} torn or damaged history line(s) skipped",
            h.skipped
        );
    }
    Ok(())
}

/// One line for a history entry.
fn describe(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let time = e["time"].as_u64().unwrap_or(0);
    match e["event"].as_str().unwrap_or("?") {
        "applied" => format!(
            "{time} applied    {} -> {} ({} mode, key {}, {} patch bytes read, {} written, {} ms{})",
            s("old_version"),
            s("new_version"),
            s("mode"),
            e["key_ids"]
                .as_array()
                .and_then(|k| k.first())
                .and_then(Value::as_str)
                .unwrap_or("-"),
            e["bytes_read"],
            e["bytes_written"],
            e["duration_ms"],
            match e["resumed"].as_u64() {
                Some(n) if n > 0 => format!(", resumed {n} times"),
                _ => String::new(),
            }
        ),
        "refused" if e.get("manifest").is_some() => {
            format!("{time} refused    manifest {} ({})", s("manifest"), s("reason"))
        }
        "refused" => format!("{time} refused    {} ({})", s("new_version"), s("reason")),
        "fetch-failed" => format!(
            "{time} fetch failed {} (try {}, {} bytes downloaded, {} resumes: {})",
            s("patch_file"),
            e["try"],
            e["bytes_downloaded"],
            e["resumes"],
            s("reason")
        ),
        "server-pinned" => format!("{time} server authority pinned ({})", s("server_ca_blake3")),
        "confirmed" => format!("{time} confirmed  {}", s("new_version")),
        "rolled-back" => format!("{time} rolled back {}", s("abandoned_version")),
        other => format!("{time} {other} {e}"),
    }
}

fn open(dir: &Path) -> Result<DeviceDir> {
    DeviceDir::open(dir).with_context(|| format!("cannot use device state {}", dir.display()))
}

/// Record in the device at `dir` that `apply --manifest` refused the
/// manifest at `manifest` (`e`, the refusal; returned, with a note if it
/// could not be recorded). Nothing else of the device changes.
pub fn record_manifest_refusal(
    dir: &Path,
    manifest: &Path,
    now: u64,
    mode: &str,
    e: anyhow::Error,
) -> anyhow::Error {
    let dev = match open(dir) {
        Ok(dev) => dev,
        Err(open_err) => {
            return e.context(format!(
                "and the refusal could not be recorded: {open_err:#}"
            ))
        }
    };
    let entry = json!({
        "time": now, "mode": mode, "event": "refused",
        "old_version": dev.state().version,
        "manifest": manifest.display().to_string(),
        "reason": format!("{e:#}"),
        "exit_code": crate::exit_code(&e),
    });
    match dev.refused(&entry) {
        Ok(()) => e,
        Err(log) => e.context(format!("and the refusal could not be recorded: {log}")),
    }
}

/// The device's policy on a patch. In place, an expired patch is left to the
/// applier: only it knows (from the journal beside the image) whether an
/// update of this patch was cut mid-way, which it then finishes (refusing it
/// would leave an image that is neither version), and it refuses the patch
/// otherwise, before writing. Elsewhere the old image is intact whatever
/// happened, so an expired patch is refused here.
fn judge(
    policy: &TrustPolicy,
    header: &Header,
    header_bytes: &[u8],
    section: Option<&SignatureSection>,
    in_place: bool,
) -> Result<Verdict, ApplyError> {
    match policy.check_deferring_expiry(header, header_bytes, section)? {
        (_, Some(expired)) if !in_place => Err(expired),
        (verdict, _) => Ok(verdict),
    }
}

/// What `apply --device` records of a patch: the update and the history
/// entry's fields.
struct Planned {
    update: Update,
    entry: Value,
}

/// The device's record of the update the patch with `header` makes, which
/// the policy judged `verdict` (an unsigned patch has no release: refused).
pub fn update_of(header: &Header, verdict: &Verdict) -> Result<Update, ApplyError> {
    let release = header.release.as_ref().ok_or(ApplyError::Unsigned)?;
    Ok(Update {
        patch: hex(&verdict.message.unwrap_or_default()),
        version: release.version.clone(),
        counter: release.security_counter,
        new_hash: hex(&header.new_hash),
        attempts: 0,
    })
}

impl Planned {
    /// The record of the patch with `header` that the policy judged `verdict`.
    fn of(header: &Header, verdict: &Verdict) -> Result<Planned, ApplyError> {
        let update = update_of(header, verdict)?;
        Ok(Planned {
            entry: json!({
                "patch": update.patch, "new_version": update.version,
                "security_counter": update.counter,
                "old_blake3_prefix": hex(&header.old_check),
                "new_blake3": hex(&header.new_hash),
                "key_ids": verdict.signed_by.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            }),
            update,
        })
    }
}

/// Run `apply` (`run`, given the options with the device's policy) under the
/// device at `dir`: the policy is checked from the patch's first bytes before
/// anything is written, refusals are recorded, the update is marked in
/// progress, and on success recorded and marked awaiting confirmation.
///
/// `run` opens the patch again. It is held to the new image planned (a patch
/// file replaced in between for one that makes another image is refused
/// before writing), and what is recorded comes from the patch `run` verified,
/// so a replacement for the same image under another release is recorded as
/// that release.
pub fn apply_with_device(
    dir: &Path,
    patch_path: &Path,
    mut opts: ApplyOptions,
    now: u64,
    mode: &str,
    run: impl FnOnce(ApplyOptions) -> Result<ApplyReport>,
) -> Result<ApplyReport> {
    let start = Instant::now();
    let mut dev = open(dir)?;
    let policy = Arc::new(dev.policy(now));
    opts.policy = Some(policy.clone());
    let base = json!({
        "time": now, "mode": mode, "old_version": dev.state().version,
        "patch_file": patch_path.display().to_string(),
    });
    let with = |extra: Value| {
        let mut e = base.clone();
        if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        e
    };
    let refuse = |dev: &DeviceDir, e: anyhow::Error, extra: Value| -> anyhow::Error {
        let mut entry = with(extra);
        entry["event"] = "refused".into();
        entry["reason"] = format!("{e:#}").into();
        entry["exit_code"] = crate::exit_code(&e).into();
        if let Err(log) = dev.refused(&entry) {
            return e.context(format!("and the refusal could not be recorded: {log}"));
        }
        e
    };
    // The policy, from the header and signature section alone.
    let planned = File::open(patch_path)
        .with_context(|| format!("cannot open patch {}", patch_path.display()))
        .and_then(|mut f| {
            let (header, header_bytes, section, _) =
                fwdelta_apply::inspect::read_patch_start(&mut f)
                    .with_context(|| format!("cannot apply {}", patch_path.display()))?;
            let verdict = judge(
                &policy,
                &header,
                &header_bytes,
                section.as_ref(),
                mode == "in-place",
            )
            .with_context(|| format!("refusing {}", patch_path.display()))?;
            opts.expected_new_hash.get_or_insert(header.new_hash);
            Ok(Planned::of(&header, &verdict)?)
        });
    let planned = match planned {
        Ok(p) => p,
        Err(e) => return Err(refuse(&dev, e, json!({}))),
    };
    let attempts = match dev.begin(&planned.update) {
        Ok(n) => n,
        Err(e) => return Err(refuse(&dev, e.into(), planned.entry)),
    };
    let applied = run(opts).and_then(|report| {
        let done = Planned::of(&report.header, &report.verdict)?;
        Ok((report, done))
    });
    match applied {
        Ok((report, done)) => {
            let mut entry = with(done.entry);
            if done.update.patch != planned.update.patch {
                // The file changed after it was judged; the policy held.
                entry["planned_patch"] = planned.update.patch.into();
            }
            entry["event"] = "applied".into();
            entry["resumed"] = (attempts - 1).into();
            entry["already_applied"] = report.already_applied.into();
            entry["bytes_read"] = report.patch_len.into();
            entry["bytes_written"] = if report.already_applied {
                0
            } else {
                report.header.new_len
            }
            .into();
            entry["duration_ms"] = (start.elapsed().as_millis() as u64).into();
            dev.applied_as(&done.update, &entry).with_context(|| {
                format!(
                    "the image is applied but {} could not record it",
                    dir.display()
                )
            })?;
            Ok(report)
        }
        Err(e) => Err(refuse(&dev, e, planned.entry)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use fwdelta_diff::patch_signer::sign_for_release;
    use fwdelta_format::Release;

    const NOW: u64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// A patch from `old` to `new` signed for release `version`, `counter`.
    fn signed(old: &[u8], new: &[u8], version: &str, counter: u64) -> Vec<u8> {
        let patch = fwdelta_diff::diff(old, new, &fwdelta_diff::Options::default())
            .expect("diff")
            .bytes;
        let release = Release {
            product: "acme-t300".into(),
            version: version.into(),
            security_counter: counter,
            expires: 0,
        };
        sign_for_release(&patch, Some(&release), &[key()]).expect("sign")
    }

    fn images() -> (Vec<u8>, Vec<u8>) {
        let old: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[1_000..1_100].fill(9);
        (old, new)
    }

    fn device(root: &Path) -> PathBuf {
        let dir = root.join("device");
        DeviceDir::init(
            &dir,
            &InitOptions {
                product: "acme-t300".into(),
                version: "1.0".into(),
                counter: 1,
                keys: vec![key().verifying_key().to_bytes()],
                threshold: 1,
            },
        )
        .expect("init");
        dir
    }

    /// Plan from the patch at `path`, then (as if the file were replaced in
    /// between) apply `swapped` from the same path.
    fn apply_swapped(
        root: &Path,
        old: &[u8],
        planned: &[u8],
        swapped: &[u8],
    ) -> Result<ApplyReport> {
        let dir = device(root);
        let path = root.join("update.fwd");
        std::fs::write(&path, planned).expect("write patch");
        apply_with_device(&dir, &path, ApplyOptions::new(), NOW, "file", |opts| {
            std::fs::write(&path, swapped).expect("swap patch");
            let patch = File::open(&path)?;
            let (report, _) = fwdelta_apply::apply(old, patch, Vec::new(), opts)?;
            Ok(report)
        })
    }

    #[test]
    fn a_patch_replaced_mid_apply_is_recorded_as_the_release_applied() {
        let root = tempfile::tempdir().expect("tempdir");
        let (old, new) = images();
        let planned = signed(&old, &new, "2.0", 5);
        let swapped = signed(&old, &new, "2.1", 7);
        let report = apply_swapped(root.path(), &old, &planned, &swapped).expect("apply");
        let dev = DeviceDir::open(&root.path().join("device")).expect("open");
        let pending = dev.state().pending.clone().expect("pending update");
        assert_eq!(pending.version, "2.1");
        assert_eq!(pending.counter, 7);
        assert_eq!(
            Some(pending.patch.clone()),
            report.verdict.message.map(|m| hex(&m))
        );
        let history = dev.history().expect("history");
        let last = history.entries.last().expect("an entry");
        assert_eq!(last["event"], "applied");
        assert_eq!(last["new_version"], "2.1");
        assert_eq!(last["patch"], pending.patch.as_str());
        assert!(
            last["planned_patch"]
                .as_str()
                .is_some_and(|p| p != pending.patch),
            "{last}"
        );
    }

    #[test]
    fn a_patch_replaced_by_one_for_another_image_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let (old, new) = images();
        let mut other = new.clone();
        other[5_000] ^= 0xFF;
        let planned = signed(&old, &new, "2.0", 5);
        let swapped = signed(&old, &other, "2.0", 5);
        let err = apply_swapped(root.path(), &old, &planned, &swapped).expect_err("refused");
        assert!(
            matches!(
                err.downcast_ref::<ApplyError>(),
                Some(ApplyError::UnexpectedNewImage { .. })
            ),
            "{err:#}"
        );
        let dev = DeviceDir::open(&root.path().join("device")).expect("open");
        assert!(dev.state().pending.is_none());
        let history = dev.history().expect("history");
        assert_eq!(
            history.entries.last().expect("an entry")["event"],
            "refused"
        );
    }
}
