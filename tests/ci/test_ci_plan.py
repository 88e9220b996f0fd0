"""`yolo-compile plan`: its papermill lines, run in a shell, give the stage outputs `yolo-compile run` gives."""

from __future__ import annotations

import json
import subprocess

import pytest

from yolo_compile.pipeline.plan import _param_args

from helpers_ci import cli, compile_args, env, stage_outputs, workflow_file

STAGES = ("export", "calibrate", "quantize", "compare", "build")


def test_parameters_keep_their_types():
    assert _param_args("calib_dir", "1.10") == ["-r", "calib_dir", "1.10"]  # never guessed into a float
    assert _param_args("imgsz", 64) == ["-p", "imgsz", "64"]
    assert _param_args("map_drop_max", 1.0) == ["-p", "map_drop_max", "1.0"]
    assert _param_args("dynamic_batch", False) == ["-p", "dynamic_batch", "False"]
    assert _param_args("batch_sizes", (1, 8)) == ["-y", '{"batch_sizes": [1, 8]}']


@pytest.mark.slow  # about 100 s on 2 shared cores: a run and its plan, every stage executed twice
def test_plan_reproduces_the_run(tmp_path, tiny_checkpoint, image_sets):
    wf = workflow_file(tmp_path)
    args = compile_args(tiny_checkpoint, image_sets)
    caches = {"YOLO_COMPILE_CACHE": str(tmp_path / "cache-run")}
    ran = cli("run", wf, *args, "--artifacts", tmp_path / "runs", "--no-cache", extra_env=caches)
    assert ran.returncode == 0, ran.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    planned = tmp_path / "planned" / "run"
    plan = cli("plan", wf, *args, "--run-dir", planned)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    assert sum(line.startswith("papermill ") for line in lines) == len(STAGES)
    assert lines[-1].startswith("yolo-compile finish ")
    assert "yolo_compile.cli" not in plan.stdout and " -r calib_dir " in plan.stdout and " -p imgsz 64" in plan.stdout
    script = tmp_path / "plan.sh"
    script.write_text(plan.stdout)
    # Another tensor cache: the plan decodes and calibrates for itself, nothing comes from the run's cache.
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600,
                          env=env(YOLO_COMPILE_CACHE=str(tmp_path / "cache-plan")))
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = stage_outputs(run_dir, STAGES, tmp_path / "cache-run"), stage_outputs(planned, STAGES, tmp_path / "cache-plan")
    assert len(a) > 2 * len(STAGES) and a == b
    assert (planned / "build" / "model.xml").is_file()  # the engine itself, byte for byte (checked above)
    m = json.loads((planned / "manifest.json").read_text())
    assert m["status"] == "passed" and m["parameters"]["imgsz"] == 64 and set(m["stages"]) == set(STAGES)
    assert (planned / "junit.xml").is_file() and (planned / "report.html").is_file()
    assert cli("verify", planned).returncode == 0
