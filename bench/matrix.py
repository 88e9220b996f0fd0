#!/usr/bin/env python
"""Wall time of an 8-run compile matrix: serial `run`s vs `yolo-compile matrix` on embedded Ray with 1, 2, 4, 8 workers;
and of the compare stage's accuracy study, serial vs its variants on Ray (study_workers).

  python bench/matrix.py                 # the tiny test model at 64 px: 8 models (4 entropy, 4 max calibration)
  python bench/matrix.py --workers serial,1,2    # fewer points (the order they run in)
  python bench/matrix.py --workers serial,8:0,8  # 8:0: 8 workers, each run's libraries sized for the whole machine
  python bench/matrix.py --study-only --study-workers 2 --search-steps 1   # only the study (a short smoke run)

Each point starts from an empty artifacts folder and cache. Speedup is serial / matrix; efficiency is speedup /
min(workers, cores): the goal is >= 0.7 up to the core count. "run s" is the mean wall time of one run inside a point
(it grows when runs contend for cores); "cores busy" is the machine's CPU time over the point's wall time (what a
serial run already keeps busy bounds the speedup at cores / that).
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
# Ray workers and notebook kernels import this checkout's package too (not an installed or editable one elsewhere)
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.pop("YOLO_COMPILE_CACHE", None)  # each point's runs use their own artifacts/cache: nothing is warm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="serial,1,2,4,8",
                    help="points in the order they run: serial (8 plain runs) or a Ray worker count N, or N:T with T "
                         "threads a run (N alone: cores // N; N:0: the libraries' defaults, one thread a core each)")
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

    from yolo_compile.stages import compare
    from yolo_compile.errors import CompareError

    src, data = conftest.make_confident_run(checkpoint, sets["calib"], work / "confident")
    rows, results = [], []
    for n in [1] + [int(x) for x in args.study_workers.split(",") if int(x) > 1]:
        run = work / f"study{n}"
        shutil.copytree(src, run)
        cfg = compare.CompareConfig(eval_dir=str(sets["eval"]), eval_images=4, box_atol=1e3, score_atol=1.0, data=str(data),
                                    study="full", map_drop_max=0.05, search_steps=args.search_steps, study_workers=n)
        t0 = busy()
        try:
            compare.run(cfg, run)
        except CompareError:  # a failed gate still writes the study
            pass
        wall, load = time.perf_counter() - t0[0], cores_busy(t0)
        sens = json.loads((run / "compare" / "result.json").read_text())["sensitivity"]
        ran = sens.pop("ray", {})
        for k in ("apply", "next_step"):  # both name the run folder (study1, study2...), nothing else differs
            sens.get("search", {}).pop(k, None)
        results.append(sens)
        serial = rows[0][2] if rows else wall
        rows.append((f"study, {'serial' if n == 1 else f'Ray {n} workers'}", n, wall, serial / wall,
                     serial / wall / min(n, os.cpu_count() or 1), ran.get("variants", "-"), ran.get("speculative_unused", "-"),
                     load))
    same = all(r == results[0] for r in results)
    print(f"\ncompare stage, full study (tiny YOLOv8n at {conftest.IMGSZ} px, {sens.get('groups')} groups, search_steps "
          f"{args.search_steps}), {os.cpu_count()} cores, {os.uname().nodename}; results identical to serial: {same}\n")
    print("| mode | workers | wall s | speedup | efficiency | variants on Ray | searched ahead, unused | cores busy |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, n, wall, sp, eff, var, unused, load in rows:
        print(f"| {name} | {n} | {wall:.1f} | {sp:.2f}x | {eff:.2f} | {var} | {unused} | {load:.2f} |", flush=True)


def busy() -> tuple[float, float]:
    """Return (wall time, CPU seconds the whole machine has spent busy) now, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return time.perf_counter(), (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cores_busy(t0: tuple[float, float]) -> float:
    t1 = busy()
    return (t1[1] - t0[1]) / (t1[0] - t0[0])


# the first weight of each model: at or below 1 (on the lent GPU host, 2026-12-01, the runs of 1.05, 1.1 and 1.15 failed
# the box and score gate, p99 box error 91-224 px, and took 112-141 s against 33-42 s for 1.0, 0.95 and 0.9 that passed)
SCALES = (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86)


def bench_matrix(args, work: Path, sets: dict, a: Path) -> None:
    """Print the 8-run matrix serially and on Ray with each worker count.

    Eight distinct models (the tiny checkpoint with its first weight scaled), recipe mixed, calibration entropy
    for four and max for four: every run passes its gate and no two runs share a stage, so serial and matrix do
    the same work (a matrix task's stage cache is its own; serial runs would reuse each other's export and
    calibration of a repeated model).
    """
    import yaml

    import conftest
    from yolo_compile.pipeline import matrix
    from yolo_compile.pipeline.workflow import run_workflow

    import torch
    from ultralytics import YOLO

    models = []
    for i, scale in enumerate(SCALES):
        m = YOLO(str(a))
        with torch.no_grad():
            next(m.model.parameters()).mul_(scale)
        models.append(work / f"tiny_{i}.pt")
        m.save(str(models[-1]))
    spec = {"name": "bench", "models": [str(m) for m in models], "targets": ["cpu"],
            "recipes": [{"name": "mixed", "params": {"recipe": "mixed", "calibration_method": "entropy"}}],
            "overrides": [{"match": {"model": f"tiny_{i}"}, "params": {"calibration_method": "max"}} for i in range(4, 8)],
            "calib": str(sets["calib"]), "eval": str(sets["eval"]), "data": str(sets["data"]),
            "params": {"imgsz": conftest.IMGSZ, "batch_sizes": "1", "max_seconds": 0.3, "target": "cpu", "pytorch": False}}
    f = work / "matrix.yaml"
    f.write_text(yaml.safe_dump(spec))
    _, entries = matrix.load(f)
    rows: dict[str, tuple] = {}
    stages: dict[str, dict] = {}
    cores = os.cpu_count() or 1
    outcomes: dict[str, dict] = {}  # point -> {label: what must not depend on the point}
    for point in [x.strip() for x in args.workers.split(",") if x.strip()]:
        t0 = busy()
        folder = work / point.replace(":", "t") / "runs"
        if point == "serial":
            each, outcomes[point] = [], {}
            for e in entries:
                t = time.perf_counter()
                run_dir, manifest = run_workflow(e.workflow, dict(e.overrides), folder)
                each.append(time.perf_counter() - t)
                outcomes[point][e.label] = same_part(matrix.summarize(run_dir))
                print(f"serial {e.label}: {manifest['status']} in {each[-1]:.1f} s (at {time.perf_counter() - t0[0]:.1f} s)",
                      flush=True)
            rows[point] = ("serial run x8", 1, time.perf_counter() - t0[0], sum(each) / len(each), cores_busy(t0))
        else:
            import ray

            n, _, t = point.partition(":")
            n, threads = int(n), (int(t) if t else None)
            _, result = matrix.run_matrix(f, artifacts=folder, workers=n, threads=threads)
            wall, load = time.perf_counter() - t0[0], cores_busy(t0)
            ray.shutdown()
            outcomes[point] = {r["label"]: same_part(r.get("summary") or {}) for r in result["runs"]}
            print(f"Ray {point}: {result['threads_per_run'] or 'library default'} threads a run; " + ", ".join(
                f"{r['label'].split(' /')[0]} {r.get('status')} {r.get('seconds')} s" for r in result["runs"]), flush=True)
            run_s = sum(r.get("seconds") or 0 for r in result["runs"]) / len(result["runs"])
            rows[point] = (f"matrix, Ray {n} workers, {result['threads_per_run'] or 'all'} threads a run", n,
                           wall, run_s, load)
        stages[point] = stage_means(folder)
        first = next(iter(outcomes))
        print(f"{point}: every run passed: {all(o['status'] == 'passed' for o in outcomes[point].values())}; "
              f"gate, mAP and quantized model identical to {first}'s: {outcomes[point] == outcomes[first]}", flush=True)
        if outcomes[point] != outcomes[first]:
            for label, o in outcomes[point].items():
                if o != outcomes[first].get(label):
                    print(f"  {label}: {o} vs {outcomes[first].get(label)}")
        _report(rows, cores)
        names = list(next(iter(stages.values())))
        print("\nmean wall s of each stage of a run (what grows under contention)\n\n| point | " + " | ".join(names) +
              " |\n|---|" + "---|" * len(names))
        for key, means in stages.items():
            print(f"| {key} | " + " | ".join(f"{means.get(s, float('nan')):.1f}" for s in names) + " |", flush=True)


def same_part(summary: dict) -> dict:
    """Return what a run's outcome must not owe to how it was scheduled: status, gate, mAP, quantized model."""
    keys = ("status", "gate_passed", "map50_95_fp32", "map50_95_quantized", "quantized_sha256")
    return {k: summary.get(k) for k in keys}


def stage_means(root: Path) -> dict[str, float]:
    """Return {stage: mean wall seconds} over the run folders under root (from their manifests)."""
    walls: dict[str, list[float]] = {}
    for m in sorted(root.glob("*/manifest.json")):
        for stage, info in json.loads(m.read_text()).get("stages", {}).items():
            walls.setdefault(stage, []).append(float(info.get("wall_seconds") or 0))
    return {s: sum(v) / len(v) for s, v in walls.items()}


def _report(rows: dict, cores: int) -> None:
    """Print the matrix table so far (speedups against the serial point, once it has run)."""
    import conftest

    serial = rows["serial"][2] if "serial" in rows else float("nan")
    print(f"\n8-run matrix (tiny YOLOv8n at {conftest.IMGSZ} px, CPU target), {cores} cores, {os.uname().nodename}; "
          "run s: mean wall of one run inside the point; cores busy: machine CPU time / wall\n")
    print("| mode | workers | wall s | speedup | efficiency | run s | cores busy |\n|---|---|---|---|---|---|---|")
    for key in rows:
        name, n, wall, run_s, load = rows[key]
        sp = serial / wall
        print(f"| {name} | {n} | {wall:.1f} | {sp:.2f}x | {sp / min(n, cores):.2f} | {run_s:.1f} | {load:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
