"""Compile matrices on Ray: models x targets x recipes, each entry an ordinary `yolo-compile run` on a worker.

A matrix file is small and declarative::

    name: nightly
    workflow: default                 # default workflow of every entry
    models: [models/a.pt, {path: models/b.pt, calib: frames_b/, eval: held_out_b/, data: b/data.yaml}]
    targets: [cpu, tensorrt]
    recipes: [mixed, int8]            # values of the `recipe` parameter, or {name: ..., params: {...}}
    calib: frames/                    # shared inputs (a model entry may override them)
    eval: held_out/
    data: data.yaml
    params: {imgsz: 640}              # shared parameters
    overrides:                        # per-entry parameters, for entries matching every key given
      - {match: {target: tensorrt}, params: {batch_sizes: "1,8,32"}}

Relative paths are resolved against the matrix file's folder. Each entry runs as one Ray task calling the very
code path of `yolo-compile run` (`workflow.run_workflow`), into a folder on the worker; the finished run folder
comes back to the driver's `artifacts/runs/` through the object store (or is written to a shared path when one is
given), so no shared filesystem is needed. Ray is optional (`pip install 'yolo-compile[cluster]'`) and is
imported only here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from yolo_compile import fileio, runs
from yolo_compile.cluster import connect
from yolo_compile.errors import CompileError, MatrixError

log = logging.getLogger(__name__)
KEYS = {"name", "workflow", "models", "targets", "recipes", "calib", "eval", "data", "params", "overrides"}
TARGETS = ("cpu", "tensorrt", "auto")
GPU_RESOURCE = "tensorrt"  # custom resource a TensorRT-capable node advertises (ray start --resources '{"tensorrt": 1}')


@dataclasses.dataclass(frozen=True)
class Entry:
    """One compile of the matrix: a model, a target and a recipe, with every parameter resolved."""

    model: str
    target: str
    recipe: str
    workflow: str
    overrides: dict

    @property
    def label(self) -> str:
        return f"{Path(self.model).stem} / {self.target} / {self.recipe}"

    @property
    def key(self) -> str:
        """Identity of the entry (workflow, parameters, model bytes): equal keys compile the same thing."""
        model = Path(self.model)
        blob = {"workflow": self.workflow, "overrides": self.overrides,
                "model_sha256": fileio.sha256(model) if model.is_file() else self.model}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def needs_gpu(self) -> bool:
        return self.target == "tensorrt"


def load(path: str | Path) -> tuple[str, list[Entry]]:
    """Return (matrix name, entries) of a matrix .yaml; errors name the file, the key and the fix."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MatrixError(f"{path}: no such matrix file; pass a .yaml with models, targets and recipes")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MatrixError(f"{path}: not valid YAML ({e.__class__.__name__}); fix the syntax") from None
    if not isinstance(spec, dict):
        raise MatrixError(f"{path}: expected a mapping with models, targets, recipes")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise MatrixError(f"{path}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(KEYS))}")
    base = path.parent.resolve()

    def rel(value: Any) -> str:
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    models = spec.get("models") or []
    if not models:
        raise MatrixError(f"{path}: 'models' is empty; list at least one .pt")
    targets = [str(t) for t in spec.get("targets") or ["cpu"]]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise MatrixError(f"{path}: target(s) {', '.join(bad)} unknown; expected {', '.join(TARGETS)}")
    recipes = []
    for r in spec.get("recipes") or ["mixed"]:
        if isinstance(r, dict):
            if "name" not in r:
                raise MatrixError(f"{path}: a recipe mapping needs a 'name' (and optional 'params')")
            recipes.append((str(r["name"]), dict(r.get("params") or {"recipe": r["name"]})))
        else:
            recipes.append((str(r), {"recipe": str(r)}))
    shared = {k: rel(spec[k]) for k in ("calib", "eval", "data") if spec.get(k)}
    params = dict(spec.get("params") or {})
    overrides = spec.get("overrides") or []
    for o in overrides:
        if not isinstance(o, dict) or set(o) - {"match", "params"} or not isinstance(o.get("match", {}), dict):
            raise MatrixError(f"{path}: each override is {{match: {{model|target|recipe: value}}, params: {{...}}}}")
    entries = []
    for m, target, (recipe, rparams) in itertools.product(models, targets, recipes):
        m = m if isinstance(m, dict) else {"path": m}
        if "path" not in m:
            raise MatrixError(f"{path}: a model mapping needs 'path'")
        model = rel(m["path"])
        inputs = {**shared, **{k: rel(m[k]) for k in ("calib", "eval", "data") if m.get(k)}}
        over = {"model": model, "target": target, **params, **rparams}
        over.update({"calib_dir": inputs["calib"]} if "calib" in inputs else {})
        over.update({"eval_dir": inputs["eval"]} if "eval" in inputs else {})
        over.update({"data": inputs["data"]} if "data" in inputs else {})
        fields = {"model": Path(model).stem, "target": target, "recipe": recipe}
        for o in overrides:
            if all(str(fields.get(k, "")) == str(v) or (k == "model" and Path(str(v)).stem == fields["model"])
                   for k, v in (o.get("match") or {}).items()):
                over.update(o.get("params") or {})
        entries.append(Entry(model, target, recipe, str(spec.get("workflow", "default")), over))
    return str(spec.get("name") or path.stem), entries


def pack(run_dir: Path) -> bytes:
    """Return a run folder as an uncompressed tar (its files are already compressed or small)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(run_dir, arcname=run_dir.name)
    return buf.getvalue()


def unpack(blob: bytes, root: Path) -> Path:
    """Extract a packed run folder under root (refusing links and paths outside it); return the folder."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        names = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        if len(names) != 1:
            raise MatrixError(f"a returned run archive holds {len(names)} top folders; expected one")
        (name,) = names
        with tempfile.TemporaryDirectory(dir=root, prefix=".incoming-") as tmp:
            tar.extractall(tmp, filter="data")  # no links out, no absolute paths, no devices
            final = root / name
            os.replace(Path(tmp) / name, final)  # whole folder appears at once, never half-written
    return final


def compile_entry(entry: Entry, shared: str | None = None, threads: int = 0) -> dict:
    """Run one entry exactly as `yolo-compile run` does; return its outcome (and the packed folder unless shared).

    threads > 0: the run's stage kernels use that many threads each (ONNX Runtime, torch, BLAS), not one per core.
    """
    from yolo_compile.pipeline import threads as cpu_share
    from yolo_compile.pipeline.workflow import run_workflow

    t0 = time.perf_counter()
    out: dict[str, Any] = {"key": entry.key, "label": entry.label, "node": os.uname().nodename, "threads": threads or None}
    # the stage kernels inherit the share (Ray's own OMP_NUM_THREADS is 1); a Ray worker runs many tasks, so it is scoped
    with cpu_share.scoped(threads), tempfile.TemporaryDirectory(prefix="yolo-compile-matrix-") as tmp:
        root = Path(shared) if shared else Path(tmp) / "runs"
        try:
            run_dir, manifest = run_workflow(entry.workflow, dict(entry.overrides), root)
        except CompileError as e:  # bad input: a real failure, reported and never retried
            out.update(status="refused", error=str(e), seconds=round(time.perf_counter() - t0, 1))
            return out
        out.update(status=manifest["status"], run=run_dir.name, seconds=round(time.perf_counter() - t0, 1),
                   summary=summarize(run_dir))
        if not shared:
            out["archive"] = pack(run_dir)
    return out


def summarize(run_dir: Path) -> dict:
    """Return the matrix row of one run folder: gate, mAP drop, sizes, throughput, compile time."""
    def result(stage: str) -> dict:
        p = run_dir / stage / "result.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    manifest = runs.read_manifest(run_dir)
    quant, cmp, build, tput = result("quantize"), result("compare"), result("build"), result("throughput")
    acc = cmp.get("accuracy") or {}
    engine_rows = [r for r in tput.get("rows", []) if r.get("shipped") and r.get("batch") == 1]
    return {
        "status": manifest.get("status"), "gate_passed": cmp.get("passed"), "reasons": cmp.get("reasons", []),
        "map50_95_fp32": (acc.get("fp32") or {}).get("map50_95"), "map50_95_quantized": (acc.get("quantized") or {}).get("map50_95"),
        "map_drop_points": acc.get("drop_points"), "quantized_bytes": quant.get("onnx_bytes"),
        "quantized_sha256": quant.get("onnx_sha256"), "fp32_bytes": quant.get("fp32_bytes"),
        "engine_backend": build.get("backend"), "build_status": build.get("status"),
        "images_per_s_batch1": engine_rows[0].get("images_per_s") if engine_rows else None,
        "compile_seconds": round(sum(s.get("seconds") or 0 for s in manifest.get("stages", {}).values()), 1),
    }


def find_verified(root: Path, key: str) -> Path | None:
    """Return the newest passed run folder under root made for this entry key whose files still verify."""
    for run_dir in sorted(root.glob("*"), reverse=True):
        mfile = run_dir / runs.MANIFEST
        if not mfile.is_file():
            continue
        m = json.loads(mfile.read_text())
        if m.get("matrix", {}).get("key") != key or m.get("status") != "passed":
            continue
        if all((run_dir / rel).is_file() and fileio.sha256(run_dir / rel) == info["sha256"]
               for rel, info in m.get("outputs", {}).items()):
            return run_dir
    return None


def _tag(run_dir: Path, name: str, entry: Entry) -> None:
    """Record the matrix and entry a run belongs to in its manifest (so `ls` groups it and a re-run finds it)."""
    m = runs.read_manifest(run_dir)
    m["matrix"] = {"name": name, "key": entry.key, "model": entry.model, "target": entry.target, "recipe": entry.recipe}
    fileio.write_json(run_dir / runs.MANIFEST, m)


def check_resources(ray, entries: list[Entry], wait_for_gpu: bool) -> list[str]:
    """Return the reasons the cluster cannot run some entries (GPU entries on a cluster with no GPU node)."""
    res = ray.cluster_resources()
    gpu_ok = res.get("GPU", 0) >= 1 and res.get(GPU_RESOURCE, 0) >= 1
    if gpu_ok or wait_for_gpu or not any(e.needs_gpu() for e in entries):
        return []
    return [f"{e.label}: needs a node with a GPU and the '{GPU_RESOURCE}' resource (ray start --num-gpus 1 "
            f"--resources '{{\"{GPU_RESOURCE}\": 1}}'), and this cluster has none; add one, pass --wait-for-gpu, "
            f"or drop the tensorrt target" for e in entries if e.needs_gpu()]


def run_matrix(path: str | Path, *, address: str | None = None, artifacts: str | Path | None = None,
               workers: int | None = None, shared: str | None = None, wait_for_gpu: bool = False,
               retries: int = 2, threads: int | None = None) -> tuple[Path, dict]:
    """Run every entry of a matrix on Ray; return (matrix folder, matrix.json contents).

    threads: each run's thread share. None: this machine's cores // workers when Ray is embedded here, 1 on a
    cluster (the one CPU Ray counts each task for); 0: the libraries' defaults, every run sized for a whole machine.
    """
    from tqdm.auto import tqdm

    name, entries = load(path)
    root = Path(artifacts) if artifacts else Path.cwd() / "artifacts" / "runs"
    root.mkdir(parents=True, exist_ok=True)
    ray = connect(address, workers)
    if threads is None:  # embedded: this machine's cores shared among the CPUs Ray was started with
        cores = os.cpu_count() or 1
        embedded = not (address or os.environ.get("RAY_ADDRESS"))
        threads = max(1, cores // int(ray.cluster_resources().get("CPU", cores))) if embedded else 1
    refused = dict(zip([e.key for e in entries if e.needs_gpu()], check_resources(ray, entries, wait_for_gpu)))
    task = ray.remote(compile_entry)
    rows: dict[str, dict] = {}
    pending = {}
    t0 = time.perf_counter()
    for e in entries:
        if e.key in refused:
            rows[e.key] = {"key": e.key, "label": e.label, "status": "refused", "error": refused[e.key]}
            continue
        done = find_verified(root, e.key)
        if done is not None:
            rows[e.key] = {"key": e.key, "label": e.label, "status": "reused", "run": done.name, "summary": summarize(done)}
            continue
        opts = {"num_cpus": 1, "max_retries": retries, "retry_exceptions": False}
        if e.needs_gpu():
            opts.update(num_gpus=1, resources={GPU_RESOURCE: 1})
        pending[task.options(**opts).remote(e, shared, threads)] = e
    bar = tqdm(total=len(pending), desc=f"matrix {name}", unit="run")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        e = pending.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except Exception as err:  # retries exhausted (node lost each time) or a crash outside the compile
            out = {"key": e.key, "label": e.label, "status": "error", "error": f"{type(err).__name__}: {err}"}
        blob = out.pop("archive", None)
        if out.get("run"):
            run_dir = unpack(blob, root) if blob is not None else Path(shared) / out["run"]
            _tag(run_dir, name, e)
            out["run"] = run_dir.name
        rows[e.key] = {**out, "entry": {"model": e.model, "target": e.target, "recipe": e.recipe}}
        bar.update(1)
    bar.close()
    result = {"name": name, "matrix_file": str(Path(path).resolve()), "seconds": round(time.perf_counter() - t0, 1),
              "threads_per_run": threads or None,
              "cluster": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")},
              "runs": [rows[e.key] for e in entries]}
    folder = root.parent / "matrices" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{_slug(name)}"
    fileio.write_json(folder / "matrix.json", result)
    from ..ci.matrix_page import render  # the page in the report's summary style

    fileio.write_text(folder / "matrix.html", render(result, root))
    return folder, result


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:40] or "matrix"
