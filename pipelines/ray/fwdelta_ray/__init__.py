"""Run an fwdelta release plan on Ray.

`fwdelta release plan` writes the jobs; each becomes one Ray task that
declares the CPUs and memory the plan gives it and runs
`fwdelta release run-job`; then `fwdelta release collect` verifies every
output and writes the manifest. See pipelines/ray/README.md.
"""

from .runner import main, read_plan, run_plan

__all__ = ["main", "read_plan", "run_plan"]
