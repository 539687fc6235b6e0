//! A release cut into jobs that any engine can run: `fwdelta release plan`
//! writes them as JSON lines, `fwdelta release run-job` makes one job's
//! patch, `fwdelta release collect` verifies every output and writes the
//! manifest. `release plan --k8s` also renders a Kubernetes Indexed Job.
//! Described in `docs/RELEASE.md` ("Fleet scale").
//!
//! Nothing here knows an engine: a job is one line of the plan, its output
//! one content-addressed file, and the checks are the ones `fwdelta
//! release` makes, through the same functions (`release_cmd`), so the
//! manifest `collect` writes is byte-identical to the one `release` writes
//! for the same description.

use crate::release_cmd::{
    self, build_manifest, lock_dir, make_patch, parse_description, patch_entry, patch_file_name,
    recipe_hex, recipe_text, release_jobs, within_share, DiffParams, MadeDelta, Verifier,
};
use crate::{hex, input, write_atomically};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use fwdelta_format::signature::KeyId;
use fwdelta_format::Release;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The version of the plan's line format (`fwdelta_plan` in every line).
pub const PLAN_VERSION: u32 = 1;

/// `fwdelta release plan | run-job | collect`.
#[derive(Subcommand)]
pub enum Step {
    /// Write the release's jobs as JSON lines (one per old image, and the
    /// full image as job 0), with their inputs' hashes and the memory and
    /// CPUs each needs.
    #[command(
        after_help = "Example:\n  fwdelta release plan release.toml -o plan.jsonl\n  \
        fwdelta release run-job plan.jsonl --job 0 -o out/    # each job, anywhere\n  \
        fwdelta release collect plan.jsonl out/\n  \
        fwdelta release plan release.toml -o plan.jsonl --k8s job.yaml --k8s-image REGISTRY/fwdelta:TAG"
    )]
    Plan(PlanArgs),
    /// Make one job's patch (or keep the verified one already there),
    /// check it, and write it under its content-derived name in OUTDIR.
    RunJob(RunJobArgs),
    /// Verify every job's output in OUTDIR and write manifest.json (and
    /// manifest.sig), byte-identical to `fwdelta release`'s.
    Collect(CollectArgs),
}

/// `fwdelta release plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The release description (TOML, see docs/RELEASE.md).
    pub description: PathBuf,
    /// Where to write the plan (JSON lines, one job per line).
    #[arg(short, long)]
    pub output: PathBuf,
    /// CPUs (threads) each job declares and uses.
    #[arg(long, default_value_t = 2)]
    pub cpus: usize,
    /// Also write a Kubernetes Indexed Job that runs every job to FILE.
    #[arg(long, value_name = "FILE")]
    pub k8s: Option<PathBuf>,
    #[command(flatten)]
    pub k8s_options: K8sArgs,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The Kubernetes Job's settings (`release plan --k8s`).
#[derive(Args)]
pub struct K8sArgs {
    /// Container image holding `fwdelta` on its PATH.
    #[arg(long, default_value = "fwdelta:latest")]
    pub k8s_image: String,
    /// The Job's name (default: fwdelta-PRODUCT-VERSION, made DNS-safe).
    #[arg(long)]
    pub k8s_name: Option<String>,
    /// Pods running at once (default: every job).
    #[arg(long)]
    pub k8s_parallelism: Option<usize>,
    /// Failed pods tolerated before the Job fails.
    #[arg(long, default_value_t = 6)]
    pub k8s_backoff_limit: u32,
    /// The release directory as the pods see it (default: `out` beside
    /// the plan).
    #[arg(long)]
    pub k8s_outdir: Option<PathBuf>,
    /// A PersistentVolumeClaim holding the inputs, the plan and the
    /// release directory, mounted at --k8s-mount.
    #[arg(long, requires = "k8s_mount")]
    pub k8s_claim: Option<String>,
    /// Where the pods mount --k8s-claim: every path in the plan must be
    /// under it (the pods see the same paths as the planner).
    #[arg(long, requires = "k8s_claim")]
    pub k8s_mount: Option<PathBuf>,
}

/// `fwdelta release run-job`.
#[derive(Args)]
pub struct RunJobArgs {
    /// The plan (`-`: read the job's one JSON line from stdin).
    pub plan: PathBuf,
    /// The job's number (its `job` field; the line's index in the plan).
    #[arg(long)]
    pub job: Option<usize>,
    /// The release directory (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Worker threads (default: the job's `cpus`).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// Print one JSON line on stdout about the job.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `fwdelta release collect`.
#[derive(Args)]
pub struct CollectArgs {
    /// The plan the jobs ran from.
    pub plan: PathBuf,
    /// The release directory the jobs wrote.
    pub outdir: PathBuf,
    /// Worker threads for the checks (default: all cores).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One job: one line of a plan. Every line carries all that its job needs,
/// so a worker reads only its own line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanJob {
    /// [`PLAN_VERSION`].
    pub fwdelta_plan: u32,
    /// This job's number: 0 is the full image, then one per old image.
    pub job: usize,
    /// How many jobs the plan has.
    pub jobs: usize,
    /// The patch's file name in the release directory.
    pub output: String,
    /// The old image (`None`: the full image, from an empty old image).
    pub old: Option<PlanOld>,
    /// The new image.
    pub new: PlanImage,
    /// The release statement every patch carries.
    pub release: PlanRelease,
    /// The generator's options.
    pub diff: DiffParams,
    /// The signing keys (secret key files; every one signs).
    pub keys: Vec<PlanKey>,
    /// The share of the full image above which a delta is left out.
    pub max_share: f64,
    /// Estimated peak memory of the job, in bytes
    /// (`fwdelta_diff::estimated_peak_memory`).
    pub memory_bytes: u64,
    /// CPUs (threads) the job uses.
    pub cpus: usize,
}

/// An input image of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanImage {
    /// Absolute path.
    pub path: PathBuf,
    /// BLAKE3 of its bytes (64 hex digits).
    pub blake3: String,
    /// Length in bytes.
    pub len: u64,
}

/// A job's old image and its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOld {
    /// Absolute path.
    pub path: PathBuf,
    /// BLAKE3 of its bytes (64 hex digits).
    pub blake3: String,
    /// Length in bytes.
    pub len: u64,
    /// Its version, as the manifest lists it.
    pub version: String,
}

/// The release statement, as in the description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRelease {
    /// Product id.
    pub product: String,
    /// The new image's version.
    pub version: String,
    /// The new image's security counter.
    pub security_counter: u64,
    /// Expiry (Unix seconds), 0 for never.
    pub expires: u64,
}

/// A signing key of the release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanKey {
    /// Absolute path of the secret key file.
    pub path: PathBuf,
    /// Its key id (16 hex digits): a worker refuses a file holding another key.
    pub id: String,
}

/// Run one step.
pub fn run(step: &Step) -> Result<()> {
    match step {
        Step::Plan(a) => cmd_plan(a),
        Step::RunJob(a) => cmd_run_job(a),
        Step::Collect(a) => cmd_collect(a),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// The plan's jobs for a description: hashes every image once.
fn plan_jobs(a: &PlanArgs) -> Result<Vec<PlanJob>> {
    anyhow::ensure!(a.cpus >= 1, "--cpus must be at least 1");
    let plan = parse_description(&a.description)?;
    let new = input::Image::open(&plan.new_image)?;
    let new_hash = *blake3::hash(&new).as_bytes();
    let jobs = release_jobs(&plan, &new_hash)?;
    let n = jobs.len();
    let new_image = PlanImage {
        path: absolute(&plan.new_image)?,
        blake3: hex(&new_hash),
        len: new.len() as u64,
    };
    let keys = plan
        .key_paths
        .iter()
        .zip(&plan.keys)
        .map(|(p, k)| {
            Ok(PlanKey {
                path: absolute(p)?,
                id: KeyId::of(k.verifying_key().as_bytes()).to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let r = &plan.release;
    jobs.iter()
        .enumerate()
        .map(|(i, j)| {
            let old = match (&j.path, &j.version) {
                (Some(p), Some(v)) => Some(PlanOld {
                    path: absolute(p)?,
                    blake3: hex(&j.old_hash),
                    len: j.old.len() as u64,
                    version: v.clone(),
                }),
                _ => None,
            };
            Ok(PlanJob {
                fwdelta_plan: PLAN_VERSION,
                job: i,
                jobs: n,
                output: j.file.clone(),
                old,
                new: new_image.clone(),
                release: PlanRelease {
                    product: r.product.clone(),
                    version: r.version.clone(),
                    security_counter: r.security_counter,
                    expires: r.expires,
                },
                diff: plan.diff.clone(),
                keys: keys.clone(),
                max_share: plan.max_share,
                memory_bytes: fwdelta_diff::estimated_peak_memory(
                    &j.old,
                    new.len() as u64,
                    plan.options.code,
                    a.cpus,
                ),
                cpus: a.cpus,
            })
        })
        .collect()
}

/// `fwdelta release plan`.
fn cmd_plan(a: &PlanArgs) -> Result<()> {
    let jobs = plan_jobs(a)?;
    let mut text = String::new();
    for j in &jobs {
        text.push_str(&serde_json::to_string(j).context("cannot encode the plan")?);
        text.push('\n');
    }
    // Rendered first, so a refused Job leaves no plan either.
    let yaml = match &a.k8s {
        Some(_) => Some(render_k8s(&jobs, &absolute(&a.output)?, &a.k8s_options)?),
        None => None,
    };
    write_atomically(&a.output, text.as_bytes())?;
    if let (Some(k8s), Some(yaml)) = (&a.k8s, &yaml) {
        write_atomically(k8s, yaml.as_bytes())?;
    }
    if !a.quiet {
        let peak = jobs.iter().map(|j| j.memory_bytes).max().unwrap_or(0);
        eprintln!(
            "{}: {} job(s) (the full image and {} old image(s)), {} CPU(s) each, at most {} MiB each{}",
            a.output.display(),
            jobs.len(),
            jobs.len().saturating_sub(1),
            a.cpus,
            peak.div_ceil(1 << 20),
            match &a.k8s {
                Some(p) => format!("; Kubernetes Job: {}", p.display()),
                None => String::new(),
            }
        );
    }
    Ok(())
}

/// Read a plan file's jobs (every line, checked to be one plan: jobs 0 to
/// n-1 in order, one release).
pub fn read_plan(path: &Path) -> Result<Vec<PlanJob>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open plan {}", path.display()))?;
    let mut jobs = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read plan {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        jobs.push(parse_job(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    check_plan(&jobs).with_context(|| format!("plan {}", path.display()))?;
    Ok(jobs)
}

fn parse_job(line: &str) -> Result<PlanJob> {
    let j: PlanJob = serde_json::from_str(line).context("not a plan job line")?;
    anyhow::ensure!(
        j.fwdelta_plan == PLAN_VERSION,
        "plan format {} (this fwdelta reads {PLAN_VERSION})",
        j.fwdelta_plan
    );
    anyhow::ensure!(j.job < j.jobs, "job {} of {}", j.job, j.jobs);
    anyhow::ensure!(
        (j.job == 0) == j.old.is_none(),
        "job 0 must be the full image and only job 0"
    );
    anyhow::ensure!(j.cpus >= 1, "cpus must be at least 1");
    Ok(j)
}

/// The jobs of one plan: numbered 0.. in order, all of one release.
fn check_plan(jobs: &[PlanJob]) -> Result<()> {
    let first = jobs.first().context("the plan has no jobs")?;
    for (i, j) in jobs.iter().enumerate() {
        anyhow::ensure!(
            j.job == i && j.jobs == jobs.len(),
            "line {} is job {} of {}, not job {i} of {}",
            i + 1,
            j.job,
            j.jobs,
            jobs.len()
        );
        anyhow::ensure!(
            j.new == first.new
                && j.release == first.release
                && j.diff == first.diff
                && j.keys == first.keys
                && j.max_share.to_bits() == first.max_share.to_bits(),
            "job {i} belongs to another release than job 0"
        );
    }
    Ok(())
}

/// What a job's line says, checked: the release statement, the keys (each
/// file must hold the key id the plan names), the generator options, and
/// the output name (which must be the one this fwdelta derives).
struct Loaded {
    release: Release,
    keys: Vec<SigningKey>,
    options: fwdelta_diff::Options,
}

fn load(j: &PlanJob) -> Result<Loaded> {
    let release = Release {
        product: j.release.product.clone(),
        version: j.release.version.clone(),
        security_counter: j.release.security_counter,
        expires: j.release.expires,
    };
    release.validate().context("bad release statement")?;
    let mut keys = Vec::new();
    for k in &j.keys {
        let text =
            std::fs::read(&k.path).with_context(|| format!("cannot read {}", k.path.display()))?;
        let key = fwdelta_diff::patch_signer::parse_secret_key(&text)
            .with_context(|| format!("{}", k.path.display()))?;
        let id = KeyId::of(key.verifying_key().as_bytes()).to_string();
        anyhow::ensure!(
            id == k.id,
            "{} holds key {id}, not the plan's key {}",
            k.path.display(),
            k.id
        );
        keys.push(key);
    }
    let options = j.diff.options()?;
    let recipe8 = recipe_hex(&recipe_text(&release, &j.diff, &keys));
    let old_hash = j.old.as_ref().map(|o| unhex(&o.blake3)).transpose()?;
    let expected = patch_file_name(old_hash.as_ref(), &unhex(&j.new.blake3)?, &recipe8);
    anyhow::ensure!(
        expected == j.output,
        "job {} names its output {}, but this fwdelta ({}) makes {expected} from its inputs: \
         was the plan made by another fwdelta version?",
        j.job,
        j.output,
        env!("CARGO_PKG_VERSION")
    );
    Ok(Loaded {
        release,
        keys,
        options,
    })
}

fn unhex(s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    anyhow::ensure!(
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s:?} is not 64 hex digits"
    );
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{s:?} is not hex"))?;
    }
    Ok(out)
}

/// Map an input image and check it is the one the plan hashed.
fn open_checked(path: &Path, blake3_hex: &str, len: u64) -> Result<input::Image> {
    let image = input::Image::open(path)?;
    let hash = hex(blake3::hash(&image).as_bytes());
    anyhow::ensure!(
        image.len() as u64 == len && hash == blake3_hex,
        "{} changed since the plan was made (BLAKE3 {}..., {} bytes; the plan has {}..., {len})",
        path.display(),
        &hash[..16],
        image.len(),
        &blake3_hex[..16.min(blake3_hex.len())]
    );
    Ok(image)
}

fn open_old(j: &PlanJob) -> Result<input::Image> {
    match &j.old {
        Some(o) => open_checked(&o.path, &o.blake3, o.len),
        None => Ok(input::Image::empty()),
    }
}

fn job_name(j: &PlanJob) -> String {
    match &j.old {
        Some(o) => format!("job {} (old version {})", j.job, o.version),
        None => format!("job {} (the full image)", j.job),
    }
}

/// The job that `run-job` was asked for.
fn pick_job(a: &RunJobArgs) -> Result<PlanJob> {
    if a.plan.as_os_str() == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the job from stdin")?;
        let j = parse_job(line.trim()).context("stdin")?;
        if let Some(n) = a.job {
            anyhow::ensure!(j.job == n, "stdin holds job {}, not job {n}", j.job);
        }
        return Ok(j);
    }
    let n = a
        .job
        .context("give --job N (or the job's line on stdin with PLAN `-`)")?;
    let mut jobs = read_plan(&a.plan)?;
    anyhow::ensure!(
        n < jobs.len(),
        "the plan {} has jobs 0 to {}, not {n}",
        a.plan.display(),
        jobs.len() - 1
    );
    Ok(jobs.swap_remove(n))
}

/// `fwdelta release run-job`: the job's patch in OUTDIR, verified. An
/// output already there that verifies is kept; otherwise the patch is made,
/// verified, written to a temporary file created exclusively beside it and
/// renamed into place. Any number of runs of one job, at once or after one
/// another, leave the same bytes. Takes no lock: jobs of one release run
/// side by side.
fn cmd_run_job(a: &RunJobArgs) -> Result<()> {
    let j = pick_job(a)?;
    let name = job_name(&j);
    let l = load(&j).with_context(|| name.clone())?;
    let new = open_checked(&j.new.path, &j.new.blake3, j.new.len)?;
    let old = open_old(&j)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let verifier = Verifier::new(&l.release, &new, &l.keys);
    let path = a.output.join(&j.output);
    let existing = std::fs::read(&path).ok();
    let (bytes, seconds) = match existing {
        Some(bytes) if verifier.verify(&old, &bytes).is_ok() => (bytes, None),
        _ => {
            let threads = a.threads.unwrap_or(j.cpus);
            anyhow::ensure!(threads >= 1, "--threads must be at least 1");
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .context("cannot start worker threads")?;
            let (bytes, seconds) = pool
                .install(|| make_patch(&old, &new, &l.options, &l.release, &l.keys, &j.output))?;
            verifier.verify(&old, &bytes).with_context(|| {
                format!("the patch {} made for {name} failed its check", j.output)
            })?;
            write_atomically(&path, &bytes)?;
            (bytes, Some(seconds))
        }
    };
    if a.json {
        let v = serde_json::json!({
            "job": j.job,
            "output": j.output,
            "bytes": bytes.len(),
            "blake3": hex(blake3::hash(&bytes).as_bytes()),
            "diff_seconds": seconds,
            "reused": seconds.is_none(),
            "verified": true,
        });
        println!("{v}");
    }
    if !a.quiet {
        match seconds {
            Some(s) => eprintln!(
                "{name}: {} ({} bytes) made in {s:.2}s, verified",
                path.display(),
                bytes.len()
            ),
            None => eprintln!(
                "{name}: {} ({} bytes) already there, verified",
                path.display(),
                bytes.len()
            ),
        }
    }
    Ok(())
}

/// `fwdelta release collect`: every job's output verified as `release`
/// verifies a patch, then the manifest, by the code `release` uses.
fn cmd_collect(a: &CollectArgs) -> Result<()> {
    let start = Instant::now();
    let jobs = read_plan(&a.plan)?;
    let first = &jobs[0];
    let l = load(first).context("job 0")?;
    let new = open_checked(&first.new.path, &first.new.blake3, first.new.len)?;
    anyhow::ensure!(
        a.outdir.is_dir(),
        "{} is not a directory (run the plan's jobs first)",
        a.outdir.display()
    );
    let _lock = lock_dir(&a.outdir)?;
    let verifier = Verifier::new(&l.release, &new, &l.keys);
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = a.threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start worker threads")?;
    let checked: Vec<Vec<u8>> = pool.install(|| {
        jobs.par_iter()
            .map(|j| {
                let name = job_name(j);
                let expected = load(j).with_context(|| name.clone())?;
                anyhow::ensure!(expected.keys.len() == l.keys.len(), "{name}: keys differ");
                let old = open_old(j)?;
                let path = a.outdir.join(&j.output);
                let bytes = std::fs::read(&path).with_context(|| {
                    format!(
                        "{name}: cannot read its output {} (run `fwdelta release run-job {} --job {} -o {}`)",
                        path.display(),
                        a.plan.display(),
                        j.job,
                        a.outdir.display()
                    )
                })?;
                verifier
                    .verify(&old, &bytes)
                    .with_context(|| format!("{name}: {} does not verify", path.display()))?;
                Ok(bytes)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let full = patch_entry(&first.output, &checked[0]);
    let full_bytes = full.bytes;
    let deltas: Vec<MadeDelta> = jobs[1..]
        .iter()
        .zip(&checked[1..])
        .map(|(j, bytes)| {
            let o = j.old.as_ref().context("a delta job without an old image")?;
            Ok(MadeDelta {
                old_hash: unhex(&o.blake3)?,
                version: o.version.clone(),
                old_len: o.len,
                patch: patch_entry(&j.output, bytes),
            })
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(
        deltas
            .iter()
            .map(|d| d.old_hash)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == deltas.len(),
        "the plan lists one old image twice"
    );
    let m = build_manifest(&l.release, &new, first.max_share, full, deltas);
    release_cmd::write_manifest(&a.outdir, &m, &l.keys)?;
    let left_out: Vec<&PlanJob> = jobs[1..]
        .iter()
        .zip(&checked[1..])
        .filter(|(_, b)| !within_share(first.max_share, full_bytes, b.len() as u64))
        .map(|(j, _)| j)
        .collect();
    if a.json {
        let v = serde_json::json!({
            "manifest": a.outdir.join("manifest.json").display().to_string(),
            "signed": !l.keys.is_empty(),
            "jobs": jobs.len(),
            "verified": jobs.len(),
            "left_out": left_out.iter().map(|j| j.job).collect::<Vec<_>>(),
            "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{v}");
    }
    if !a.quiet {
        for j in &left_out {
            eprintln!(
                "  {}: over {:.0}% of the full image, left out (uses the full image)",
                job_name(j),
                100.0 * first.max_share
            );
        }
        eprintln!(
            "{}: {} job(s) verified, {} old image(s), {} to the full image, {}, {:.2}s",
            a.outdir.join("manifest.json").display(),
            jobs.len(),
            jobs.len() - 1,
            left_out.len(),
            if l.keys.is_empty() {
                "unsigned"
            } else {
                "signed (manifest.sig)"
            },
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A DNS-1123 label from `text`: lowercase letters, digits and `-`, at
/// most 52 characters (pods add `-INDEX-XXXXX`), starting and ending with
/// a letter or digit.
fn dns_label(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s: String = s.trim_matches('-').chars().take(52).collect();
    s.trim_end_matches('-').to_string()
}

/// `release plan --k8s`: a `batch/v1` Indexed Job with one completion per
/// job; each pod runs `fwdelta release run-job PLAN --job
/// $JOB_COMPLETION_INDEX`. One pod template serves every index, so its
/// requests and limits are the largest job's memory and its CPUs.
fn render_k8s(jobs: &[PlanJob], plan: &Path, k: &K8sArgs) -> Result<String> {
    use serde_json::json;
    let first = jobs.first().context("the plan has no jobs")?;
    let name = match &k.k8s_name {
        Some(n) => {
            anyhow::ensure!(
                dns_label(n) == *n && !n.is_empty(),
                "--k8s-name {n:?}: use at most 52 lowercase letters, digits and '-'"
            );
            n.clone()
        }
        None => dns_label(&format!(
            "fwdelta-{}-{}",
            first.release.product, first.release.version
        )),
    };
    let outdir = match &k.k8s_outdir {
        Some(d) => absolute(d)?,
        None => plan.parent().unwrap_or(Path::new("/")).join("out"),
    };
    let text = |p: &Path| -> Result<String> {
        p.to_str()
            .map(str::to_string)
            .with_context(|| format!("{} is not UTF-8", p.display()))
    };
    if let Some(mount) = &k.k8s_mount {
        let mount = absolute(mount)?;
        let mut paths: Vec<&Path> = vec![plan, &outdir, &first.new.path];
        paths.extend(first.keys.iter().map(|k| k.path.as_path()));
        paths.extend(
            jobs.iter()
                .filter_map(|j| j.old.as_ref().map(|o| o.path.as_path())),
        );
        for p in paths {
            anyhow::ensure!(
                p.starts_with(&mount),
                "{} is not under --k8s-mount {}: the pods would not see it",
                p.display(),
                mount.display()
            );
        }
    }
    let memory = jobs.iter().map(|j| j.memory_bytes).max().unwrap_or(0);
    let resources = json!({
        "cpu": first.cpus.to_string(),
        "memory": format!("{}Mi", memory.div_ceil(1 << 20)),
    });
    let mut container = json!({
        "name": "run-job",
        "image": k.k8s_image,
        "command": [
            "fwdelta", "release", "run-job", text(plan)?,
            "--job", "$(JOB_COMPLETION_INDEX)",
            "-o", text(&outdir)?,
        ],
        "env": [{
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            }}
        }],
        "resources": {"requests": resources.clone(), "limits": resources},
    });
    let mut pod = json!({
        "restartPolicy": "Never",
        "containers": [],
    });
    if let (Some(claim), Some(mount)) = (&k.k8s_claim, &k.k8s_mount) {
        container["volumeMounts"] =
            json!([{"name": "release", "mountPath": text(&absolute(mount)?)?}]);
        pod["volumes"] =
            json!([{"name": "release", "persistentVolumeClaim": {"claimName": claim}}]);
    }
    pod["containers"] = json!([container]);
    let labels = json!({"app.kubernetes.io/name": "fwdelta-release", "fwdelta/release": name});
    let parallelism = k.k8s_parallelism.unwrap_or(jobs.len()).max(1);
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": jobs.len(),
            "parallelism": parallelism,
            "backoffLimit": k.k8s_backoff_limit,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    });
    let mut out = format!(
        "# fwdelta release plan --k8s: {} job(s) of {} {}; after it completes:\n\
         #   fwdelta release collect {} {}\n",
        jobs.len(),
        first.release.product,
        first.release.version,
        text(plan)?,
        text(&outdir)?
    );
    yaml(&job, 0, &mut out);
    Ok(out)
}

/// Block-style YAML for a JSON value (strings in JSON's double-quoted
/// form, which YAML reads the same).
fn yaml(v: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{}:", scalar_key(k)));
                match v {
                    Value::Object(o) if !o.is_empty() => {
                        out.push('\n');
                        yaml(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        yaml(v, indent, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&flow(v));
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        // "- " takes the place of the first line's indent.
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", flow(item))),
                }
            }
        }
        _ => {
            out.push_str(&pad);
            out.push_str(&flow(v));
            out.push('\n');
        }
    }
}

/// A key: plain when it is safe unquoted, else JSON-quoted.
fn scalar_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        k.to_string()
    } else {
        serde_json::Value::from(k).to_string()
    }
}

/// A value in flow (JSON) form: valid YAML.
fn flow(v: &serde_json::Value) -> String {
    v.to_string()
}
