"""examples/ci: the GitHub Actions and GitLab CI files' own script lines, run on the tiny model in a temporary
checkout; examples/matrix.yaml expands to both reference detectors x two recipes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from yolo_compile import resources

from helpers_ci import compile_args, env, workflow_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _bash(script: str, cwd: Path, environ: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=environ, capture_output=True, text=True, timeout=600)


def _github(checkout: Path, job_env: dict, extra: dict) -> tuple[int, str]:
    """Run the compile job's `run:` steps as the runner does (GITHUB_ENV carried, `if:` on main); return (rc, log)."""
    doc = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    environ = env(**{**{k: str(v) for k, v in doc["env"].items()}, **job_env, **extra})
    github_env = checkout / "github_env"
    github_env.write_text("")
    environ["GITHUB_ENV"] = str(github_env)
    failed, log = 0, ""
    for step in doc["jobs"]["compile"]["steps"]:
        if "run" not in step or step["run"].startswith("pip install"):
            continue  # actions (checkout, cache, upload) and the install: the test's checkout has the package
        cond = step.get("if", "")
        if failed and "always()" not in cond or not failed and cond.startswith("failure()"):
            continue
        done = _bash(step["run"], checkout, environ)
        log += f"$ {step['name']}\n{done.stdout}{done.stderr}"
        failed = failed or done.returncode
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            environ[key] = value
    return failed, log


@pytest.mark.slow
def test_github_actions_steps(tmp_path, tiny_checkpoint, image_sets):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    job = {"WORKFLOW": str(workflow_file(tmp_path)), "COMPILE_ARGS": " ".join(compile_args(tiny_checkpoint, image_sets)),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), "YOLO_COMPILE_CACHE": str(tmp_path / "cache")}
    rc, log = _github(checkout, job, {})
    assert rc == 0, log
    accepted = json.loads((checkout / "artifacts" / "runs" / "accepted.json").read_text())
    # the next push plants a worse recipe: the job fails with exit 3, names the regression, and accepts nothing
    rc, log = _github(checkout, {**job, "COMPILE_ARGS": job["COMPILE_ARGS"] + " --set recipe=float"}, {})
    assert rc == 3, log
    assert "REGRESSION  size" in log and "regressed: " in log
    assert json.loads((checkout / "artifacts" / "runs" / "accepted.json").read_text()) == accepted
    newest = max((checkout / "artifacts" / "runs").glob("2*/junit.xml"), key=os.path.getmtime)
    assert "vs baseline: size" in newest.read_text() and "<failure" in newest.read_text()
    assert "regressed against the baseline" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_gitlab_ci_script(tmp_path, tiny_checkpoint, image_sets):
    doc = yaml.safe_load((EXAMPLES / "ci" / "gitlab-ci.yml").read_text())
    job = doc["compile"]
    script = "\n".join(line for line in job["before_script"] + job["script"] if not line.startswith("pip install"))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    environ = env(**{**doc["variables"], "WORKFLOW": str(workflow_file(tmp_path)), "CI_COMMIT_BRANCH": "main",
                     "CI_DEFAULT_BRANCH": "main", "COMPILE_ARGS": " ".join(compile_args(tiny_checkpoint, image_sets)),
                     "YOLO_COMPILE_CACHE": str(tmp_path / "cache")})
    first = _bash(script, checkout, environ)
    assert first.returncode == 0, first.stdout + first.stderr
    second = _bash(script, checkout, environ)  # the next pipeline: gated against the first, then accepted itself
    assert second.returncode == 0, second.stdout + second.stderr
    assert "vs baseline size      ok" in second.stdout
    junit = sorted((checkout / "artifacts" / "runs").glob(job["artifacts"]["reports"]["junit"].split("runs/")[1]))
    assert len(junit) == 2


def test_example_files_are_wired(tmp_path):
    from yolo_compile.pipeline.matrix import load

    gh = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    gl = yaml.safe_load((EXAMPLES / "ci" / "gitlab-ci.yml").read_text())
    for text in (json.dumps(gh), json.dumps(gl)):
        assert "--baseline accepted" in text and "yolo-compile accept" in text and "junit.xml" in text
        assert "yolo-compile matrix examples/matrix.yaml" in text
    name, entries = load(EXAMPLES / "matrix.yaml")
    assert name == "reference-cpu" and len(entries) == 4
    assert {Path(e.model).name for e in entries} == {"aoi_yolov8n.pt", "binary_aoi_yolov8n.pt"}
    assert all(Path(e.model).is_file() and e.target == "cpu" for e in entries)
    assert Path(resources.reference_paths()["model"]).name == "aoi_yolov8n.pt"
