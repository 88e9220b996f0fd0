"""The few calls the runner and the CLI make into ci/: after the stages, and after a run on the console."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .. import fileio, runs
from . import EXIT_FAILED, EXIT_PASSED, EXIT_REGRESSION, junit

log = logging.getLogger(__name__)


def after_stages(run_dir: Path, wf: dict, params: dict, status: str) -> None:
    """Compare with the baseline (when one is set and every stage passed), then write junit.xml; never raises."""
    try:
        manifest = runs.read_manifest(run_dir)
        given = wf.get("baseline")  # resolved by ci.baseline.take; a resumed run's is the manifest's
        spec = manifest.get("baseline") or (given if isinstance(given, dict) and "run_dir" in given else None)
        if spec and status == "passed":
            from .baseline import compare

            manifest["regression"] = compare(run_dir, spec, params)
            fileio.write_json(run_dir / runs.MANIFEST, manifest)
        elif spec:
            manifest["regression"] = {"baseline": spec["run_dir"], "checks": [], "regressed": False,
                                      "summary": "not compared: the run failed first"}
            fileio.write_json(run_dir / runs.MANIFEST, manifest)
        junit.write(run_dir, manifest)
    except Exception as e:  # noqa: BLE001  CI files must never hide the run's own verdict
        log.error("junit.xml / baseline comparison: %s: %s", type(e).__name__, e)


def exit_code(manifest: dict) -> int:
    """Return the CLI's exit code for a finished run: 0 passed, 1 stage or gate failed, 3 regression."""
    if manifest.get("status") != "passed":
        return EXIT_FAILED
    reg = manifest.get("regression") or {}
    if reg.get("error"):
        return EXIT_FAILED
    return EXIT_REGRESSION if reg.get("regressed") else EXIT_PASSED


def on_console(run_dir: Path, manifest: dict, out=None) -> int:
    """Print the baseline checks, append GitHub's step summary, return the exit code."""
    from . import summary
    from ..progress import stop_console

    stop_console()
    out = out or sys.stdout
    reg = manifest.get("regression") or {}
    for c in reg.get("checks") or []:
        mark = {"passed": "ok  ", "failed": "REGRESSION", "skipped": "skip"}[c["status"]]
        print(f"  vs baseline {c['name']:<9} {mark}  {c['message']}", file=out)
    if reg.get("error"):
        print(f"  vs baseline: {reg['error']}", file=out)
    code = exit_code(manifest)
    if code == EXIT_REGRESSION:
        print(f"regression against the baseline {Path(reg['baseline']).name}: {reg['summary']}", file=out)
    try:
        summary.append(run_dir, manifest, code)
    except Exception as e:  # noqa: BLE001  a summary that cannot be written never changes the exit code
        log.warning("GITHUB_STEP_SUMMARY not written: %s", e)
    return code
