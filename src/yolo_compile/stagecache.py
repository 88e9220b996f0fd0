"""Stage keys and the stage cache: one notion of "what a stage's outputs depend on", shared by the cache,
`resume` and the manifest.

A stage key is the sha256 of: the stage name, its typed parameters (less those that only say how it runs), the
sha256 of every input file or folder it reads (its path parameters), the output hashes of the earlier stages of
the workflow, the tool versions, the device, the preprocessing version and the package's own code. Equal keys
mean equal work, so a stage whose key is in the cache links (copies) the earlier outputs instead of running its
notebook.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from . import resources, runs

log = logging.getLogger(__name__)
KEY_VERSION = 1
PATH_PARAMS = ("model", "calib_dir", "eval_dir", "data", "timing_cache", "keep_float")
# Parameters that change how a stage runs, never what it writes: left out of its key, so a warm re-run that only
# changes them is a cache hit (the study on Ray gives the serial study's scales and scores: tests/cluster).
RUN_ONLY_PARAMS = ("study_workers",)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Return the sha256 of the package's sources and the stage notebooks (a code change invalidates the cache)."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    driver = {"cli.py", "workflow.py", "validate.py", "stagecache.py", "report.py", "archive.py"}  # shape no stage's output
    files = sorted(f for f in pkg.glob("*.py") if f.name not in driver) + sorted(resources.path("notebooks").glob("*.ipynb"))
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Return what the stage outputs depend on besides inputs: tools, device, preprocessing and code version."""
    from .images import PREPROCESS_VERSION

    dev = runs.device_info()
    return {"tools": runs.tool_versions(), "preprocess": PREPROCESS_VERSION, "code": code_version(),
            "device": {k: dev.get(k) for k in ("machine", "cpu", "cores", "gpus")},
            "assume_gpu": os.environ.get("YOLO_COMPILE_ASSUME_GPU", "")}


def input_digest(name: str, value: str) -> dict:
    """Return the sha256 of a path parameter's content: a file, a folder (listing of names and hashes) or a name."""
    p = Path(value)
    if name == "data" and p.is_file():
        # A dataset: its images and labels are inputs too (Ultralytics' label caches are not).
        return {"file": runs.sha256(p), "folder": _folder_digest(p.parent)}
    if p.is_file():
        return {"file": runs.sha256(p)}
    if p.is_dir():
        return {"folder": _folder_digest(p)}
    return {"name": str(value)}


def _folder_digest(folder: Path) -> str:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.endswith(".cache") and not f.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\0{runs.sha256(f)}\n".encode())
    return h.hexdigest()


def stage_key(stage: str, params: dict[str, Any], upstream: dict[str, dict]) -> tuple[str, dict]:
    """Return (key, what went into it) for a stage with these typed parameters after these earlier stages' outputs."""
    params = {k: v for k, v in runs.to_jsonable(params).items() if k not in RUN_ONLY_PARAMS}
    inputs = {k: input_digest(k, str(v)) for k, v in sorted(params.items()) if k in PATH_PARAMS and v}
    parts = {"version": KEY_VERSION, "stage": stage, "params": params, "inputs": inputs,
             "upstream": {s: {f: o["sha256"] for f, o in sorted(outs.items())} for s, outs in upstream.items()},
             **environment()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


def output_hashes(run_dir: str | Path, stage: str) -> dict[str, dict]:
    """Return {relative path: {sha256, bytes, mtime_ns}} for every file a stage wrote under run_dir/<stage>/."""
    run_dir = Path(run_dir)
    folder = run_dir / stage
    out = {}
    for f in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if f.is_file() and not f.name.startswith("."):
            st = f.stat()
            out[f.relative_to(run_dir).as_posix()] = {"sha256": runs.sha256(f), "bytes": st.st_size,
                                                      "mtime_ns": st.st_mtime_ns}
    return out


def changed_outputs(run_dir: str | Path, recorded: dict[str, dict], *, rehash: bool = True) -> list[str]:
    """Return the recorded outputs that are missing, rewritten (even with the same bytes) or changed."""
    run_dir = Path(run_dir)
    bad = []
    for rel, info in recorded.items():
        f = run_dir / rel
        if not f.is_file():
            bad.append(f"{rel} (missing)")
            continue
        st = f.stat()
        if "mtime_ns" in info and st.st_mtime_ns != info["mtime_ns"]:
            bad.append(f"{rel} (rewritten)")
        elif st.st_size != info["bytes"] or (rehash and runs.sha256(f) != info["sha256"]):
            bad.append(f"{rel} (changed)")
    return bad


class StageCache:
    """Content-addressed stage outputs under <cache root>/stages/<key>/ (files/, notebook.ipynb, entry.json)."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "stages"

    def _lock(self, key: str):
        return runs.file_lock(self.root / f"{key}.lock")

    def lookup(self, key: str) -> dict | None:
        """Return the cache entry for key (verified against its recorded hashes), or None."""
        entry = self.root / key
        with self._lock(key):
            meta = entry / "entry.json"
            if not meta.is_file():
                return None
            info = json.loads(meta.read_text())
            files = entry / "files"
            for rel, o in info["outputs"].items():
                f = files / rel
                if not f.is_file() or f.stat().st_size != o["bytes"] or runs.sha256(f) != o["sha256"]:
                    log.warning("stage cache entry %s is damaged (%s): ignoring it", key[:12], rel)
                    shutil.rmtree(entry, ignore_errors=True)
                    return None
            return {**info, "path": str(entry)}

    def restore(self, info: dict, run_dir: str | Path, stage: str, notebook_name: str) -> None:
        """Copy a cached stage's outputs and executed notebook (marked as reused) into run_dir."""
        run_dir, entry = Path(run_dir), Path(info["path"])
        shutil.rmtree(run_dir / stage, ignore_errors=True)
        for rel in info["outputs"]:
            dst = run_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with runs.atomic_path(dst) as tmp:
                shutil.copyfile(entry / "files" / rel, tmp)
        nb = entry / "notebook.ipynb"
        if nb.is_file():
            data = json.loads(nb.read_text())
            data.setdefault("metadata", {})["yolo_compile"] = {"reused": True, "stage_key": info["key"],
                                                               "executed_in": info.get("run_dir", "")}
            note = {"cell_type": "markdown", "id": f"{stage}-reused", "metadata": {},
                    "source": [f"**Reused from the stage cache** (stage key `{info['key'][:16]}`): this notebook ran in "
                               f"`{info.get('run_dir', '?')}` with the same inputs, parameters, tools and code."]}
            data["cells"] = [note] + [c for c in data.get("cells", []) if c.get("id") != f"{stage}-reused"]
            runs.write_text(run_dir / notebook_name, json.dumps(data, indent=1) + "\n")

    def store(self, key: str, run_dir: str | Path, stage: str, notebook: Path, outputs: dict, result: dict) -> None:
        """Keep a finished stage's outputs under its key (first writer wins; a half-written entry never shows)."""
        run_dir = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            if (self.root / key / "entry.json").is_file():
                return
            runs.check_free_space(self.root, sum(o["bytes"] for o in outputs.values()), "stage cache entry")
            shutil.rmtree(self.root / key, ignore_errors=True)  # a half entry (no entry.json) is replaced
            with runs.atomic_dir(self.root / key) as tmp:
                for rel in outputs:
                    (tmp / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run_dir / rel, tmp / "files" / rel)
                if notebook.is_file():
                    shutil.copyfile(notebook, tmp / "notebook.ipynb")
                runs.write_json(tmp / "entry.json", {
                    "key": key, "stage": stage, "status": result.get("status"), "reason": result.get("reason", ""),
                    "seconds": result.get("seconds"), "run_dir": str(run_dir), "stored_utc": time.time(),
                    "outputs": {rel: {"sha256": o["sha256"], "bytes": o["bytes"]} for rel, o in outputs.items()}})


# -- engines and TensorRT timing caches -----------------------------------------------------------------------
def tensorrt_identity(trt_version: str | None = None, gpu: str | None = None, compute_capability: str | None = None) -> dict:
    """Return what a TensorRT engine or timing cache is tied to: TensorRT version, GPU name, compute capability.

    Values not given are read from the installed tensorrt and nvidia-smi (None where absent).
    """
    if trt_version is None:
        trt_version = runs.tool_versions().get("tensorrt")
    if gpu is None or compute_capability is None:
        first = (runs.device_info().get("gpus") or [""])[0].split(",")
        gpu = gpu if gpu is not None else (first[0].strip() or None)
        compute_capability = compute_capability if compute_capability is not None else \
            (first[-1].strip() if len(first) >= 4 else None)
    return {"tensorrt": trt_version, "gpu": gpu, "compute_capability": compute_capability}


def identity_key(identity: dict, model_sha256: str | None = None) -> str:
    """Return the sha256 naming an engine (with the model hash) or a timing cache (without it) for this identity."""
    return hashlib.sha256(json.dumps({**identity, "model": model_sha256}, sort_keys=True).encode()).hexdigest()


def timing_cache_path(cache_root: str | Path, identity: dict) -> Path:
    """Return the shared timing cache for one TensorRT version and GPU: a mismatched cache is never loaded."""
    return Path(cache_root) / "tensorrt" / f"timing-{identity_key(identity)[:16]}.cache"


def check_engine(path: str | Path, recorded: dict, identity: dict) -> None:
    """Raise RunFolderError unless an engine file matches its manifest entry's hash and this TensorRT/GPU identity."""
    from .errors import RunFolderError

    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: engine missing; rebuild it with the build stage")
    digest = runs.sha256(path)
    if digest != recorded.get("engine_sha256"):
        raise RunFolderError(f"{path}: sha256 {digest[:16]} is not the one its manifest records "
                             f"({str(recorded.get('engine_sha256'))[:16]}); an engine is executable code: rebuild it")
    built = recorded.get("identity") or {}
    diff = [f"{k} {built.get(k)} != {identity.get(k)}" for k in ("tensorrt", "gpu", "compute_capability")
            if built.get(k) != identity.get(k)]
    if diff:
        raise RunFolderError(f"{path}: built for another TensorRT/GPU ({'; '.join(diff)}); rebuild it on this machine")
