#!/usr/bin/env python
"""Wall time of an 8-run compile matrix: serial `run`s vs `yolo-compile matrix` on embedded Ray with 1, 2, 4, 8 workers;
and of the compare stage's accuracy study, serial vs its variants on Ray (study_workers).

  python bench/matrix.py                 # the tiny test model at 64 px: 2 models x 2 recipes x 2 calibration methods
  python bench/matrix.py --workers 1,2   # fewer points
  python bench/matrix.py --study-only --study-workers 2 --search-steps 1   # only the study (a short smoke run)

Each point starts from an empty artifacts folder and cache. Speedup is serial / matrix; efficiency is speedup /
min(workers, cores): the goal is >= 0.7 up to the core count.
"""

from __future__ import annotations

import argparse
import json
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--study-workers", default="2", help="study_workers values timed against the serial study")
    ap.add_argument("--search-steps", type=int, default=3, help="recipe-search steps of the timed study")
    ap.add_argument("--study-only", action="store_true", help="skip the matrix; time only the study")
    ap.add_argument("--no-study", action="store_true", help="skip the study")
    args = ap.parse_args()
    import conftest  # the tests' own small real model and images

    work = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    sets = {"calib": conftest.make_images(work / "calib", 10, 1), "eval": conftest.make_images(work / "eval", 4, 2),
            "data": conftest.make_labeled_split(work / "labeled", 6, 3)}
    a = conftest.make_tiny_checkpoint(work / "tiny_a.pt")
    if not args.study_only:
        bench_matrix(args, work, sets, a)
    if not args.no_study:
        bench_study(args, work, sets, a)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def bench_study(args, work: Path, sets: dict, checkpoint: Path) -> None:
    """Print the compare stage's full study (sensitivity + recipe search) serial vs study_workers=N, same results."""
    import conftest

    from yolo_compile import compare
    from yolo_compile.errors import CompareError

    src, data = conftest.make_confident_run(checkpoint, sets["calib"], work / "confident")
    rows, results = [], []
    for n in [1] + [int(x) for x in args.study_workers.split(",") if int(x) > 1]:
        run = work / f"study{n}"
        shutil.copytree(src, run)
        cfg = compare.CompareConfig(eval_dir=str(sets["eval"]), eval_images=4, box_atol=1e3, score_atol=1.0, data=str(data),
                                    study="full", map_drop_max=0.05, search_steps=args.search_steps, study_workers=n)
        t0 = time.perf_counter()
        try:
            compare.run(cfg, run)
        except CompareError:  # a failed gate still writes the study
            pass
        wall = time.perf_counter() - t0
        sens = json.loads((run / "compare" / "result.json").read_text())["sensitivity"]
        ran = sens.pop("ray", {})
        sens.get("search", {}).pop("apply", None)
        results.append(sens)
        serial = rows[0][2] if rows else wall
        rows.append((f"study, {'serial' if n == 1 else f'Ray {n} workers'}", n, wall, serial / wall,
                     serial / wall / min(n, os.cpu_count() or 1), ran.get("variants", "-"), ran.get("speculative_unused", "-")))
    same = all(r == results[0] for r in results)
    print(f"\ncompare stage, full study (tiny YOLOv8n at {conftest.IMGSZ} px, {sens.get('groups')} groups, search_steps "
          f"{args.search_steps}), {os.cpu_count()} cores, {os.uname().nodename}; results identical to serial: {same}\n")
    print("| mode | workers | wall s | speedup | efficiency | variants on Ray | searched ahead, unused |\n|---|---|---|---|---|---|---|")
    for name, n, wall, sp, eff, var, unused in rows:
        print(f"| {name} | {n} | {wall:.1f} | {sp:.2f}x | {eff:.2f} | {var} | {unused} |")


def bench_matrix(args, work: Path, sets: dict, a: Path) -> None:
    """Print the 8-run matrix serially and on Ray with each worker count."""
    import yaml

    import conftest
    from yolo_compile import matrix
    from yolo_compile.workflow import run_workflow

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


if __name__ == "__main__":
    sys.exit(main())
