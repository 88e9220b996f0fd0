#!/usr/bin/env python
"""Wall time of an 8-run compile matrix: serial `run`s vs `yolo-compile matrix` on embedded Ray with 1, 2, 4, 8 workers.

  python bench/matrix.py                 # the tiny test model at 64 px: 2 models x 2 recipes x 2 calibration methods
  python bench/matrix.py --workers 1,2   # fewer points

Each point starts from an empty artifacts folder and cache. Speedup is serial / matrix; efficiency is speedup /
min(workers, cores): the goal is >= 0.7 up to the core count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8")
    args = ap.parse_args()
    import conftest  # the tests' own small real model and images

    from yolo_compile import matrix
    from yolo_compile.workflow import run_workflow

    work = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    sets = {"calib": conftest.make_images(work / "calib", 10, 1), "eval": conftest.make_images(work / "eval", 4, 2),
            "data": conftest.make_labeled_split(work / "labeled", 6, 3)}

    a = conftest.make_tiny_checkpoint(work / "tiny_a.pt")
    import torch
    from ultralytics import YOLO

    m = YOLO(str(a))
    with torch.no_grad():
        next(m.model.parameters()).mul_(1.05)
    b = work / "tiny_b.pt"
    m.save(str(b))
    spec = {"name": "bench", "models": [str(a), str(b)], "targets": ["cpu"],
            "recipes": [{"name": f"{r}-{c}", "params": {"recipe": r, "calibration_method": c}}
                        for r in ("mixed", "int8") for c in ("entropy", "max")],
            "calib": str(sets["calib"]), "eval": str(sets["eval"]), "data": str(sets["data"]),
            "params": {"imgsz": conftest.IMGSZ, "batch_sizes": "1", "max_seconds": 0.3, "target": "cpu"}}
    f = work / "matrix.yaml"
    f.write_text(yaml.safe_dump(spec))
    _, entries = matrix.load(f)
    rows = []
    t0 = time.perf_counter()
    for e in entries:
        run_workflow(e.workflow, dict(e.overrides), work / "serial" / "runs")
    serial = time.perf_counter() - t0
    rows.append(("serial run x8", 1, serial, 1.0, 1.0))
    cores = os.cpu_count() or 1
    import ray

    for n in [int(x) for x in args.workers.split(",")]:
        out = work / f"ray{n}" / "runs"
        t0 = time.perf_counter()
        matrix.run_matrix(f, artifacts=out, workers=n)
        wall = time.perf_counter() - t0
        ray.shutdown()
        rows.append((f"matrix, Ray {n} workers", n, wall, serial / wall, serial / wall / min(n, cores)))
    print(f"\n8-run matrix (tiny YOLOv8n at {conftest.IMGSZ} px, CPU target), {cores} cores, {os.uname().nodename}\n")
    print("| mode | workers | wall s | speedup | efficiency |\n|---|---|---|---|---|")
    for name, n, wall, sp, eff in rows:
        print(f"| {name} | {n} | {wall:.1f} | {sp:.2f}x | {eff:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
