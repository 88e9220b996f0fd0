"""Files written so a reader never sees half of one: atomic files and folders, locks, JSON, sha256."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from yolo_compile.errors import RunFolderError

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
