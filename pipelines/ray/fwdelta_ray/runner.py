"""Run an fwdelta release plan on Ray.

Each job of the plan (one JSON line of `fwdelta release plan`) becomes one
Ray task that declares the job's `cpus` and `memory_bytes` and runs
`fwdelta release run-job PLAN --job N -o OUTDIR`. A task whose worker dies
(killed, out of memory, node lost) is retried by Ray up to --max-retries
times; a job that fails on its own (bad input, a check that fails) is not
retried. run-job writes its patch to a temporary file created exclusively
and renames it to a name derived from the inputs, keeping a correct file
already there, so a retried or duplicated job cannot corrupt the release.
When every job is done, `fwdelta release collect PLAN OUTDIR` verifies
every output and writes manifest.json (and manifest.sig).

Every node must see the plan's paths (inputs, keys, OUTDIR) at the same
place (a shared filesystem) and have fwdelta at the --fwdelta path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import ray

# Test hook: "JOB:MARKER". The first attempt of job JOB (the one that
# creates the file MARKER) starts run-job, then kills it and its own Ray
# worker process with SIGKILL, as a crashed worker would die mid-job. Used
# by crates/fwdelta/tests/ray_release.rs; never set it in production.
KILL_HOOK_ENV = "FWDELTA_RAY_TEST_KILL"

Job = Dict[str, Any]


def read_plan(path: Path) -> List[Job]:
    """The plan's jobs, checked to be numbered 0..n-1 in order."""
    jobs: List[Job] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                jobs.append(json.loads(line))
    if not jobs:
        raise ValueError(f"{path}: the plan has no jobs")
    for i, job in enumerate(jobs):
        if job.get("job") != i or job.get("jobs") != len(jobs):
            raise ValueError(f"{path}: line {i + 1} is not job {i} of {len(jobs)}")
    return jobs


def _first_attempt(marker: str) -> bool:
    """True once: for the attempt that creates `marker`."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _die_mid_job(cmd: List[str], marker: str) -> None:
    """The kill hook: start run-job, then SIGKILL it and this worker."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.03)
    running = proc.poll() is None
    Path(marker).write_text(
        json.dumps(
            {
                "worker_pid": os.getpid(),
                "run_job_pid": proc.pid,
                "run_job_was_running": running,
            }
        ),
        encoding="utf-8",
    )
    proc.kill()
    proc.wait()
    os.kill(os.getpid(), signal.SIGKILL)


def run_job(
    fwdelta: str, plan: str, job: int, outdir: str, kill_marker: Optional[str]
) -> Job:
    """One job (the body of a Ray task): `fwdelta release run-job`'s JSON line."""
    cmd = [fwdelta, "release", "run-job", plan, "--job", str(job), "-o", outdir]
    cmd += ["--json", "-q"]
    if kill_marker is not None and _first_attempt(kill_marker):
        _die_mid_job(cmd, kill_marker)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"fwdelta release run-job --job {job} exited {done.returncode}: "
            f"{done.stderr.strip()}"
        )
    result: Job = json.loads(done.stdout)
    result["attempt_pid"] = os.getpid()
    return result


def _kill_hook() -> Optional[tuple[int, str]]:
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return None
    job, _, marker = spec.partition(":")
    return int(job), str(Path(marker).resolve())


def _check_fits(jobs: List[Job]) -> None:
    """Refuse a plan whose largest job could never be scheduled here."""
    have = ray.cluster_resources()
    for job in jobs:
        for what, need in (("CPU", job["cpus"]), ("memory", job["memory_bytes"])):
            if need > have.get(what, 0):
                raise RuntimeError(
                    f"job {job['job']} needs {what} {need}, the Ray cluster has "
                    f"{have.get(what, 0)}"
                )


def run_plan(
    plan: Path,
    outdir: Path,
    fwdelta: Path,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    object_store_memory: Optional[int] = None,
    max_retries: int = 3,
    quiet: bool = False,
) -> Job:
    """Run every job of `plan` on Ray, then collect; returns a report.

    With `address` None a local Ray instance is started (and shut down
    again); otherwise the driver joins the cluster at `address`.
    """
    jobs = read_plan(plan)
    plan_s, outdir_s, fwdelta_s = (str(p.resolve()) for p in (plan, outdir, fwdelta))
    hook = _kill_hook()
    start = time.monotonic()
    if address is None:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        if address is None:
            _check_fits(jobs)
        task = ray.remote(run_job)
        pending = []
        for job in jobs:
            marker = hook[1] if hook is not None and hook[0] == job["job"] else None
            pending.append(
                task.options(
                    num_cpus=job["cpus"],
                    memory=job["memory_bytes"],
                    max_retries=max_retries,
                    retry_exceptions=False,
                    name=f"fwdelta-job-{job['job']}",
                ).remote(fwdelta_s, plan_s, job["job"], outdir_s, marker)
            )
        results: List[Job] = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                r = ray.get(ref)
                results.append(r)
                if not quiet:
                    how = "kept (verified)" if r["reused"] else "made, verified"
                    print(
                        f"job {r['job']}: {r['output']} {r['bytes']} bytes, {how} "
                        f"({len(results)}/{len(jobs)})",
                        file=sys.stderr,
                    )
    finally:
        if address is None:
            ray.shutdown()
    collect = subprocess.run(
        [fwdelta_s, "release", "collect", plan_s, outdir_s, "--json", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    if collect.returncode != 0:
        raise RuntimeError(
            f"fwdelta release collect exited {collect.returncode}: {collect.stderr.strip()}"
        )
    results.sort(key=lambda r: r["job"])
    return {
        "jobs": results,
        "collect": json.loads(collect.stdout),
        "seconds": time.monotonic() - start,
    }


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; exit 0 on success, 1 when a job or collect failed."""
    p = argparse.ArgumentParser(
        prog="python -m fwdelta_ray",
        description="Run an fwdelta release plan on Ray, then collect the manifest.",
    )
    p.add_argument("plan", type=Path, help="the plan (fwdelta release plan ... -o PLAN)")
    p.add_argument("outdir", type=Path, help="the release directory (shared by all nodes)")
    p.add_argument("--fwdelta", default="fwdelta", help="the fwdelta binary (default: on PATH)")
    p.add_argument("--address", help="a Ray cluster to join (default: start one here)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    p.add_argument(
        "--object-store-memory", type=int, help="object store bytes of the local Ray instance"
    )
    p.add_argument("--max-retries", type=int, default=3, help="retries of a job whose worker died")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    a = p.parse_args(argv)
    found = a.fwdelta if "/" in a.fwdelta else shutil.which(a.fwdelta)
    if found is None:
        print(f"fwdelta_ray: error: {a.fwdelta} is not on PATH (give --fwdelta)", file=sys.stderr)
        return 1
    fwdelta = Path(found)
    try:
        # Ray forwards its workers' and raylet's lines to the driver's
        # stdout; keep stdout for the report.
        with contextlib.redirect_stdout(sys.stderr):
            report = run_plan(
                a.plan,
                a.outdir,
                fwdelta,
                address=a.address,
                num_cpus=a.num_cpus,
                object_store_memory=a.object_store_memory,
                max_retries=a.max_retries,
                quiet=a.quiet,
            )
    except (RuntimeError, ValueError, OSError, ray.exceptions.RayError) as e:
        print(f"fwdelta_ray: error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    if not a.quiet:
        c = report["collect"]
        print(
            f"{c['manifest']}: {c['verified']} job(s) verified on Ray, "
            f"{len(c['left_out'])} left out, {report['seconds']:.1f}s",
            file=sys.stderr,
        )
    return 0

