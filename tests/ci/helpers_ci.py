"""Shared pieces of the CI tests: a short workflow on the tiny model, and running the CLI as CI does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import IMGSZ

WORKFLOW = "stages: [export, calibrate, quantize, compare, build]\nparams: {recipe: mixed, calibration_method: max, quantizer: modelopt}\n"
TIME_KEYS = ("seconds", "cache_reused")
# The quantize stage's latency measurements (a candidate's speed, FP32's, the verdict, the front): clock readings too.
SPEED_KEYS = ("images_per_s", "p50_ms", "speed_noise", "speedup_vs_paired", "paired_with", "timing_rounds",
              "fp32_images_per_s", "speedup_vs_fp32", "int8_buys_speed", "says", "pareto", "latency", "timing_load")


def workflow_file(folder: Path) -> Path:
    """Write the five-stage CPU workflow the CI tests compile the tiny model with."""
    path = folder / "ci.yaml"
    path.write_text(WORKFLOW)
    return path


def compile_args(tiny_checkpoint, image_sets) -> list[str]:
    return ["--model", str(tiny_checkpoint), "--calib", str(image_sets["calib"]), "--eval", str(image_sets["eval"]),
            "--set", f"imgsz={IMGSZ}", "--set", f"data={image_sets['data']}", "--set", "study=off",
            "--set", "objective=accuracy"]  # the choice by accuracy alone: a plan reproduces the run byte for byte


def env(**extra) -> dict:
    """The environment a CI job has: the venv's scripts (papermill, yolo-compile) on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", **extra}


def without_times(obj):
    """Return a result.json body without wall-clock measurements (the only thing two equal runs may differ in)."""
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if k not in TIME_KEYS + SPEED_KEYS and not k.endswith("_s")}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj


def stage_outputs(run_dir: Path, stages, cache: Path | None = None) -> dict[str, str]:
    """Return {file: sha256} of every stage output, result.json as the hash of its body without timings.

    `cache`: the tensor cache the run used, named in result.json (calibrate's array), written as <cache>.
    """
    import hashlib

    from yolo_compile import runs

    out = {}
    for stage in stages:
        for f in sorted((run_dir / stage).rglob("*")):
            if f.is_file():
                rel = f.relative_to(run_dir).as_posix()
                out[rel] = (hashlib.sha256(json.dumps(without_times(json.loads(
                    f.read_text().replace(str(cache), "<cache>") if cache else f.read_text())), sort_keys=True).encode()).hexdigest()
                            if f.name == "result.json" else runs.sha256(f))
    return out


def cli(*args, cwd=None, extra_env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yolo_compile.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env(**(extra_env or {})), timeout=timeout)
