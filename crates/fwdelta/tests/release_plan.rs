//! `fwdelta release plan | run-job | collect` and `plan --k8s`, through the
//! binary, on the release tests' fleet (seven old images).
//!
//! Checked: the plan has one job per old image plus the full image, with
//! the inputs' hashes, the output names `release` uses, and the memory and
//! CPUs of each job; running the jobs in any order, one twice and one from
//! stdin, then collecting gives a directory byte-identical to `fwdelta
//! release`'s (with and without left-out deltas); one job run four times
//! at once leaves one file of the same bytes; a damaged output is
//! remade by run-job and refused by collect; a missing output, an input
//! changed after planning and a foreign key file are refused; the
//! Kubernetes Job parses as YAML with one completion per job, the index
//! wired into run-job, and resources from the plan.

use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "common/release_fixture.rs"]
mod release_fixture;
use release_fixture::*;

const EXIT_FAILURE: i32 = 1;
const EXIT_BAD_PATCH: i32 = 3;

/// `fwdelta release plan release.toml -o plan.jsonl` plus `extra`; the jobs.
fn plan(f: &Fixture, extra: &[&OsStr]) -> Vec<Value> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "release".into(),
        "plan".into(),
        f.path("release.toml").into_os_string(),
        "-o".into(),
        f.path("plan.jsonl").into_os_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_os_string()));
    fwdelta(args).ok();
    fs::read_to_string(f.path("plan.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn run_job(f: &Fixture, job: usize, out: &str) -> Run {
    fwdelta([
        OsStr::new("release"),
        OsStr::new("run-job"),
        f.path("plan.jsonl").as_os_str(),
        OsStr::new("--job"),
        OsStr::new(&job.to_string()),
        OsStr::new("-o"),
        f.path(out).as_os_str(),
        OsStr::new("--json"),
        OsStr::new("-q"),
    ])
}

fn collect(f: &Fixture, out: &str) -> Run {
    fwdelta([
        OsStr::new("release"),
        OsStr::new("collect"),
        f.path("plan.jsonl").as_os_str(),
        f.path(out).as_os_str(),
        OsStr::new("-q"),
    ])
}

#[test]
fn plan_lists_every_job_with_hashes_names_and_memory() {
    let f = Fixture::new("");
    f.release("ref");
    let jobs = plan(&f, &[OsStr::new("--cpus"), OsStr::new("3")]);
    assert_eq!(jobs.len(), 8, "the full image and seven old images");
    let new = new_image();
    let names: Vec<String> = files(&f.path("ref"))
        .into_keys()
        .filter(|n| n.ends_with(".fwd"))
        .collect();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j["fwdelta_plan"], 1);
        assert_eq!(j["job"], i as u64);
        assert_eq!(j["jobs"], 8);
        assert_eq!(j["cpus"], 3);
        assert_eq!(j["new"]["blake3"], blake3::hash(&new).to_hex().as_str());
        assert_eq!(j["new"]["len"], new.len() as u64);
        assert_eq!(j["release"]["product"], "acme-t300");
        assert_eq!(j["release"]["security_counter"], 7);
        assert_eq!(j["diff"]["level"], 19);
        assert_eq!(j["keys"].as_array().unwrap().len(), 1);
        assert!(Path::new(j["keys"][0]["path"].as_str().unwrap()).is_absolute());
        let output = j["output"].as_str().unwrap();
        assert!(
            names.iter().any(|n| n == output),
            "{output} not in {names:?}"
        );
        // The estimate covers the process and at least the suffix array.
        let memory = j["memory_bytes"].as_u64().unwrap();
        let old_len = j["old"]["len"].as_u64().unwrap_or(0);
        assert!(memory >= (8 << 20) + 4 * old_len, "{memory}");
        if i == 0 {
            assert_eq!(j["old"], Value::Null);
            assert!(output.starts_with("full-"));
        } else {
            let path = j["old"]["path"].as_str().unwrap();
            let bytes = fs::read(path).unwrap();
            assert_eq!(j["old"]["blake3"], blake3::hash(&bytes).to_hex().as_str());
            assert_eq!(j["old"]["len"], bytes.len() as u64);
            let stem = Path::new(path).file_stem().unwrap().to_string_lossy();
            assert_eq!(j["old"]["version"], stem.as_ref());
        }
    }
}

#[test]
fn jobs_in_any_order_then_collect_equal_a_local_release() {
    let f = Fixture::new("");
    f.release("ref");
    let jobs = plan(&f, &[]);
    // Backwards, job 3 twice (the second keeps the first's file), and job
    // 5 from its line on stdin.
    for job in (0..jobs.len()).rev().filter(|&j| j != 5) {
        let report: Value = serde_json::from_str(&run_job(&f, job, "out").ok().stdout).unwrap();
        assert_eq!(report["job"], job as u64);
        assert_eq!(report["reused"], false);
        assert_eq!(report["verified"], true);
    }
    let again: Value = serde_json::from_str(&run_job(&f, 3, "out").ok().stdout).unwrap();
    assert_eq!(again["reused"], true);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
        .args([
            OsStr::new("release"),
            OsStr::new("run-job"),
            OsStr::new("-"),
        ])
        .args([
            OsStr::new("-o"),
            f.path("out").as_os_str(),
            OsStr::new("-q"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let line = serde_json::to_string(&jobs[5]).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    collect(&f, "out").ok();
    assert_same_dirs(&f.path("ref"), &f.path("out"));
}

#[test]
fn duplicated_jobs_running_at_once_leave_the_same_bytes() {
    let f = Fixture::new("");
    f.release("ref");
    let jobs = plan(&f, &[]);
    // Job 1 four times at once into one directory, as an engine that
    // retried a job it wrongly thought dead would run it.
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_fwdelta"))
                .args([OsStr::new("release"), OsStr::new("run-job")])
                .arg(f.path("plan.jsonl"))
                .args(["--job", "1", "-o"])
                .arg(f.path("out"))
                .arg("-q")
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let name = jobs[1]["output"].as_str().unwrap();
    let out = files(&f.path("out"));
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        [name],
        "one file, no temporaries"
    );
    assert!(out[name] == fs::read(f.path("ref").join(name)).unwrap());
}

#[test]
fn left_out_deltas_give_the_same_manifest_as_release() {
    let f = Fixture::new("max_share = 0.01\n");
    f.release("ref");
    let jobs = plan(&f, &[]);
    for job in 0..jobs.len() {
        run_job(&f, job, "out").ok();
    }
    let run = fwdelta([
        OsStr::new("release"),
        OsStr::new("collect"),
        f.path("plan.jsonl").as_os_str(),
        f.path("out").as_os_str(),
        OsStr::new("--json"),
        OsStr::new("-q"),
    ])
    .ok();
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["left_out"].as_array().unwrap().len(), 7);
    for name in ["manifest.json", "manifest.sig"] {
        assert!(
            fs::read(f.path("ref").join(name)).unwrap()
                == fs::read(f.path("out").join(name)).unwrap(),
            "{name} differs"
        );
    }
    // The left-out deltas stay in OUTDIR (made and checked by run-job),
    // outside the manifest.
    assert_eq!(files(&f.path("out")).len(), 10);
    assert_eq!(files(&f.path("ref")).len(), 3);
}

#[test]
fn damaged_missing_or_changed_inputs_and_outputs_are_refused() {
    let f = Fixture::new("");
    let jobs = plan(&f, &[]);
    for job in 0..jobs.len() {
        run_job(&f, job, "out").ok();
    }
    // A missing output: collect names the job to run.
    let victim = f.path("out").join(jobs[2]["output"].as_str().unwrap());
    let good = fs::read(&victim).unwrap();
    fs::remove_file(&victim).unwrap();
    let run = collect(&f, "out").error(EXIT_FAILURE);
    assert!(run.stderr.contains("run-job"), "{}", run.stderr);
    assert!(run.stderr.contains("--job 2"), "{}", run.stderr);
    assert!(!f.path("out/manifest.json").exists());
    // A damaged output: collect refuses it, run-job replaces it.
    let mut bad = good.clone();
    let at = bad.len() - 3;
    bad[at] ^= 1;
    fs::write(&victim, &bad).unwrap();
    let run = collect(&f, "out").error(EXIT_BAD_PATCH);
    assert!(run.stderr.contains("does not verify"), "{}", run.stderr);
    let report: Value = serde_json::from_str(&run_job(&f, 2, "out").ok().stdout).unwrap();
    assert_eq!(report["reused"], false);
    assert_eq!(fs::read(&victim).unwrap(), good);
    collect(&f, "out").ok();
    // An old image changed after planning.
    let old = jobs[4]["old"]["path"].as_str().unwrap();
    let mut bytes = fs::read(old).unwrap();
    bytes[100] ^= 0xff;
    fs::write(old, &bytes).unwrap();
    let run = run_job(&f, 4, "again").error(EXIT_FAILURE);
    assert!(
        run.stderr.contains("changed since the plan was made"),
        "{}",
        run.stderr
    );
    // A key file now holding another key.
    fs::copy(f.path("other.key"), f.path("rel.key")).unwrap();
    let run = run_job(&f, 0, "again").error(EXIT_FAILURE);
    assert!(run.stderr.contains("not the plan's key"), "{}", run.stderr);
    // No job 8.
    let run = run_job(&f, 8, "again").error(EXIT_FAILURE);
    assert!(run.stderr.contains("jobs 0 to 7"), "{}", run.stderr);
}

#[test]
fn k8s_renders_an_indexed_job_from_the_plan() {
    let f = Fixture::new("");
    // Every input under one directory, as on a volume.
    let mount = f.dir.path().to_path_buf();
    fs::write(f.path("new.bin"), new_image()).unwrap();
    let toml = fs::read_to_string(f.path("release.toml")).unwrap();
    let toml: String = toml
        .lines()
        .map(|l| match l.starts_with("new_image") {
            true => "new_image = \"new.bin\"\n".to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    fs::write(f.path("release.toml"), toml).unwrap();
    let jobs = plan(
        &f,
        &[
            OsStr::new("--k8s"),
            f.path("job.yaml").as_os_str(),
            OsStr::new("--k8s-image"),
            OsStr::new("registry.example/fwdelta:0.1"),
            OsStr::new("--k8s-parallelism"),
            OsStr::new("3"),
            OsStr::new("--k8s-backoff-limit"),
            OsStr::new("4"),
            OsStr::new("--k8s-claim"),
            OsStr::new("release-data"),
            OsStr::new("--k8s-mount"),
            mount.as_os_str(),
        ],
    );
    let y: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(f.path("job.yaml")).unwrap()).unwrap();
    assert_eq!(y["apiVersion"], "batch/v1");
    assert_eq!(y["kind"], "Job");
    assert_eq!(y["metadata"]["name"], "fwdelta-acme-t300-2-0-0");
    let spec = &y["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"].as_u64(), Some(jobs.len() as u64));
    assert_eq!(spec["parallelism"].as_u64(), Some(3));
    assert_eq!(spec["backoffLimit"].as_u64(), Some(4));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/fwdelta:0.1");
    let command: Vec<&str> = c["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let plan_path = f.path("plan.jsonl").display().to_string();
    let out_path = f.path("out").display().to_string();
    assert_eq!(
        command,
        [
            "fwdelta",
            "release",
            "run-job",
            &plan_path,
            "--job",
            "$(JOB_COMPLETION_INDEX)",
            "-o",
            &out_path
        ]
    );
    // The index comes from the pod's completion-index annotation.
    assert_eq!(c["env"][0]["name"], "JOB_COMPLETION_INDEX");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    // One template for every index: the largest job's memory, the CPUs.
    let largest = jobs
        .iter()
        .map(|j| j["memory_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    let memory = format!("{}Mi", largest.div_ceil(1 << 20));
    for side in ["requests", "limits"] {
        assert_eq!(
            c["resources"][side]["memory"].as_str(),
            Some(memory.as_str())
        );
        assert_eq!(c["resources"][side]["cpu"], "2");
    }
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "release-data"
    );
    assert_eq!(c["volumeMounts"][0]["name"], pod["volumes"][0]["name"]);
    assert_eq!(
        c["volumeMounts"][0]["mountPath"].as_str(),
        Some(mount.display().to_string().as_str())
    );
    // A mount that does not hold the plan's paths is refused.
    let run = fwdelta([
        OsStr::new("release"),
        OsStr::new("plan"),
        f.path("release.toml").as_os_str(),
        OsStr::new("-o"),
        f.path("plan2.jsonl").as_os_str(),
        OsStr::new("--k8s"),
        f.path("job2.yaml").as_os_str(),
        OsStr::new("--k8s-claim"),
        OsStr::new("release-data"),
        OsStr::new("--k8s-mount"),
        OsStr::new("/elsewhere"),
    ])
    .error(EXIT_FAILURE);
    assert!(
        run.stderr.contains("is not under --k8s-mount"),
        "{}",
        run.stderr
    );
    assert!(!f.path("job2.yaml").exists() && !f.path("plan2.jsonl").exists());
}
