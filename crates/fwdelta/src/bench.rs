//! `fwdelta bench`: for every pair in a directory, diff, apply in a child
//! process (so its peak RSS is its own), check the result byte for byte, and
//! print a size table against the no-delta baseline (`zstd -19` of the new image).

use crate::input::Image;
use crate::size::human;
use crate::GenArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use fwdelta_diff::{Options, Plan};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// Directory of pairs: each subdirectory holding files `old` and `new` is one pair.
    #[arg(default_value = "testdata")]
    dir: PathBuf,
    #[command(flatten)]
    gen: GenArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Instead of the main table, measure each of these applier memory budgets
    /// (comma-separated, e.g. 64KiB,256KiB,1MiB,8MiB): patch size, its cost
    /// against the largest budget, and apply peak heap and RSS.
    #[arg(long, value_delimiter = ',', value_parser = crate::size::parse_size)]
    budgets: Vec<u64>,
}

/// Measurements of one pair.
struct Row {
    name: String,
    old_len: u64,
    new_len: u64,
    patch_len: u64,
    /// The same patch signed (one signature, a short release statement).
    signed_len: u64,
    single_segment_len: u64,
    segments: usize,
    /// Instruction set of an executable-aware patch, `None` for a plain one.
    code: Option<&'static str>,
    zstd_len: u64,
    diff_time: Duration,
    apply_time: Duration,
    apply_heap: u64,
    apply_rss: u64,
    error: Option<String>,
}

impl Row {
    fn pct_of_new(&self) -> f64 {
        if self.new_len == 0 {
            0.0
        } else {
            100.0 * self.patch_len as f64 / self.new_len as f64
        }
    }
    fn segment_cost_pct(&self) -> f64 {
        100.0 * (self.patch_len as f64 / self.single_segment_len.max(1) as f64 - 1.0)
    }
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if !a.budgets.is_empty() {
        return run_budgets(a);
    }
    let pairs = find_pairs(&a.dir)?;
    let pool = a.gen.pool()?;
    let opts = a.gen.options();
    opts.codec().context("invalid generator options")?;
    let work = tempfile::tempdir().context("cannot create a scratch directory")?;
    let mut rows = Vec::new();
    for (name, dir) in &pairs {
        let row = pool.install(|| bench_pair(name, dir, work.path(), &opts));
        let row = row.unwrap_or_else(|e| Row {
            name: name.clone(),
            old_len: 0,
            new_len: 0,
            patch_len: 0,
            signed_len: 0,
            single_segment_len: 0,
            segments: 0,
            code: None,
            zstd_len: 0,
            diff_time: Duration::ZERO,
            apply_time: Duration::ZERO,
            apply_heap: 0,
            apply_rss: 0,
            error: Some(format!("{e:#}")),
        });
        if !a.json {
            eprintln!("  {name}: {}", row.error.as_deref().unwrap_or("ok"));
        }
        rows.push(row);
    }
    if a.json {
        print_json(&rows, &opts)?;
    } else {
        print_table(&rows, &opts);
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} pairs failed", rows.len());
    }
    Ok(())
}

/// Subdirectories of `dir` holding regular files `old` and `new`, by name.
fn find_pairs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut pairs = Vec::new();
    for e in entries {
        let path = e
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.join("old").is_file() && path.join("new").is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            pairs.push((name, path));
        }
    }
    pairs.sort();
    if pairs.is_empty() {
        bail!(
            "no pairs in {} (expected subdirectories holding files 'old' and 'new')",
            dir.display()
        );
    }
    Ok(pairs)
}

fn bench_pair(name: &str, dir: &Path, work: &Path, opts: &Options) -> Result<Row> {
    let old_path = dir.join("old");
    let new_path = dir.join("new");
    let old = Image::open(&old_path)?;
    let new = Image::open(&new_path)?;

    let start = Instant::now();
    let plan = Plan::build_for(&old, &new, opts)?;
    let patch = plan.encode(&old, &new, opts)?;
    let diff_time = start.elapsed();
    let single = plan.encode(
        &old,
        &new,
        &Options {
            segment_cost: u64::MAX,
            ..opts.clone()
        },
    )?;

    // What a release ships: the patch signed by one key, for a product,
    // applied by a terminal that trusts that key (so apply time includes
    // the signature check and the signed table).
    let key = bench_key();
    let release = fwdelta_format::Release {
        product: "acme-t300".into(),
        version: "2.0".into(),
        security_counter: 1,
        expires: 0,
    };
    let signed = fwdelta_diff::patch_signer::sign_for_release(
        &patch.bytes,
        Some(&release),
        std::slice::from_ref(&key),
    )?;
    let patch_path = work.join(format!("{name}.fwd"));
    let out_path = work.join(format!("{name}.out"));
    let pub_path = work.join(format!("{name}.pub"));
    crate::write_atomically(&patch_path, &signed)?;
    crate::write_atomically(
        &pub_path,
        fwdelta_format::key_file::encode_public_key(&key.verifying_key().to_bytes()).as_bytes(),
    )?;
    let applied = apply_in_child(&old_path, &patch_path, Some(&pub_path), &out_path);
    let _ = std::fs::remove_file(&pub_path);
    let (apply_time, mem) = applied?;
    let produced =
        std::fs::read(&out_path).with_context(|| format!("cannot read {}", out_path.display()))?;
    let error = (produced[..] != new[..]).then(|| "applied image differs from new".to_string());
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&patch_path);

    let zstd_len = zstd::bulk::compress(&new, 19)
        .context("zstd baseline failed")?
        .len() as u64;
    Ok(Row {
        name: name.to_string(),
        old_len: old.len() as u64,
        new_len: new.len() as u64,
        patch_len: patch.bytes.len() as u64,
        signed_len: signed.len() as u64,
        single_segment_len: single.bytes.len() as u64,
        segments: patch.report.segments,
        code: patch.report.code.map(|(a, _)| a.name()),
        zstd_len,
        diff_time,
        apply_time,
        apply_heap: mem.heap,
        apply_rss: mem.rss,
        error,
    })
}

/// Peak memory of one apply, as the child process measured it.
struct ApplyMemory {
    heap: u64,
    rss: u64,
}

/// The key `bench` signs with: derived from a fixed string, so runs are
/// reproducible (it signs nothing anyone should trust).
fn bench_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(blake3::hash(b"fwdelta bench signing key").as_bytes())
}

/// Run `fwdelta apply` (with `--trust PUBLIC`, if given) as a child;
/// return its wall time and the peak heap and RSS it reports for itself
/// (see `peak_memory`).
fn apply_in_child(
    old: &Path,
    patch: &Path,
    public: Option<&Path>,
    out: &Path,
) -> Result<(Duration, ApplyMemory)> {
    let exe = std::env::current_exe().context("cannot find the fwdelta executable")?;
    let start = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(["apply", "--quiet", "--print-peak-memory"]);
    if let Some(p) = public {
        cmd.arg("--trust").arg(p);
    }
    let output = cmd
        .arg(old)
        .arg(patch)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .context("cannot run fwdelta apply")?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        bail!(
            "fwdelta apply failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .with_context(|| format!("fwdelta apply did not report {name}"))
    };
    Ok((
        elapsed,
        ApplyMemory {
            heap: field("peak_heap_bytes")?,
            rss: field("peak_rss_bytes")?,
        },
    ))
}

fn print_table(rows: &[Row], opts: &Options) {
    println!(
        "fwdelta bench: level {}, apply memory {}, segment size {}",
        opts.level,
        human(opts.apply_memory),
        human(opts.segment_cost)
    );
    println!(
        "| pair | old | new | patch | signed | % of new | zstd -19 of new | patch / zstd | segments | code | segment cost | diff s | apply s | apply peak heap | apply peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in rows {
        if let Some(e) = &r.error {
            println!("| {} | FAILED: {e} | | | | | | | | | | | | | |", r.name);
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {} | {:.3}% | {} | {} | {} | {} | {:+.2}% | {:.3} | {:.3} | {} | {} |",
            r.name,
            r.old_len,
            r.new_len,
            r.patch_len,
            r.signed_len,
            r.pct_of_new(),
            r.zstd_len,
            ratio(r.patch_len, r.zstd_len),
            r.segments,
            r.code.unwrap_or("-"),
            r.segment_cost_pct(),
            r.diff_time.as_secs_f64(),
            r.apply_time.as_secs_f64(),
            human(r.apply_heap),
            human(r.apply_rss)
        );
    }
    let ok: Vec<&Row> = rows.iter().filter(|r| r.error.is_none()).collect();
    let (patch, zstd, new, single): (u64, u64, u64, u64) = ok.iter().fold((0, 0, 0, 0), |t, r| {
        (
            t.0 + r.patch_len,
            t.1 + r.zstd_len,
            t.2 + r.new_len,
            t.3 + r.single_segment_len,
        )
    });
    let signed: u64 = ok.iter().map(|r| r.signed_len).sum();
    println!(
        "| total | | {new} | {patch} | {signed} | {:.3}% | {zstd} | {} | | | {:+.2}% | | | | |",
        if new == 0 {
            0.0
        } else {
            100.0 * patch as f64 / new as f64
        },
        ratio(patch, zstd),
        100.0 * (patch as f64 / single.max(1) as f64 - 1.0)
    );
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.3}", a as f64 / b as f64)
    }
}

fn print_json(rows: &[Row], opts: &Options) -> Result<()> {
    let pairs: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "pair": r.name,
                "ok": r.error.is_none(),
                "error": r.error,
                "old_len": r.old_len,
                "new_len": r.new_len,
                "patch_len": r.patch_len,
                "signed_patch_len": r.signed_len,
                "patch_pct_of_new": r.pct_of_new(),
                "single_segment_patch_len": r.single_segment_len,
                "segment_cost_pct": r.segment_cost_pct(),
                "segments": r.segments,
                "code": r.code,
                "zstd19_new_len": r.zstd_len,
                "diff_seconds": r.diff_time.as_secs_f64(),
                "apply_seconds": r.apply_time.as_secs_f64(),
                "apply_peak_heap_bytes": r.apply_heap,
                "apply_peak_rss_bytes": r.apply_rss,
            })
        })
        .collect();
    let v = serde_json::json!({
        "level": opts.level,
        "apply_memory": opts.apply_memory,
        "segment_size": opts.segment_cost,
        "pairs": pairs,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// One pair under one budget.
struct BudgetRow {
    pair: String,
    new_len: u64,
    budget: u64,
    codec: &'static str,
    window_log: u8,
    patch_len: u64,
    claim: u64,
    heap: u64,
    rss: u64,
}

/// `--budgets`: every pair under every budget. Fails if any apply exceeds its
/// budget plus 64 KiB of heap, or produces the wrong image.
fn run_budgets(a: &BenchArgs) -> Result<()> {
    let pairs = find_pairs(&a.dir)?;
    let pool = a.gen.pool()?;
    let work = tempfile::tempdir().context("cannot create a scratch directory")?;
    let mut budgets = a.budgets.clone();
    budgets.sort_unstable();
    budgets.dedup();
    let reference = *budgets.last().context("no budgets")?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (name, dir) in &pairs {
        let old_path = dir.join("old");
        let old = Image::open(&old_path)?;
        let new = Image::open(&dir.join("new"))?;
        let plan = pool.install(|| Plan::build(&old, &new))?;
        for &budget in &budgets {
            let opts = Options {
                apply_memory: budget,
                ..a.gen.options()
            };
            let patch = pool.install(|| plan.encode(&old, &new, &opts))?;
            let patch_path = work.path().join(format!("{name}.fwd"));
            let out_path = work.path().join(format!("{name}.out"));
            crate::write_atomically(&patch_path, &patch.bytes)?;
            let (_, mem) = apply_in_child(&old_path, &patch_path, None, &out_path)?;
            if std::fs::read(&out_path)?[..] != new[..] {
                failures.push(format!("{name} at {}: wrong image", human(budget)));
            }
            let info = fwdelta_apply::inspect(&patch.bytes[..])?;
            if mem.heap > budget + (64 << 10) {
                failures.push(format!(
                    "{name} at {}: peak heap {} exceeds budget + 64 KiB",
                    human(budget),
                    human(mem.heap)
                ));
            }
            rows.push(BudgetRow {
                pair: name.clone(),
                new_len: new.len() as u64,
                budget,
                codec: info.header.codec.name(),
                window_log: info.header.window_log,
                patch_len: patch.bytes.len() as u64,
                claim: info.header.apply_memory,
                heap: mem.heap,
                rss: mem.rss,
            });
            eprintln!("  {name} @ {}: {} bytes", human(budget), patch.bytes.len());
        }
    }
    let size_at = |pair: &str, budget: u64| {
        rows.iter()
            .find(|r| r.pair == pair && r.budget == budget)
            .map_or(0, |r| r.patch_len)
    };
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "pair": r.pair, "new_len": r.new_len, "budget": r.budget, "codec": r.codec,
                    "window_log": r.window_log, "patch_len": r.patch_len,
                    "patch_vs_largest_budget": r.patch_len as f64 / size_at(&r.pair, reference).max(1) as f64,
                    "apply_memory_claim": r.claim, "apply_peak_heap_bytes": r.heap, "apply_peak_rss_bytes": r.rss,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("fwdelta bench --budgets: patch size and apply memory per applier budget (cost against {})", human(reference));
        println!("| pair | new | budget | codec | window | patch | vs {} | claim | apply peak heap | heap - budget | apply peak RSS |", human(reference));
        println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            let base = size_at(&r.pair, reference).max(1);
            println!(
                "| {} | {} | {} | {} | 2^{} | {} | {:+.1}% | {} | {} | {:+} KiB | {} |",
                r.pair,
                r.new_len,
                human(r.budget),
                r.codec,
                r.window_log,
                r.patch_len,
                100.0 * (r.patch_len as f64 / base as f64 - 1.0),
                human(r.claim),
                human(r.heap),
                (r.heap as i64 - r.budget as i64) / 1024,
                human(r.rss)
            );
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}
