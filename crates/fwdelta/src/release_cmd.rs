//! `fwdelta release RELEASE.toml -o OUTDIR`: for one new image, a patch
//! from every old image in the field, a full-image patch as the fallback,
//! and `manifest.json` (signed when keys are given). Described in
//! `docs/RELEASE.md`.
//!
//! Jobs run in one rayon pool (`-j`, default all cores): the full-image
//! patch first (its size decides which deltas are left out), then every
//! delta at once; a diff's own parallel work runs in the same pool, so a
//! pair takes whatever threads the other pairs leave idle. Every patch is
//! applied back and compared with the new image before it is written or
//! enters the manifest; a rerun reuses a patch already in OUTDIR only if
//! it passes the same check.

use crate::{hex, input, signing_cmd, size, write_atomically};
use anyhow::{Context, Result};
use clap::Args;
use ed25519_dalek::{Signer, SigningKey};
use fwdelta_apply::{ApplyOptions, TrustPolicy};
use fwdelta_device::manifest::{self, Manifest, ManifestSignature, OldEntry, PatchFile};
use fwdelta_diff::Options;
use fwdelta_format::signature::KeyId;
use fwdelta_format::Release;
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `fwdelta release`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReleaseArgs {
    /// A release cut into jobs for a distributed engine (plan, run-job,
    /// collect); without one, the whole release on this machine.
    #[command(subcommand)]
    pub step: Option<crate::release_plan::Step>,
    /// The release description (TOML, see docs/RELEASE.md).
    #[arg(required = true)]
    pub description: Option<PathBuf>,
    /// The release directory (created if missing; patches already in it
    /// that verify are reused).
    #[arg(short, long, required = true)]
    pub output: Option<PathBuf>,
    /// Worker threads for all jobs together (default: all cores).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// Print one JSON report on stdout (per job: old version and hash,
    /// patch file, bytes, diff seconds, verified).
    #[arg(long)]
    pub json: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The release description file. Paths are relative to its directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    product: String,
    version: String,
    security_counter: u64,
    #[serde(default)]
    expires: Option<u64>,
    new_image: PathBuf,
    #[serde(default)]
    keys: Vec<PathBuf>,
    #[serde(default)]
    old: Vec<OldSpec>,
    #[serde(default)]
    old_dir: Option<PathBuf>,
    #[serde(default)]
    max_share: Option<f64>,
    #[serde(default)]
    diff: DiffSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OldSpec {
    path: PathBuf,
    version: String,
}

/// A size: an integer or text like "4MiB".
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum SizeSpec {
    Bytes(u64),
    Text(String),
}

impl SizeSpec {
    fn bytes(&self, what: &str) -> Result<u64> {
        match self {
            SizeSpec::Bytes(n) => Ok(*n),
            SizeSpec::Text(t) => {
                size::parse_size(t).map_err(|e| anyhow::anyhow!("diff.{what}: {e}"))
            }
        }
    }
}

/// `fwdelta diff`'s generator options, by the same names.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiffSpec {
    level: Option<i32>,
    codec: Option<String>,
    apply_memory: Option<SizeSpec>,
    segment_size: Option<SizeSpec>,
    align: Option<SizeSpec>,
    arch: Option<String>,
    layout: Option<String>,
    literal_filter: Option<bool>,
}

/// The description, checked and with paths resolved.
pub(crate) struct Plan {
    pub(crate) release: Release,
    pub(crate) new_image: PathBuf,
    /// The secret key files, as resolved (in the description's order).
    pub(crate) key_paths: Vec<PathBuf>,
    pub(crate) keys: Vec<SigningKey>,
    pub(crate) old: Vec<(PathBuf, String)>,
    pub(crate) max_share: f64,
    pub(crate) diff: DiffParams,
    pub(crate) options: Options,
    /// Canonical text of everything besides the images that shapes a patch.
    pub(crate) recipe: String,
}

/// The generator options of a release, by their description names, with
/// every default filled in: what a plan's jobs carry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiffParams {
    pub(crate) codec: String,
    pub(crate) level: i32,
    pub(crate) apply_memory: u64,
    pub(crate) segment_size: u64,
    pub(crate) align: u64,
    pub(crate) arch: String,
    pub(crate) layout: String,
    pub(crate) literal_filter: bool,
}

impl DiffParams {
    /// The generator's options; fails on an unknown codec, arch or layout.
    pub(crate) fn options(&self) -> Result<Options> {
        let codec =
            crate::parse_codec(&self.codec).map_err(|e| anyhow::anyhow!("diff.codec: {e}"))?;
        let code =
            crate::parse_code_mode(&self.arch).map_err(|e| anyhow::anyhow!("diff.arch: {e}"))?;
        let layout = match self.layout.as_str() {
            "auto" => None,
            "modelled" => Some(fwdelta_format::Layout::Modelled),
            "split" => Some(fwdelta_format::Layout::Split),
            "interleaved" => Some(fwdelta_format::Layout::Interleaved),
            other => anyhow::bail!(
                "diff.layout: {other:?}: expected auto, modelled, split or interleaved"
            ),
        };
        Ok(Options {
            codec,
            level: self.level,
            apply_memory: self.apply_memory,
            segment_cost: self.segment_size,
            in_place: None,
            align: self.align.max(1),
            code,
            layout,
            literal_filter: self.literal_filter,
            ..Options::default()
        })
    }
}

/// Canonical text of everything besides the images that shapes a patch:
/// hashed into every patch file's name (`<recipe8>`).
pub(crate) fn recipe_text(release: &Release, d: &DiffParams, keys: &[SigningKey]) -> String {
    let mut key_ids: Vec<String> = keys
        .iter()
        .map(|k| KeyId::of(k.verifying_key().as_bytes()).to_string())
        .collect();
    key_ids.sort();
    format!(
        "codec={} level={} apply_memory={} segment_size={} \
         align={} arch={} layout={} literal_filter={} \
         product={} version={} counter={} expires={} keys={} fwdelta={}",
        d.codec,
        d.level,
        d.apply_memory,
        d.segment_size,
        d.align,
        d.arch,
        d.layout,
        d.literal_filter,
        release.product,
        release.version,
        release.security_counter,
        release.expires,
        key_ids.join(","),
        env!("CARGO_PKG_VERSION"),
    )
}

/// The 8 hex digits of the recipe that patch file names carry.
pub(crate) fn recipe_hex(recipe: &str) -> String {
    hex(&blake3::derive_key(
        "fwdelta 2026-12 release recipe v1",
        recipe.as_bytes(),
    ))[..8]
        .to_string()
}

/// A patch's file name in the release directory: from the old image's hash
/// (`None`: the full image), the new image's and the recipe's.
pub(crate) fn patch_file_name(old: Option<&[u8; 32]>, new: &[u8; 32], recipe8: &str) -> String {
    let new_hex = hex(new);
    match old {
        Some(old) => format!("{}-{}-{recipe8}.fwd", &hex(old)[..24], &new_hex[..24]),
        None => format!("full-{}-{recipe8}.fwd", &new_hex[..24]),
    }
}

/// Default share of the full-image patch above which a delta is left out.
pub const DEFAULT_MAX_SHARE: f64 = 0.8;

/// Line and column (1-based) of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

/// A version string of an old image: printable ASCII without spaces, 1 to 64 bytes.
fn check_version(v: &str, what: &str) -> Result<()> {
    anyhow::ensure!(
        !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()),
        "{what}: version {v:?} must be 1 to 64 printable ASCII characters without spaces"
    );
    Ok(())
}

/// Read and check a release description (TOML); paths resolve against its
/// directory. Reads the key files; does not open the images.
pub(crate) fn parse_description(path: &Path) -> Result<Plan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let d: Description = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let (l, c) = line_col(&text, s.start);
                format!("{l}:{c}: ")
            })
            .unwrap_or_default();
        let msg = e.message().replace('\n', " ");
        anyhow::anyhow!("{}:{at}{}", path.display(), msg.trim())
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let resolve = |p: &Path| base.join(p);
    let release = Release {
        product: d.product.clone(),
        version: d.version.clone(),
        security_counter: d.security_counter,
        expires: d.expires.unwrap_or(0),
    };
    release
        .validate()
        .with_context(|| format!("{}: bad release statement", path.display()))?;
    let max_share = d.max_share.unwrap_or(DEFAULT_MAX_SHARE);
    anyhow::ensure!(
        max_share.is_finite() && max_share > 0.0,
        "{}: max_share must be a positive number, not {max_share}",
        path.display()
    );
    let mut keys = Vec::new();
    for k in &d.keys {
        let k = resolve(k);
        let text = std::fs::read(&k).with_context(|| format!("cannot read {}", k.display()))?;
        keys.push(
            fwdelta_diff::patch_signer::parse_secret_key(&text)
                .with_context(|| format!("{}", k.display()))?,
        );
    }
    let mut old = Vec::new();
    for o in &d.old {
        check_version(&o.version, &o.path.display().to_string())?;
        old.push((resolve(&o.path), o.version.clone()));
    }
    if let Some(dir) = &d.old_dir {
        let dir = resolve(dir);
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list old_dir {}", dir.display()))?
        {
            let e = e.with_context(|| format!("cannot list old_dir {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let p = e.path();
            // Listed in [[old]] too: that entry's version wins.
            if old.iter().any(|(q, _)| same_file(q, &p)) {
                continue;
            }
            let version = name.strip_suffix(".bin").unwrap_or(&name).to_string();
            check_version(&version, &p.display().to_string())?;
            found.push((p, version));
        }
        found.sort();
        old.extend(found);
    }
    let s = &d.diff;
    let size = |v: &Option<SizeSpec>, what: &str, default: u64| -> Result<u64> {
        v.as_ref()
            .map_or(Ok(default), |v| v.bytes(what))
            .with_context(|| format!("{}", path.display()))
    };
    let diff = DiffParams {
        codec: s.codec.clone().unwrap_or_else(|| "lzma2".into()),
        level: s.level.unwrap_or(19),
        apply_memory: size(&s.apply_memory, "apply_memory", 4 << 20)?,
        segment_size: size(&s.segment_size, "segment_size", 1 << 20)?,
        align: size(&s.align, "align", 1)?.max(1),
        arch: s.arch.clone().unwrap_or_else(|| "auto".into()),
        layout: s.layout.clone().unwrap_or_else(|| "auto".into()),
        literal_filter: s.literal_filter.unwrap_or(true),
    };
    let options = diff
        .options()
        .with_context(|| format!("{}", path.display()))?;
    let recipe = recipe_text(&release, &diff, &keys);
    Ok(Plan {
        release,
        new_image: resolve(&d.new_image),
        key_paths: d.keys.iter().map(|k| resolve(k)).collect(),
        keys,
        old,
        max_share,
        diff,
        options,
        recipe,
    })
}

/// Hold an exclusive `flock` on the release directory itself (no lock file
/// is left in it), so two releases never write one directory at once.
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another fwdelta release is writing {} (it is locked)",
            dir.display()
        );
    }
    Ok(f)
}

/// Remove the temporary files a killed release left in `dir` (under its
/// lock, so none is another run's): `.NAME.fwdelta-PID-N.tmp` for a NAME a
/// release writes (`*.fwd`, `manifest.json`, `manifest.sig`).
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(target) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once(".fwdelta-"))
            .map(|(t, _)| t)
        else {
            continue;
        };
        let ours =
            target.ends_with(".fwd") || target == "manifest.json" || target == "manifest.sig";
        if ours && e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// One patch to make: from `old` (empty for the full image) to the new image.
pub(crate) struct Job {
    /// `None` for the full-image patch.
    pub(crate) version: Option<String>,
    /// The old image's path (`None` for the full image).
    pub(crate) path: Option<PathBuf>,
    pub(crate) old: input::Image,
    pub(crate) old_hash: [u8; 32],
    pub(crate) file: String,
}

/// The jobs of a release, in plan order: the full image first, then one
/// delta per distinct old image (the description's order). Maps and
/// hashes every old image (one read of each); refuses one image under two
/// versions.
pub(crate) fn release_jobs(plan: &Plan, new_hash: &[u8; 32]) -> Result<Vec<Job>> {
    let recipe8 = recipe_hex(&plan.recipe);
    let mut jobs = vec![Job {
        version: None,
        path: None,
        old: input::Image::empty(),
        old_hash: *blake3::hash(&[]).as_bytes(),
        file: patch_file_name(None, new_hash, &recipe8),
    }];
    let mut seen: BTreeMap<[u8; 32], (String, PathBuf)> = BTreeMap::new();
    for (path, version) in &plan.old {
        let old = input::Image::open(path)?;
        let old_hash = *blake3::hash(&old).as_bytes();
        if let Some((v, p)) = seen.get(&old_hash) {
            anyhow::ensure!(
                v == version,
                "{} (version {version}) and {} (version {v}) are the same image; give it one version",
                path.display(),
                p.display()
            );
            continue;
        }
        seen.insert(old_hash, (version.clone(), path.clone()));
        jobs.push(Job {
            version: Some(version.clone()),
            path: Some(path.clone()),
            old,
            old_hash,
            file: patch_file_name(Some(&old_hash), new_hash, &recipe8),
        });
    }
    Ok(jobs)
}

/// The check every patch passes before it is written or enters a
/// manifest: applied back to its old image by the applier it gives exactly
/// the new image, carries the release's statement and is signed by every
/// key of the release. Costs one apply (the new image's length in memory).
pub(crate) struct Verifier<'a> {
    pub(crate) release: &'a Release,
    pub(crate) new: &'a [u8],
    pub(crate) publics: Vec<[u8; 32]>,
}

impl<'a> Verifier<'a> {
    /// A verifier for `release`'s patches to `new`, signed by `keys`.
    pub(crate) fn new(release: &'a Release, new: &'a [u8], keys: &[SigningKey]) -> Self {
        Verifier {
            release,
            new,
            publics: keys.iter().map(|k| k.verifying_key().to_bytes()).collect(),
        }
    }

    /// Check `patch` from `old`; the error says what failed.
    pub(crate) fn verify(&self, old: &[u8], patch: &[u8]) -> Result<()> {
        let mut policy = TrustPolicy::trusting(self.publics.clone());
        policy.threshold = self.publics.len();
        let opts = ApplyOptions::default().with_policy(Some(Arc::new(policy)));
        let (report, out) =
            fwdelta_apply::apply(old, patch, Vec::with_capacity(self.new.len()), opts)
                .context("applying it back failed")?;
        anyhow::ensure!(
            out == self.new,
            "applying it back did not give the new image"
        );
        anyhow::ensure!(
            report.header.release.as_ref() == Some(self.release),
            "it carries another release statement"
        );
        Ok(())
    }
}

/// Diff `old` to `new`, bind the patch to `release` and sign it with
/// `keys`: the bytes `fwdelta diff --product ... --sign ...` would write.
/// Returns them and the diff's seconds. Costs one diff (see
/// `fwdelta_diff::estimated_peak_memory`); runs on the ambient rayon pool.
pub(crate) fn make_patch(
    old: &[u8],
    new: &[u8],
    options: &Options,
    release: &Release,
    keys: &[SigningKey],
    file: &str,
) -> Result<(Vec<u8>, f64)> {
    let start = Instant::now();
    let patch = fwdelta_diff::diff(old, new, options)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("cannot diff for {file}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let bytes = fwdelta_diff::patch_signer::sign_for_release(&patch.bytes, Some(release), keys)
        .with_context(|| format!("cannot sign {file}"))?;
    Ok((bytes, seconds))
}

/// Whether a delta of `bytes` enters the manifest next to a full-image
/// patch of `full_bytes` (at most `max_share` of it).
pub(crate) fn within_share(max_share: f64, full_bytes: u64, bytes: u64) -> bool {
    (bytes as f64) <= max_share * full_bytes as f64
}

/// One verified delta, as the manifest lists it.
pub(crate) struct MadeDelta {
    pub(crate) old_hash: [u8; 32],
    pub(crate) version: String,
    pub(crate) old_len: u64,
    pub(crate) patch: PatchFile,
}

/// The patch file entry for `bytes` written as `file`.
pub(crate) fn patch_entry(file: &str, bytes: &[u8]) -> PatchFile {
    PatchFile {
        file: file.to_string(),
        bytes: bytes.len() as u64,
        blake3: *blake3::hash(bytes).as_bytes(),
    }
}

/// The release's manifest: the one implementation `release` and `release
/// collect` share. Deltas over `max_share` of the full image are listed
/// with no patch (their terminals take the full image).
pub(crate) fn build_manifest(
    release: &Release,
    new: &[u8],
    max_share: f64,
    full: PatchFile,
    deltas: Vec<MadeDelta>,
) -> Manifest {
    let mut old_images = BTreeMap::new();
    for d in deltas {
        let within = within_share(max_share, full.bytes, d.patch.bytes);
        old_images.insert(
            d.old_hash,
            OldEntry {
                version: d.version,
                len: d.old_len,
                patch: within.then_some(d.patch),
            },
        );
    }
    Manifest {
        product: release.product.clone(),
        version: release.version.clone(),
        security_counter: release.security_counter,
        expires: release.expires,
        new_len: new.len() as u64,
        new_blake3: *blake3::hash(new).as_bytes(),
        full_image: Some(full),
        max_share,
        old_images,
    }
}

/// Write `manifest.sig` (signed by `keys`; removed when there are none) and
/// then `manifest.json` into `outdir`, each atomically.
pub(crate) fn write_manifest(outdir: &Path, m: &Manifest, keys: &[SigningKey]) -> Result<()> {
    let bytes = m.encode();
    let sig_path = outdir.join("manifest.sig");
    if keys.is_empty() {
        match std::fs::remove_file(&sig_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e)
                    .with_context(|| format!("cannot remove stale {}", sig_path.display()))
            }
            _ => {}
        }
    } else {
        let message = manifest::signing_message(&bytes);
        let mut sigs: Vec<ManifestSignature> = keys
            .iter()
            .map(|k| ManifestSignature {
                key_id: KeyId::of(k.verifying_key().as_bytes()),
                signature: k.sign(&message).to_bytes(),
            })
            .collect();
        sigs.sort_by_key(|s| s.key_id);
        write_atomically(&sig_path, manifest::encode_signatures(&sigs).as_bytes())?;
    }
    write_atomically(&outdir.join("manifest.json"), &bytes)
}

/// What became of one job.
struct Outcome {
    bytes: Vec<u8>,
    diff_seconds: Option<f64>,
    reused: bool,
}

/// Everything a job needs that is the same for all jobs.
struct Ctx<'a> {
    plan: &'a Plan,
    new: &'a [u8],
    verifier: Verifier<'a>,
    outdir: &'a Path,
    quiet: bool,
    /// The progress bar (only on a terminal, without -q).
    bar: Option<indicatif::ProgressBar>,
}

impl Ctx<'_> {
    /// Print a line on stderr (above the progress bar), unless -q.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    /// Count a finished job on the progress bar.
    fn done(&self, job: &Job) {
        if let Some(bar) = &self.bar {
            bar.set_message(describe(job));
            bar.inc(1);
        }
    }

    /// Reuse the patch at OUTDIR/`job.file` if it verifies; otherwise make it.
    fn run(&self, job: &Job) -> Result<Outcome> {
        let path = self.outdir.join(&job.file);
        if let Ok(bytes) = std::fs::read(&path) {
            match self.verifier.verify(&job.old, &bytes) {
                Ok(()) => {
                    return Ok(Outcome {
                        bytes,
                        diff_seconds: None,
                        reused: true,
                    })
                }
                Err(e) => self.say(&format!(
                    "fwdelta: remaking {}: the existing file does not verify ({e:#})",
                    path.display()
                )),
            }
        }
        let (bytes, diff_seconds) = make_patch(
            &job.old,
            self.new,
            &self.plan.options,
            &self.plan.release,
            &self.plan.keys,
            &job.file,
        )?;
        self.verifier.verify(&job.old, &bytes).with_context(|| {
            format!(
                "the patch {} made for {} failed its check",
                job.file,
                describe(job)
            )
        })?;
        Ok(Outcome {
            bytes,
            diff_seconds: Some(diff_seconds),
            reused: false,
        })
    }
}

/// "old version V" or "the full image", for messages.
pub(crate) fn describe(job: &Job) -> String {
    match &job.version {
        Some(v) => format!("old version {v}"),
        None => "the full image".to_string(),
    }
}

/// `fwdelta release`.
pub fn cmd_release(a: &ReleaseArgs) -> Result<()> {
    let start = Instant::now();
    let (description, output) = match (&a.description, &a.output) {
        (Some(d), Some(o)) => (d, o),
        _ => anyhow::bail!("fwdelta release needs RELEASE.toml and -o OUTDIR"),
    };
    let plan = parse_description(description)?;
    let new = input::Image::open(&plan.new_image)?;
    let new_hash = *blake3::hash(&new).as_bytes();
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let _lock = lock_dir(output)?;
    remove_stale_temporaries(output)?;
    let mut jobs = release_jobs(&plan, &new_hash)?;
    let full_job = jobs.remove(0);
    let ctx = Ctx {
        plan: &plan,
        new: &new,
        verifier: Verifier::new(&plan.release, &new, &plan.keys),
        outdir: output,
        quiet: a.quiet,
        bar: progress_bar(a, jobs.len() as u64 + 1),
    };
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = a.threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start worker threads")?;
    let write = |job: &Job, o: &Outcome| -> Result<()> {
        if !o.reused {
            write_atomically(&output.join(&job.file), &o.bytes)?;
        }
        Ok(())
    };
    let full = pool.install(|| ctx.run(&full_job))?;
    write(&full_job, &full)?;
    ctx.done(&full_job);
    let full_bytes = full.bytes.len() as u64;
    let outcomes: Vec<Outcome> = pool.install(|| {
        jobs.par_iter()
            .map(|job| {
                let o = ctx.run(job)?;
                if within_share(plan.max_share, full_bytes, o.bytes.len() as u64) {
                    write(job, &o)?;
                }
                ctx.done(job);
                Ok(o)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let deltas = jobs
        .iter()
        .zip(&outcomes)
        .map(|(job, o)| MadeDelta {
            old_hash: job.old_hash,
            version: job.version.clone().unwrap_or_default(),
            old_len: job.old.len() as u64,
            patch: patch_entry(&job.file, &o.bytes),
        })
        .collect();
    let m = build_manifest(
        &plan.release,
        &new,
        plan.max_share,
        patch_entry(&full_job.file, &full.bytes),
        deltas,
    );
    write_manifest(output, &m, &plan.keys)?;
    if let Some(bar) = &ctx.bar {
        bar.finish_and_clear();
    }
    let limit = plan.max_share * full.bytes.len() as f64;
    report(
        a, output, &m, &full_job, &full, &jobs, &outcomes, limit, start,
    );
    Ok(())
}

/// A bar counting finished patches, drawn on stderr only when it is a
/// terminal and -q, --json were not given.
fn progress_bar(a: &ReleaseArgs, jobs: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if a.quiet || a.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(jobs),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:24}] {pos}/{len} verified; last: {wide_msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    Some(bar)
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &ReleaseArgs,
    output: &Path,
    m: &Manifest,
    full_job: &Job,
    full: &Outcome,
    jobs: &[Job],
    outcomes: &[Outcome],
    limit: f64,
    start: Instant,
) {
    let signed = output.join("manifest.sig").exists();
    if a.json {
        let v: Vec<serde_json::Value> = all_jobs(full_job, full, jobs, outcomes)
            .map(|(j, o)| {
                let within = j.version.is_none() || (o.bytes.len() as f64) <= limit;
                serde_json::json!({
                    "old_version": j.version,
                    "old_blake3": hex(&j.old_hash),
                    "old_len": j.old.len(),
                    "patch_file": within.then(|| j.file.clone()),
                    "bytes": o.bytes.len(),
                    "diff_seconds": o.diff_seconds,
                    "reused": o.reused,
                    "verified": true,
                    "in_manifest": within,
                })
            })
            .collect();
        let out = serde_json::json!({
            "manifest": output.join("manifest.json").display().to_string(),
            "signed": signed,
            "product": m.product,
            "version": m.version,
            "new_len": m.new_len,
            "new_blake3": hex(&m.new_blake3),
            "seconds": start.elapsed().as_secs_f64(),
            "jobs": v,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    if a.quiet {
        return;
    }
    let full_len = full.bytes.len().max(1) as f64;
    let mut fallback = 0;
    for (j, o) in all_jobs(full_job, full, jobs, outcomes) {
        let how = match o.diff_seconds {
            Some(s) => format!("made in {s:.2}s, verified"),
            None => "reused (verified)".to_string(),
        };
        let share = 100.0 * o.bytes.len() as f64 / full_len;
        match &j.version {
            None => eprintln!("  full image: {} bytes, {how}", o.bytes.len()),
            Some(v) if (o.bytes.len() as f64) <= limit => eprintln!(
                "  {v} ({}): {} bytes ({share:.1}% of the full image), {how}",
                &hex(&j.old_hash)[..16],
                o.bytes.len()
            ),
            Some(v) => {
                fallback += 1;
                eprintln!(
                    "  {v} ({}): left out, {} bytes is {share:.1}% of the full image (over {:.0}%): uses the full image",
                    &hex(&j.old_hash)[..16],
                    o.bytes.len(),
                    100.0 * m.max_share
                )
            }
        }
    }
    eprintln!(
        "{}: {} old image(s), {} patch(es), {fallback} to the full image, {}, {:.2}s",
        output.join("manifest.json").display(),
        m.old_images.len(),
        m.old_images.len() - fallback,
        if signed {
            "signed (manifest.sig)"
        } else {
            "unsigned"
        },
        start.elapsed().as_secs_f64()
    );
}

fn all_jobs<'a>(
    full_job: &'a Job,
    full: &'a Outcome,
    jobs: &'a [Job],
    outcomes: &'a [Outcome],
) -> impl Iterator<Item = (&'a Job, &'a Outcome)> {
    std::iter::once((full_job, full)).chain(jobs.iter().zip(outcomes))
}

/// Terminal side: the patch `apply --manifest` should apply to `old`, and
/// whether it is the full image (applied to an empty old image). Verifies
/// the manifest's signature when `trusted` keys are given, and the patch
/// file's length and BLAKE3 against the manifest.
pub fn pick_from_manifest(
    manifest_path: &Path,
    old: &Path,
    trusted: &[[u8; 32]],
    threshold: usize,
    quiet: bool,
) -> Result<(PathBuf, bool, [u8; 32])> {
    use fwdelta_device::manifest::{ManifestError, Pick};
    let read = |p: &Path| -> Result<Vec<u8>> {
        let cap = manifest::MAX_MANIFEST_LEN;
        let too_big = || {
            anyhow::anyhow!(
                "{} is not a regular file of at most {cap} bytes",
                p.display()
            )
        };
        let f = open_regular(p)?.ok_or_else(too_big)?;
        // The cap holds for what is read, not for a length seen before.
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, cap + 1), &mut bytes)
            .with_context(|| format!("cannot read {}", p.display()))?;
        anyhow::ensure!(bytes.len() as u64 <= cap, too_big());
        Ok(bytes)
    };
    let bytes = read(manifest_path)?;
    let ctx = || format!("refusing manifest {}", manifest_path.display());
    if !trusted.is_empty() {
        let sig = manifest_path.with_extension("sig");
        if !sig.exists() {
            return Err(ManifestError::Unsigned(sig.display().to_string())).with_context(ctx);
        }
        // A signature file that cannot be read as one (a directory, a
        // FIFO, over the cap) is a bad signature file: not authentic.
        let sig_bytes = read(&sig).map_err(|e| {
            anyhow::Error::new(ManifestError::BadSignatureFile(
                "not a readable regular file of at most the manifest cap",
            ))
            .context(format!("{e:#}"))
        });
        manifest::verify(&bytes, &sig_bytes.with_context(ctx)?, trusted, threshold)
            .with_context(ctx)?;
    }
    let m = Manifest::parse(&bytes).with_context(ctx)?;
    let old_hash = {
        use fwdelta_apply::OldImage;
        // A regular file or a block device, read to its length: a FIFO or
        // a character device (endless) is refused, not read.
        let image = crate::open_old_image(old)
            .with_context(|| format!("cannot open old image {}", old.display()))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        while pos < image.len() {
            let n = (image.len() - pos).min(buf.len() as u64) as usize;
            image
                .read_at(pos, &mut buf[..n])
                .with_context(|| format!("cannot read old image {}", old.display()))?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        *h.finalize().as_bytes()
    };
    let short = &hex(&old_hash)[..16];
    let (pf, full) = match m.pick(&old_hash) {
        Pick::Delta(e, p) => {
            if !quiet {
                eprintln!(
                    "fwdelta: manifest: {} is version {} (BLAKE3 {short}...); applying {}",
                    old.display(),
                    e.version,
                    p.file
                );
            }
            (p, false)
        }
        Pick::FullOverShare(e, p) => {
            if !quiet {
                eprintln!(
                    "fwdelta: manifest: {} is version {}, whose delta was left out as too large; applying the full image {}",
                    old.display(),
                    e.version,
                    p.file
                );
            }
            (p, true)
        }
        Pick::FullNoEntry(p) => {
            // Said even with -q: the terminal is off the release's map.
            eprintln!(
                "fwdelta: manifest has no entry for {} (BLAKE3 {short}...); applying the full image {}",
                old.display(),
                p.file
            );
            (p, true)
        }
        Pick::Nothing => {
            return Err(ManifestError::NoEntry(format!(
                "{} (BLAKE3 {short}...)",
                old.display()
            )))
            .with_context(ctx)
        }
    };
    let dir = manifest_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = dir.join(&pf.file);
    let patch_bytes = {
        // Its kind and length first: a FIFO or a device at the patch's name
        // must not hang or feed the hash forever.
        let f = open_regular(&path)
            .with_context(|| format!("cannot open patch {}", path.display()))?
            .ok_or_else(|| anyhow::anyhow!("patch {} is not a regular file", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("cannot read patch {}", path.display()))?
            .len();
        let mut h = blake3::Hasher::new();
        if len == pf.bytes {
            h.update_reader(std::io::Read::take(f, len))
                .with_context(|| format!("cannot read patch {}", path.display()))?;
        }
        (len, *h.finalize().as_bytes())
    };
    if patch_bytes.0 != pf.bytes || patch_bytes.1 != pf.blake3 {
        return Err(ManifestError::PatchMismatch {
            file: pf.file.clone(),
            expected: hex(&pf.blake3),
            actual: hex(&patch_bytes.1),
        })
        .with_context(ctx);
    }
    Ok((path, full, m.new_blake3))
}

/// Open `path` for reading without blocking on a FIFO (`O_NONBLOCK`):
/// `None` when it is not a regular file (a FIFO, a device, a directory).
fn open_regular(path: &Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(meta.is_file().then_some(f))
}

/// Public keys of a device state directory (and its threshold), for
/// checking a manifest before `apply --device`.
pub fn device_keys(dir: &Path) -> Result<(Vec<[u8; 32]>, usize)> {
    let dev = fwdelta_device::DeviceDir::open(dir)
        .with_context(|| format!("cannot use device state {}", dir.display()))?;
    Ok((dev.state().keys.clone(), dev.state().threshold))
}

/// Public keys of `--trust` files.
pub fn trust_keys(files: &[PathBuf]) -> Result<Vec<[u8; 32]>> {
    files.iter().map(|p| signing_cmd::read_public(p)).collect()
}
