"""`yolo-compile plan`: the papermill command lines that reproduce `yolo-compile run`, and `finish` that seals them.

The plan is what the runner does, spelled as plain commands: one `papermill` line per stage (the stage notebook,
its executed copy in the run folder, `--cwd` the run folder, every parameter the runner would pass: strings raw
with `-r` so papermill guesses no type, numbers and booleans with `-p`, lists with `-y`), then
`yolo-compile finish RUN_DIR WORKFLOW`, which records each stage's status and output hashes in manifest.json and
writes junit.xml and report.html, as the runner does at the end of a run.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import fileio, resources, runs


def _param_args(name: str, value: Any) -> list[str]:
    """Return papermill's arguments for one parameter, typed exactly as the runner passes it."""
    if isinstance(value, str):
        return ["-r", name, value]
    if isinstance(value, bool):
        return ["-p", name, "True" if value else "False"]
    if isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf")):
        return ["-p", name, repr(value)]
    if isinstance(value, (list, tuple)):
        value = list(value)
    return ["-y", json.dumps({name: value})]


def run_dir_name(wf: dict, params: dict) -> str:
    """Return the run folder name `yolo-compile run` would claim now: <utc time>-<hash of config + model>."""
    model = Path(params["model"])
    fingerprint = {"workflow": wf["name"], "params": params,
                   "model_sha256": fileio.sha256(model) if model.is_file() else params["model"]}
    digest = hashlib.sha256(json.dumps(fileio.to_jsonable(fingerprint), sort_keys=True).encode()).hexdigest()[:8]
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def plan(workflow: str, overrides: dict, artifacts=None, run_dir: str | None = None) -> list[str]:
    """Return the shell lines (comments, mkdir, one papermill per stage, finish) that reproduce a run."""
    from . import validate
    from .registry import config_defaults, stage_params
    from .workflow import DEFAULT_TIMEOUT_S, load_workflow, notebook_for, resolve_params
    from ..ci.baseline import take

    wf = load_workflow(workflow)
    overrides = take(wf, overrides, artifacts)
    params = resolve_params(wf, overrides)
    validate.check(wf, params)
    run = Path(run_dir) if run_dir else resources.runs_root(artifacts) / run_dir_name(wf, params)
    run = run.resolve()
    q = shlex.quote
    lines = [f"# yolo-compile plan {wf['name']}: {len(wf['stages'])} stages as plain papermill commands",
             "set -e", f"mkdir -p {q(str(run))}"]
    for stage in wf["stages"]:
        nb = notebook_for(stage)
        # every parameter, defaults too, as the runner passes them: the notebooks' own defaults are the reference's
        sp = {**config_defaults(stage), **{k: list(v) if isinstance(v, tuple) else v
                                           for k, v in stage_params(stage, params).items()}, "run_dir": str(run)}
        timeout = int(wf.get("timeouts", {}).get(stage, DEFAULT_TIMEOUT_S))
        args = ["papermill", str(nb), str(run / nb.name), "--cwd", str(run), "-k", "python3", "--no-progress-bar",
                "--execution-timeout", str(timeout)]
        for k, v in sp.items():
            args += _param_args(k, v)
        lines.append(" ".join(q(a) for a in args))
    fin = ["yolo-compile", "finish", str(run), wf["path"]]
    if wf.get("baseline"):
        fin += ["--baseline", wf["baseline"]["run_dir"]] + [
            a for k in ("regress_map_max", "regress_latency_max", "regress_size_max")
            for a in (f"--{k.replace('_', '-')}", repr(wf["baseline"][k]))]
    lines.append(" ".join(q(a) for a in fin))
    return lines


def finish(run_dir: str | Path, workflow: str, baseline: dict | None = None) -> dict:
    """Seal a run folder the plan's papermill lines wrote: manifest (parameters, stages, hashes), junit, report."""
    from . import notebook, stagecache
    from ..report.html import write_report
    from .workflow import file_params, load_workflow, notebook_for
    from ..ci.hooks import after_stages

    run = Path(run_dir).resolve()
    wf = load_workflow(workflow)
    if baseline:
        wf["baseline"] = baseline
    params: dict[str, Any] = {}
    for stage in wf["stages"]:  # the parameters papermill injected, from each executed notebook's metadata
        nb = run / notebook_for(stage).name
        if nb.is_file():
            meta = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {})
            params.update({k: v for k, v in (meta.get("parameters") or {}).items() if k != "run_dir"})
    inputs = {k: params[k] for k in file_params() if params.get(k) and Path(str(params[k])).exists()}
    runs.init_manifest(run, wf["name"], params, inputs)
    manifest = runs.read_manifest(run)
    manifest.update(workflow_path=wf["path"], stage_list=wf["stages"], timeouts=wf.get("timeouts", {}),
                    made_by="yolo-compile plan (papermill)")
    if wf.get("baseline"):
        manifest["baseline"] = wf["baseline"]
    fileio.write_json(run / runs.MANIFEST, manifest)
    status = "passed"
    for stage in wf["stages"]:
        nb = notebook_for(stage).name
        res_path = run / stage / "result.json"
        if not res_path.is_file():
            runs.record_stage(run, stage, status="failed", notebook=nb if (run / nb).is_file() else None,
                              error=f"no {stage}/result.json: its papermill command failed or did not run")
            status = "failed"
            break
        res = json.loads(res_path.read_text())
        runs.record_stage(run, stage, status=res["status"], notebook=nb, seconds=res.get("seconds"),
                          reason=res.get("reason", ""), outputs=stagecache.output_hashes(run, stage))
        if res["status"] == "failed":
            status = "failed"
            break
    after_stages(run, wf, params, status)
    notebook.clean_run_notebooks(run)
    write_report(run, status)
    return runs.finish_manifest(run, status)
