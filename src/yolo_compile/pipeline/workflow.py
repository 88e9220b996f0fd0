"""Chains the stage notebooks with papermill into one run folder, recording status and time per stage."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from yolo_compile import STAGES, fileio, resources, runs
from yolo_compile.pipeline import execute, registry, stagecache
from yolo_compile.pipeline.kernels import TIMED
from yolo_compile.pipeline.registry import config_class, config_defaults, stage_params
from yolo_compile.config import build
from yolo_compile.errors import ConfigError, WorkflowError

log = logging.getLogger(__name__)
NOTEBOOKS = resources.path("notebooks")
WORKFLOWS = resources.path("workflows")


def file_params() -> list[str]:
    """Return the parameters that always name a file or folder (declared with config.path_field)."""
    return [k for k, kind in registry.path_params().items() if kind == "file"]


def reference_defaults() -> dict[str, str]:
    """Return the default model and image sets: the project's reference AOI detector and its splits."""
    return resources.reference_paths()


def notebook_for(stage: str) -> Path:
    """Return the notebook that runs a stage (notebooks/NN_<stage>.ipynb)."""
    return NOTEBOOKS / registry.get(stage).notebook.name  # NOTEBOOKS: the folder a test may point elsewhere


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
    unknown = set(wf) - {"name", "description", "stages", "params", "timeouts", "baseline"}  # baseline: ci/baseline.py
    if unknown:
        raise WorkflowError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected name, description, stages, params, timeouts")
    stages = wf.get("stages", list(STAGES))
    bad = [s for s in stages if s not in STAGES]
    if bad or list(stages) != sorted(stages, key=STAGES.index):
        raise WorkflowError(f"{path}: stages must be an ordered subset of {', '.join(STAGES)}; got {stages}")
    params = dict(wf.get("params") or {})
    for key in file_params():  # a relative path in a workflow file is relative to that file, not to the cwd
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
    for key in registry.path_params():  # absolute: the kernels run in the run folder (keep_float: when a .json file)
        if params.get(key) and registry.is_path(key, params[key]) and not _is_builtin_yaml(str(params[key])):
            params[key] = str(Path(params[key]).expanduser().resolve())
    typed: dict[str, Any] = {}
    for stage in wf["stages"]:  # fail before any notebook runs: every stage's config must build
        cfg = build(config_class(stage), stage_params(stage, params))
        typed.update({k: getattr(cfg, k) for k in stage_params(stage, params)})
    return typed


def _is_builtin_yaml(value: str) -> bool:
    """Ultralytics ships model yamls (yolov8n.yaml...) that resolve by name, not by path."""
    return value.endswith((".yaml", ".yml")) and "/" not in value and not Path(value).exists()


DEFAULT_TIMEOUT_S = 3600  # per stage; a workflow's `timeouts: {stage: seconds}` overrides it


def run_workflow(name_or_path: str | Path, overrides: dict[str, Any] | None = None,
                 artifacts: str | Path | None = None, *, use_cache: bool = True, verbose: bool = False,
                 on_stage=None) -> tuple[Path, dict]:
    """Validate, then execute a workflow's notebooks into a new run folder; return (run_dir, manifest).

    Nothing is created before every parameter, path, image folder and model file has been checked.
    """
    from yolo_compile.pipeline import validate

    wf = load_workflow(name_or_path)
    from ..ci import baseline as ci_baseline  # --baseline and regress_* are not stage parameters

    overrides = ci_baseline.take(wf, overrides or {}, artifacts)
    params = resolve_params(wf, overrides)
    validate.check(wf, params)
    root = resources.runs_root(artifacts)
    model = Path(params["model"])
    fingerprint = {"workflow": wf["name"], "params": params,
                   "model_sha256": fileio.sha256(model) if model.is_file() else params["model"]}
    run_dir = runs.new_run_dir(root, fingerprint)
    inputs = {k: params[k] for k in file_params() if params.get(k) and Path(params[k]).exists()}
    runs.init_manifest(run_dir, wf["name"], params, inputs)
    manifest = runs.read_manifest(run_dir)
    manifest.update(workflow_path=wf["path"], stage_list=wf["stages"], timeouts=wf.get("timeouts", {}))
    if wf.get("baseline"):  # the resolved baseline (ci.baseline), which resume keeps
        manifest["baseline"] = wf["baseline"]
    fileio.write_json(run_dir / runs.MANIFEST, manifest)
    log.info("run folder: %s", run_dir)
    return run_dir, _execute(run_dir, wf, params, use_cache=use_cache, verbose=verbose, on_stage=on_stage)


def resume(run_dir: str | Path, *, use_cache: bool = True, verbose: bool = False, on_stage=None) -> tuple[Path, dict]:
    """Finish a run in its own folder: keep stages whose key and output hashes still verify, redo the rest."""
    run_dir = Path(run_dir).resolve()
    manifest = runs.read_manifest(run_dir)
    if not (run_dir / runs.MANIFEST).is_file() or "workflow_path" not in manifest:
        raise WorkflowError(f"{run_dir}: not a run folder this version can resume (no manifest.json with workflow_path); "
                            "start a new run with yolo-compile run")
    wf = load_workflow(manifest["workflow_path"])
    wf["stages"] = manifest.get("stage_list", wf["stages"])
    wf["timeouts"] = manifest.get("timeouts", {})
    params = {}
    for stage in wf["stages"]:  # the recorded parameters, re-typed exactly as the first run typed them
        cls = config_class(stage)
        given = {k: v for k, v in manifest["parameters"].items() if k in {f.name for f in dataclasses.fields(cls)}}
        cfg = build(cls, given)
        params.update({k: getattr(cfg, k) for k in given})
    from yolo_compile.pipeline import validate

    validate.check(wf, params)
    manifest.update(status="running", resumed_utc=runs.utc_now())
    fileio.write_json(run_dir / runs.MANIFEST, manifest)
    return run_dir, _execute(run_dir, wf, params, use_cache=use_cache, verbose=verbose, on_stage=on_stage, resuming=True)


def _execute(run_dir: Path, wf: dict, params: dict, *, use_cache: bool, verbose: bool, on_stage, resuming: bool = False) -> dict:
    """Run (or keep, or restore from cache) each stage in order; finish the manifest and the report."""
    from yolo_compile.pipeline import notebook
    from yolo_compile.report.html import write_report

    from yolo_compile.pipeline.kernels import KernelPool, set_nice

    cache = stagecache.StageCache(runs.cache_root(run_dir))
    status, upstream = "passed", {}
    pool = KernelPool(run_dir, execute.KERNEL_ARGS) if os.environ.get("YOLO_COMPILE_PREWARM", "1") != "0" else None
    stages = list(wf["stages"])
    # The kernels started ahead end with the loop, also when it is left by an exception (SIGTERM, Ctrl-C).
    # Each finished stage's notebook is rendered for the report at nice 19, on what the next stages leave idle.
    prerender = ThreadPoolExecutor(1, thread_name_prefix="yolo-compile-report", initializer=set_nice, initargs=(19,))
    current = {"stage": None}
    with fileio.file_lock(run_dir / ".lock", wait=False), contextlib.closing(pool) if pool else contextlib.nullcontext(), \
            prerender, execute.recorded(run_dir, current, pool):
        if pool and not resuming and stages:  # the first stage's kernel boots (and imports) while papermill is imported
            first_key, _ = stagecache.stage_key(stages[0], stage_params(stages[0], params), {})
            if not (use_cache and cache.lookup(first_key)):
                pool.prepare(stages[0])
        execute.import_before_threads()
        for i, stage in enumerate(stages):
            current["stage"] = stage
            sp = stage_params(stage, params)
            key, _ = stagecache.stage_key(stage, sp, upstream)
            prev = runs.read_manifest(run_dir)["stages"].get(stage, {})
            t0 = time.perf_counter()
            if resuming and prev.get("key") == key and prev.get("status") in ("passed", "skipped") and \
                    not stagecache.changed_outputs(run_dir, prev.get("outputs", {})) and prev.get("outputs"):
                info = {**prev, "kept": True}
                runs.record_stage(run_dir, stage, kept=True)
            else:
                info = _run_stage(run_dir, wf, stage, sp, key, cache if use_cache else None, verbose, pool, stages[i + 1:])
            info = {**info, "wall_seconds": round(time.perf_counter() - t0, 2), "run_dir": str(run_dir)}
            runs.record_stage(run_dir, stage, wall_seconds=info["wall_seconds"])
            touched = [f"{s}: {', '.join(bad)}" for s, outs in upstream.items()
                       if (bad := stagecache.changed_outputs(run_dir, outs, rehash=False))]
            if touched:
                err = f"stage {stage} touched earlier stages' outputs ({'; '.join(touched)}); they are final once written"
                runs.record_stage(run_dir, stage, status="failed", error=err)
                log.error(err)
                info.update(status="failed", error=err)
            if on_stage:
                on_stage(stage, info)
            if info.get("status") == "failed":
                status = "failed"
                break
            upstream[stage] = runs.read_manifest(run_dir)["stages"][stage]["outputs"]
            prerender.submit(_prerender, run_dir / notebook_for(stage).name)
        if pool:
            pool.close()  # now: the report below needs no kernel
        prerender.shutdown(wait=True)
        for stage, outs in upstream.items():  # the end of the run: everything is re-hashed
            bad = stagecache.changed_outputs(run_dir, outs)
            if bad:
                status = "failed"
                runs.record_stage(run_dir, stage, integrity=f"changed after the stage ended: {', '.join(bad)}")
        from ..ci.hooks import after_stages  # baseline regression gate, junit.xml

        after_stages(run_dir, wf, params, status)
        try:
            notebook.clean_run_notebooks(run_dir)  # per-cell timings and machine paths out, parameters kept
            write_report(run_dir, status)
        except Exception as e:  # a report that cannot render must not hide the run's own verdict
            log.error("report.html could not be written: %s: %s", type(e).__name__, e)
        return runs.finish_manifest(run_dir, status)


def _prerender(nb: Path) -> None:
    """Clean a finished stage's notebook and render it for the report now, while the next stages run."""
    from yolo_compile.pipeline import notebook
    from yolo_compile.report.notebooks import render_notebook

    try:
        if nb.is_file():
            notebook.clean_executed(nb)
            render_notebook(nb)
    except Exception as e:  # noqa: BLE001  the report renders it again at the end
        log.debug("prerender of %s: %s", nb.name, e)


def _run_stage(run_dir: Path, wf: dict, stage: str, sp: dict, key: str, cache, verbose: bool, pool=None,
               later: list[str] | tuple = ()) -> dict:
    """Restore a stage from the cache or execute its notebook; record and return its manifest entry."""
    nb = notebook_for(stage)
    out_nb = run_dir / nb.name
    jsp = {k: list(v) if isinstance(v, tuple) else v for k, v in sp.items()}
    # Every parameter goes to the notebook, defaults too: the notebook's own defaults are the reference detector's
    # (data/aoi/data.yaml...), which would leak into a run of another model that gives no data=.
    given = {**config_defaults(stage), **jsp}
    hit = cache.lookup(key) if cache else None
    if hit:
        cache.restore(hit, run_dir, stage, nb.name)
        outputs = stagecache.output_hashes(run_dir, stage)
        fileio.make_read_only(run_dir / stage)
        res = runs.read_result(run_dir, stage)
        return runs.record_stage(run_dir, stage, status=res["status"], notebook=nb.name, parameters=jsp, key=key,
                                 outputs=outputs, cached=True, kept=False, cached_from=hit.get("run_dir", ""), seconds=0.0,
                                 stage_seconds=res.get("seconds"), reason=res.get("reason", ""),
                                 failed_cell=None, error=None)["stages"][stage]
    shutil.rmtree(run_dir / stage, ignore_errors=True)  # a partial stage is redone from scratch
    out_nb.unlink(missing_ok=True)
    runs.record_stage(run_dir, stage, status="running", notebook=nb.name, parameters=jsp, key=key, cached=False,
                      kept=False, outputs={}, error=None, failed_cell=None)
    timeout = int(wf.get("timeouts", {}).get(stage, DEFAULT_TIMEOUT_S))
    t0 = time.perf_counter()
    km = pool.take(stage) if pool else None
    if pool and km is None:  # a kernel of our own (not papermill's): Ctrl-C can then end it
        km = pool.start(stage)
    if pool:
        pool.prepare(*([] if stage in TIMED else later))  # the next kernels boot while this one runs, unless it times
    if km is not None:
        execute.RUNNING.append(km)
    try:
        error, cell = execute.execute_notebook(nb, out_nb, {**given, "run_dir": str(run_dir)}, run_dir, timeout, verbose, km)
    finally:
        if km is not None:
            from yolo_compile.pipeline.kernels import shutdown

            execute.RUNNING.remove(km)
            shutdown(km)
    seconds = round(time.perf_counter() - t0, 2)
    result_path = run_dir / stage / "result.json"
    if error is None and not result_path.is_file():
        error = (f"the notebook ended without writing {stage}/result.json (sys.exit, a killed kernel or an early "
                 "return): the stage did not finish")
    if error is not None:
        log.error("stage %s failed%s: %s", stage, f" in cell {cell}" if cell else "", error)
        return runs.record_stage(run_dir, stage, status="failed", seconds=seconds, failed_cell=cell,
                                 error=error)["stages"][stage]
    res = runs.read_result(run_dir, stage)
    outputs = stagecache.output_hashes(run_dir, stage)
    fileio.make_read_only(run_dir / stage)
    skipped = [f for f in res.get("skipped", []) if isinstance(f, dict) and "file" in f]  # input files it could not use
    if skipped:
        log.warning("stage %s skipped %d input file(s): %s", stage, len(skipped),
                    ", ".join(f"{f['file']} ({f.get('reason', '')})" for f in skipped[:5]))
    entry = runs.record_stage(run_dir, stage, status=res["status"], seconds=seconds, stage_seconds=res.get("seconds"),
                              reason=res.get("reason", ""), outputs=outputs, skipped_files=skipped)["stages"][stage]
    if cache and res["status"] != "failed":
        try:
            cache.store(key, run_dir, stage, out_nb, outputs, res)
        except Exception as e:  # a full disk or a read-only cache costs speed next time, never this run
            log.warning("stage %s not stored in the stage cache: %s", stage, e)
    return entry
