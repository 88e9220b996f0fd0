"""Chains the stage notebooks with papermill into one run folder, recording status and time per stage."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from pathlib import Path
from typing import Any

from . import STAGES, runs
from .config import build
from .errors import ConfigError, WorkflowError

log = logging.getLogger(__name__)
NOTEBOOKS = runs.REPO_ROOT / "notebooks"
WORKFLOWS = runs.REPO_ROOT / "workflows"
CONFIGS = {"export": "ExportConfig", "calibrate": "CalibrateConfig", "quantize": "QuantizeConfig",
           "compare": "CompareConfig", "build": "BuildConfig", "throughput": "ThroughputConfig"}
PATH_PARAMS = ("model", "calib_dir", "eval_dir", "data", "timing_cache")


def reference_defaults() -> dict[str, str]:
    """Return the default model and image sets: the project's reference AOI detector and its splits."""
    root = runs.REPO_ROOT
    return {"model": str(root / "models" / "aoi_yolov8n.pt"), "calib_dir": str(root / "calib_data" / "aoi"),
            "eval_dir": str(root / "data" / "aoi" / "val" / "images"), "data": str(root / "data" / "aoi" / "data.yaml")}


def notebook_for(stage: str) -> Path:
    """Return the notebook that runs a stage (notebooks/NN_<stage>.ipynb)."""
    return NOTEBOOKS / f"{STAGES.index(stage) + 1:02d}_{stage}.ipynb"


def config_class(stage: str) -> type:
    """Return the config dataclass of a stage."""
    return getattr(importlib.import_module(f"yolo_compile.{stage}"), CONFIGS[stage])


def stage_params(stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return the subset of params that a stage's config declares."""
    names = {f.name for f in dataclasses.fields(config_class(stage))}
    return {k: v for k, v in params.items() if k in names}


def load_workflow(name_or_path: str | Path) -> dict:
    """Return a workflow definition from workflows/<name>.yaml or a path, validated."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = WORKFLOWS / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in WORKFLOWS.glob("*.yaml")))
        raise WorkflowError(f"{name_or_path}: no such workflow file; use a path or one of: {known}")
    wf = yaml.safe_load(path.read_text()) or {}
    unknown = set(wf) - {"name", "description", "stages", "params"}
    if unknown:
        raise WorkflowError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected name, description, stages, params")
    stages = wf.get("stages", list(STAGES))
    bad = [s for s in stages if s not in STAGES]
    if bad or list(stages) != sorted(stages, key=STAGES.index):
        raise WorkflowError(f"{path}: stages must be an ordered subset of {', '.join(STAGES)}; got {stages}")
    params = dict(wf.get("params") or {})
    for key in PATH_PARAMS:  # a relative path in a workflow file is relative to that file, not to the cwd
        value = params.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and not _is_builtin_yaml(value):
            params[key] = str((path.parent / value).resolve())
    wf.update(name=wf.get("name", path.stem), stages=list(stages), params=params, path=str(path))
    return wf


def resolve_params(wf: dict, overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge reference defaults < workflow params < overrides, check every name, make paths absolute.

    A workflow whose params name a model (binary-aoi) brings its own reference set: its model, calib_dir,
    eval_dir and data stand in for the AOI defaults, and an overriding --model needs its own images again.
    """
    ref = reference_defaults()
    wf_params = dict(wf["params"])
    if "model" in wf_params:
        ref = {k: wf_params.pop(k) for k in ("model", "calib_dir", "eval_dir", "data") if k in wf_params}
    given = {**wf_params, **overrides}
    if "model" in given and Path(str(given["model"])).resolve() != Path(ref["model"]):
        # The reference image sets only fit the reference detector: another model brings its own.
        needed = ("calib_dir", "eval_dir") if "calibrate" in wf["stages"] else ("eval_dir",)
        missing = [f"--{'calib' if k == 'calib_dir' else 'eval'}" for k in needed if k not in given]
        if missing:
            raise ConfigError(f"model {given['model']} is not the reference detector: pass {' and '.join(missing)} "
                              "with images from its own deployment line")
        ref = {k: v for k, v in ref.items() if k not in ("calib_dir", "eval_dir", "data")}
    params = {**ref, **given}
    known = {f.name for s in STAGES for f in dataclasses.fields(config_class(s))}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if str(params.get("keep_float", "")).endswith(".json"):  # a file, not regexes: the kernels run in the run folder
        params["keep_float"] = str(Path(params["keep_float"]).expanduser().resolve())
    for key in PATH_PARAMS:
        if params.get(key):
            params[key] = str(Path(params[key]).expanduser().resolve()) if not _is_builtin_yaml(params[key]) else params[key]
    typed: dict[str, Any] = {}
    for stage in wf["stages"]:  # fail before any notebook runs: every stage's config must build
        cfg = build(config_class(stage), stage_params(stage, params))
        typed.update({k: getattr(cfg, k) for k in stage_params(stage, params)})
    return typed


def _is_builtin_yaml(value: str) -> bool:
    """Ultralytics ships model yamls (yolov8n.yaml...) that resolve by name, not by path."""
    return value.endswith((".yaml", ".yml")) and "/" not in value and not Path(value).exists()


def run_workflow(name_or_path: str | Path, overrides: dict[str, Any] | None = None,
                 artifacts: str | Path | None = None) -> tuple[Path, dict]:
    """Execute a workflow's notebooks with papermill into a new run folder; return (run_dir, manifest)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from .report import write_report

    wf = load_workflow(name_or_path)
    params = resolve_params(wf, overrides or {})
    root = Path(artifacts) if artifacts else runs.REPO_ROOT / "artifacts" / "runs"
    model = Path(params["model"])
    fingerprint = {"workflow": wf["name"], "params": params,
                   "model_sha256": runs.sha256(model) if model.is_file() else params["model"]}
    run_dir = runs.new_run_dir(root, fingerprint)
    inputs = {k: params[k] for k in PATH_PARAMS if params.get(k) and Path(params[k]).exists()}
    runs.init_manifest(run_dir, wf["name"], params, inputs)
    log.info("run folder: %s", run_dir)
    status = "passed"
    for stage in wf["stages"]:
        nb = notebook_for(stage)
        out_nb = run_dir / nb.name
        sp = {k: list(v) if isinstance(v, tuple) else v for k, v in stage_params(stage, params).items()}
        runs.record_stage(run_dir, stage, status="running", notebook=nb.name, parameters=sp)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out_nb), parameters={**sp, "run_dir": str(run_dir)},
                                cwd=str(run_dir), progress_bar=False, log_output=False, kernel_name="python3")
        except PapermillExecutionError as e:
            status = "failed"
            runs.record_stage(run_dir, stage, status="failed", seconds=round(time.perf_counter() - t0, 2),
                              failed_cell=e.exec_count, error=f"{e.ename}: {e.evalue}")
            log.error("stage %s failed in cell %s: %s: %s", stage, e.exec_count, e.ename, e.evalue)
            break
        res = runs.read_result(run_dir, stage)
        runs.record_stage(run_dir, stage, status=res["status"], seconds=round(time.perf_counter() - t0, 2),
                          stage_seconds=res.get("seconds"), reason=res.get("reason", ""))
        log.info("stage %s: %s (%.1f s)", stage, res["status"], time.perf_counter() - t0)
        if res["status"] == "failed":
            status = "failed"
            break
    write_report(run_dir, status)
    return run_dir, runs.finish_manifest(run_dir, status)
