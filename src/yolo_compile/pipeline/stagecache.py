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

from yolo_compile import fileio, resources, runs
from yolo_compile.pipeline import registry

log = logging.getLogger(__name__)
KEY_VERSION = 1
# Parameters that change how a stage runs, never what it writes: left out of its key, so a warm re-run that only
# changes them is a cache hit (the study on Ray gives the serial study's scales and scores: tests/cluster).
RUN_ONLY_PARAMS = ("study_workers",)


PACKAGE = Path(__file__).resolve().parents[1]  # src/yolo_compile: every module below it, subpackages included
# Modules that shape no stage's output (the runner, validation, the cache itself, the report and the CLI): a change
# there keeps the cache. Paths relative to the package.
DRIVER = frozenset({"cli.py", "pipeline/workflow.py", "pipeline/validate.py", "pipeline/stagecache.py",
                    "report/html.py", "report/notebooks.py", "report/archive.py", "report/review.py",
                    "report/signing.py"})


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Return the sha256 of this installation's package sources and stage notebooks (see source_digest)."""
    return source_digest(PACKAGE, resources.path("notebooks"))


def source_digest(package: Path, notebooks: Path) -> str:
    """Return the sha256 of a package's sources (all subpackages, DRIVER left out) and its stage notebooks.

    A code change anywhere a stage's output comes from invalidates the cache; each file counts by its path in the
    package, so a module moved to another subpackage changes the key too.
    """
    h = hashlib.sha256()
    package, notebooks = Path(package), Path(notebooks)
    sources = sorted((f.relative_to(package).as_posix(), f) for f in package.rglob("*.py")
                     if "__pycache__" not in f.parts and f.relative_to(package).as_posix() not in DRIVER)
    for rel, f in sources + [(f"notebooks/{f.name}", f) for f in sorted(notebooks.glob("*.ipynb"))]:
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Return what the stage outputs depend on besides inputs: tools, device, preprocessing and code version."""
    from yolo_compile.images import PREPROCESS_VERSION

    dev = runs.device_info()
    return {"tools": runs.tool_versions(), "preprocess": PREPROCESS_VERSION, "code": code_version(),
            "device": {k: dev.get(k) for k in ("machine", "cpu", "cores", "gpus")},
            "assume_gpu": os.environ.get("YOLO_COMPILE_ASSUME_GPU", "")}


def input_digest(name: str, value: str) -> dict:
    """Return the sha256 of a path parameter's content: a file, a folder (listing of names and hashes) or a name."""
    p = Path(value)
    if name == "data" and p.is_file():
        # A dataset: its images and labels are inputs too (Ultralytics' label caches are not).
        return {"file": fileio.sha256(p), "folder": _folder_digest(p.parent)}
    if p.is_file():
        return {"file": fileio.sha256(p)}
    if p.is_dir():
        return {"folder": _folder_digest(p)}
    return {"name": str(value)}


def _folder_digest(folder: Path) -> str:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.endswith(".cache") and not f.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\0{fileio.sha256(f)}\n".encode())
    return h.hexdigest()


def stage_key(stage: str, params: dict[str, Any], upstream: dict[str, dict]) -> tuple[str, dict]:
    """Return (key, what went into it) for a stage with these typed parameters after these earlier stages' outputs."""
    params = {k: v for k, v in fileio.to_jsonable(params).items() if k not in RUN_ONLY_PARAMS}
    inputs = {k: input_digest(k, str(v)) for k, v in sorted(params.items()) if k in registry.path_params() and v}
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
            out[f.relative_to(run_dir).as_posix()] = {"sha256": fileio.sha256(f), "bytes": st.st_size,
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
        elif st.st_size != info["bytes"] or (rehash and fileio.sha256(f) != info["sha256"]):
            bad.append(f"{rel} (changed)")
    return bad


class StageCache:
    """Content-addressed stage outputs under <cache root>/stages/<key>/ (files/, notebook.ipynb, entry.json)."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "stages"

    def _lock(self, key: str):
        return fileio.file_lock(self.root / f"{key}.lock")

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
                if not f.is_file() or f.stat().st_size != o["bytes"] or fileio.sha256(f) != o["sha256"]:
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
            with fileio.atomic_path(dst) as tmp:
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
            fileio.write_text(run_dir / notebook_name, json.dumps(data, indent=1) + "\n")

    def store(self, key: str, run_dir: str | Path, stage: str, notebook: Path, outputs: dict, result: dict) -> None:
        """Keep a finished stage's outputs under its key (first writer wins; a half-written entry never shows)."""
        run_dir = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            if (self.root / key / "entry.json").is_file():
                return
            fileio.check_free_space(self.root, sum(o["bytes"] for o in outputs.values()), "stage cache entry")
            shutil.rmtree(self.root / key, ignore_errors=True)  # a half entry (no entry.json) is replaced
            with fileio.atomic_dir(self.root / key) as tmp:
                for rel in outputs:
                    (tmp / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run_dir / rel, tmp / "files" / rel)
                if notebook.is_file():
                    shutil.copyfile(notebook, tmp / "notebook.ipynb")
                fileio.write_json(tmp / "entry.json", {
                    "key": key, "stage": stage, "status": result.get("status"), "reason": result.get("reason", ""),
                    "seconds": result.get("seconds"), "run_dir": str(run_dir), "stored_utc": time.time(),
                    "outputs": {rel: {"sha256": o["sha256"], "bytes": o["bytes"]} for rel, o in outputs.items()}})
