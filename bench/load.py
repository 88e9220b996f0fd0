"""Concurrent and sequential compiles sharing one cache: collisions, torn files, statuses, peak memory.

    python bench/load.py                          # 4 default compiles at once, then 20 in sequence
    python bench/load.py --concurrent 2 --sequential 3 --tiny   # a quick run on a tiny YOLOv8n

Every run gets its own folder; all share one artifacts root and one cache (tensor cache and stage cache),
as CI jobs on one machine would. Afterwards each run folder is checked: its manifest names itself, every
output it records re-hashes to the recorded sha256 (a torn or overwritten file fails that), every .json
parses, every .npy/.onnx loads; every cache entry is checked the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, PeakMemory, table, tiny_args  # noqa: E402

sys.path.insert(0, str(REPO / "src"))


def one(workflow: str, args: list[str], artifacts: Path, cache: Path) -> dict:
    env = {**os.environ, "YOLO_COMPILE_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "yolo_compile.cli", "run", workflow, *args, "--artifacts", str(artifacts)],
                         capture_output=True, text=True, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith(("passed:", "failed:"))), "")
    return {"rc": out.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "run": line.split(": ", 1)[1].rsplit("/", 1)[0] if line else "", "stderr": out.stderr.strip()[-300:]}


def check_run(run: Path) -> list[str]:
    """Return the problems found in one run folder (empty: intact)."""
    import numpy as np

    from yolo_compile import fileio, runs

    problems = []
    try:
        m = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        return [f"{run.name}: manifest unreadable ({e})"]
    if Path(m.get("run_dir", "")).resolve() != run.resolve():
        problems.append(f"{run.name}: manifest names another run folder {m.get('run_dir')}")
    for rel, o in m.get("outputs", {}).items():
        f = run / rel
        if not f.is_file() or fileio.sha256(f) != o["sha256"]:
            problems.append(f"{run.name}/{rel}: differs from its manifest hash (torn or overwritten)")
    for f in run.rglob("*"):
        if f.name.startswith(".") and f.name != ".lock":
            problems.append(f"{run.name}/{f.relative_to(run)}: temporary file left behind")
        elif f.suffix == ".json":
            try:
                json.loads(f.read_text())
            except ValueError:
                problems.append(f"{run.name}/{f.relative_to(run)}: torn JSON")
        elif f.suffix == ".npy":
            np.load(f, mmap_mode="r")
        elif f.suffix == ".onnx":
            import onnx

            try:
                onnx.load(str(f), load_external_data=False)
            except Exception:
                problems.append(f"{run.name}/{f.relative_to(run)}: torn ONNX")
    return problems


def check_cache(cache: Path) -> list[str]:
    import numpy as np

    from yolo_compile.pipeline import stagecache

    problems = []
    for npy in (cache / "tensors").glob("*.npy"):
        try:
            meta = json.loads(npy.with_suffix(".json").read_text())
            arr = np.load(npy, mmap_mode="r")
            if arr.shape[0] != len(meta["kept"]):
                problems.append(f"cache {npy.name}: {arr.shape[0]} rows, its meta says {len(meta['kept'])}")
        except Exception as e:
            problems.append(f"cache {npy.name}: unreadable ({e})")
    sc = stagecache.StageCache(cache)
    for entry in (cache / "stages").glob("*"):
        if entry.is_dir() and not entry.name.startswith(".") and sc.lookup(entry.name) is None:
            problems.append(f"stage cache {entry.name[:12]}: damaged")
        if entry.name.startswith("."):
            problems.append(f"stage cache: temporary {entry.name} left behind")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--sequential", type=int, default=20)
    ap.add_argument("--workflow", default="default")
    ap.add_argument("--tiny", action="store_true", help="a tiny YOLOv8n at 64 px instead of the reference detector")
    ap.add_argument("rest", nargs="*", help="after --: extra `yolo-compile run` arguments")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    args = (tiny_args(tmp / "inputs") if a.tiny else []) + a.rest
    artifacts, cache = tmp / "runs", tmp / "cache"
    rows, results = [], {}
    with PeakMemory() as mem_c:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.concurrent) as pool:
            results["concurrent"] = list(pool.map(lambda _: one(a.workflow, args, artifacts, cache), range(a.concurrent)))
        wall_c = time.perf_counter() - t0
    with PeakMemory() as mem_s:
        t0 = time.perf_counter()
        results["sequential"] = [one(a.workflow, args, artifacts, cache) for _ in range(a.sequential)]
        wall_s = time.perf_counter() - t0
    folders = [r["run"] for rs in results.values() for r in rs]
    collisions = len(folders) - len(set(folders)) + sum(1 for f in folders if not f)
    problems = [p for f in set(folders) if f for p in check_run(Path(f))] + check_cache(cache)
    for phase, rs, wall, mem in (("concurrent", results["concurrent"], wall_c, mem_c),
                                 ("sequential", results["sequential"], wall_s, mem_s)):
        statuses = {}
        for r in rs:
            s = {0: "passed", 1: "failed", 2: "refused"}.get(r["rc"], f"rc={r['rc']}")
            statuses[s] = statuses.get(s, 0) + 1
        rows.append([phase, len(rs), ", ".join(f"{k} {v}" for k, v in statuses.items()), f"{wall:.0f}",
                     f"{min(r['seconds'] for r in rs):.0f}-{max(r['seconds'] for r in rs):.0f}" if rs else "-",
                     f"{mem.peak_gib:.2f}"])
    print(table(rows, ["phase", "runs", "statuses", "wall s", "per run s", "peak RSS GiB (all processes)"]))
    print(f"\ncollisions (shared or missing run folders): {collisions}")
    print(f"torn/overwritten files and cache problems: {len(problems)}")
    for p in problems[:20]:
        print("  " + p)
    for r in [r for rs in results.values() for r in rs if r["rc"] not in (0,)][:3]:
        print(f"  a run ended rc={r['rc']}: {r['stderr']}")
    print(f"machine: {os.cpu_count()} cores; folders under {tmp}")
    return 0 if not collisions and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
