"""The run folder: atomic writes, stage results, and the manifest (hashes, versions, device, status)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import RunFolderError

MANIFEST = "manifest.json"
TOOLS = ("torch", "torchvision", "ultralytics", "onnx", "onnxruntime", "onnxslim", "nvidia-modelopt",
         "polygraphy", "papermill", "tensorrt", "numpy", "opencv-python")
REPO_ROOT = Path(__file__).resolve().parents[2]
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run folder is for reviewers to read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it to `path` only if the block succeeds.

    A folder already at `path` stays (first writer wins: the rename fails and the new copy is dropped); remove it
    first to replace it. Nothing half-written ever shows under `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name[:12]}.", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if absent) for the block: runs sharing a cache wait.

    With wait=False a lock held elsewhere raises RunFolderError at once instead.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunFolderError(f"{path.parent}: in use by another yolo-compile process; wait for it to end") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_free_space(folder: str | Path, need_bytes: int, what: str = "file") -> None:
    """Raise RunFolderError unless folder's filesystem has need_bytes free (plus 64 MiB headroom)."""
    folder = Path(folder)
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if free < need_bytes + (64 << 20):
        raise RunFolderError(f"{folder}: {free / 2**20:.0f} MiB free, the {what} needs {need_bytes / 2**20:.0f} MiB; "
                             "free disk space or point YOLO_COMPILE_CACHE / --artifacts at a larger disk")


def make_read_only(folder: str | Path) -> None:
    """Remove write permission from every file under folder (a finished stage's outputs are final)."""
    for f in Path(folder).rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(f.stat().st_mode & ~0o222)


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (dataclasses and Paths allowed) and return the path."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def to_jsonable(obj: Any) -> Any:
    """Return obj as plain JSON types (dataclasses, tuples, Paths and numpy scalars converted)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    return obj


def sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root(run_dir: str | Path) -> Path:
    """Return the cache shared by runs: $YOLO_COMPILE_CACHE, else artifacts/cache beside artifacts/runs/<run>."""
    env = os.environ.get("YOLO_COMPILE_CACHE")
    return Path(env) if env else Path(run_dir).resolve().parent.parent / "cache"


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """Return (and create) the folder of one stage inside the run folder."""
    d = Path(run_dir) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_result(run_dir: str | Path, stage: str, result: Any) -> Path:
    """Write a stage's result dataclass as run_dir/<stage>/result.json and return that path."""
    return write_json(stage_dir(run_dir, stage) / "result.json", result)


def read_result(run_dir: str | Path, stage: str) -> dict:
    """Return an earlier stage's result.json as a dict, or raise RunFolderError saying what to run."""
    path = Path(run_dir) / stage / "result.json"
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist: run the '{stage}' stage into run folder {run_dir} first")
    return json.loads(path.read_text())


def require_passed(run_dir: str | Path, stage: str) -> dict:
    """Return an earlier stage's result, raising unless its status is 'passed'."""
    res = read_result(run_dir, stage)
    if res.get("status") != "passed":
        raise RunFolderError(
            f"{Path(run_dir) / stage / 'result.json'}: stage '{stage}' is {res.get('status')!r} "
            f"({res.get('reason', 'no reason recorded')}); fix it and run it again first"
        )
    return res


def new_run_dir(root: str | Path, fingerprint: dict) -> Path:
    """Create and return artifacts/runs/<utc time>-<short hash of config + model>/."""
    digest = hashlib.sha256(json.dumps(to_jsonable(fingerprint), sort_keys=True).encode()).hexdigest()[:8]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    Path(root).mkdir(parents=True, exist_ok=True)
    for suffix in range(10_000):  # mkdir is the claim: two runs started in the same second never share a folder
        run_dir = Path(root) / (f"{stamp}-{digest}" + (f"-{suffix}" if suffix else ""))
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RunFolderError(f"{root}: could not claim a new run folder for {stamp}-{digest}")


def tool_versions() -> dict[str, str | None]:
    """Return the installed version of each tool the pipeline uses (None where absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """Return the host's CPU, core count, memory and GPUs (via nvidia-smi where present)."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu": _cpu_model(), "cores": os.cpu_count(), "int8_isa": int8_isa()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        info["gpus"] = [line.strip() for line in smi.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> set[str]:
    """Return the CPU feature flags from /proc/cpuinfo (empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# oneDNN's ISA names, lowest first: ONEDNN_MAX_CPU_ISA caps what OpenVINO's CPU plugin (and oneDNN) may use.
_ONEDNN_ISA = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX")


def int8_isa() -> str:
    """Return the CPU's INT8 dot-product instruction set, as oneDNN will use it: AMX, AVX512-VNNI, AVX-VNNI or AVX2.

    Every CPU figure names it: INT8 speed, and before the overflow fix INT8 accuracy on OpenVINO, depend on it.
    ONEDNN_MAX_CPU_ISA (e.g. AVX2, to reproduce a CPU without VNNI on one with it) caps the answer, as it caps oneDNN.
    """
    flags = cpu_flags()
    if not flags and platform.machine() not in ("x86_64", "AMD64"):
        return platform.machine() or "unknown"
    found = ("AMX" if "amx_int8" in flags else "AVX512-VNNI" if "avx512_vnni" in flags else
             "AVX-VNNI" if "avx_vnni" in flags else "AVX2" if "avx2" in flags else "SSE")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap in _ONEDNN_ISA:
        rank = _ONEDNN_ISA.index(cap)
        limit = ("AMX" if rank >= _ONEDNN_ISA.index("AVX512_CORE_AMX") else
                 "AVX512-VNNI" if rank >= _ONEDNN_ISA.index("AVX512_CORE_VNNI") else
                 "AVX-VNNI" if rank >= _ONEDNN_ISA.index("AVX2_VNNI") and cap != "AVX512_CORE" else
                 "AVX2" if rank >= _ONEDNN_ISA.index("AVX2") else "SSE")
        order = ("SSE", "AVX2", "AVX-VNNI", "AVX512-VNNI", "AMX")
        if order.index(limit) < order.index(found):
            return f"{limit} (capped by ONEDNN_MAX_CPU_ISA={cap})"
    return found


def git_commit() -> str | None:
    """Return the repository's HEAD commit (with '-dirty' if the tree has changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_manifest(run_dir: str | Path) -> dict:
    """Return the run's manifest.json (an empty skeleton where none exists yet)."""
    path = Path(run_dir) / MANIFEST
    if path.is_file():
        return json.loads(path.read_text())
    return {"run_dir": str(run_dir), "stages": {}}


def init_manifest(run_dir: str | Path, workflow: str, params: dict, inputs: dict[str, str]) -> dict:
    """Write the manifest's opening state: workflow, parameters, inputs (with sha256), tools, device, git."""
    manifest = {
        "run_dir": str(Path(run_dir).resolve()),
        "workflow": workflow,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "parameters": to_jsonable(params),
        "inputs": {k: file_entry(v) for k, v in inputs.items()},
        "tools": tool_versions(),
        "device": device_info(),
        "git_commit": git_commit(),
        "lock": lock_entry(),
        "stages": {},
    }
    write_json(Path(run_dir) / MANIFEST, manifest)
    return manifest


def lock_entry() -> dict | None:
    """Return the dependency lock (constraints.txt) this checkout installs from, with its sha256; None outside one."""
    lock = REPO_ROOT / "constraints.txt"
    if not lock.is_file() or not (REPO_ROOT / "pyproject.toml").is_file():
        return None
    return {"file": "constraints.txt", "sha256": sha256(lock)}


def file_entry(path: str | Path) -> dict:
    """Return {path, sha256, bytes} for a file, or {path, files: n, sha256 of listing} for a folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        listing = "\n".join(f"{f.relative_to(p)} {sha256(f)}" for f in files)
        return {"path": str(p), "files": len(files), "sha256": hashlib.sha256(listing.encode()).hexdigest()}
    if p.is_file():
        return {"path": str(p), "sha256": sha256(p), "bytes": p.stat().st_size}
    return {"path": str(p), "missing": True}


def record_stage(run_dir: str | Path, stage: str, **fields: Any) -> dict:
    """Merge fields into manifest['stages'][stage] and rewrite the manifest atomically."""
    manifest = read_manifest(run_dir)
    manifest.setdefault("stages", {}).setdefault(stage, {}).update(to_jsonable(fields))
    write_json(Path(run_dir) / MANIFEST, manifest)
    return manifest


def finish_manifest(run_dir: str | Path, status: str) -> dict:
    """Record the run's final status and the sha256 of every file the run wrote."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    manifest["status"] = status
    manifest["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["outputs"] = {
        str(f.relative_to(run_dir)): {"sha256": sha256(f), "bytes": f.stat().st_size}
        for f in sorted(run_dir.rglob("*"))
        if f.is_file() and f.name not in (MANIFEST,) and not f.name.startswith(".")
    }
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def utc_now() -> str:
    """Return the current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Timer:
    """Context manager measuring wall seconds in .seconds."""

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
