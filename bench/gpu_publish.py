"""Compile a detector up to the engine in-process, then run notebooks/06_throughput.ipynb through papermill.

    python bench/gpu_publish.py --model models/aoi_yolov8n.pt --run-dir /tmp/runs/aoi [--imgsz 640]

Stages 1-3 and 5 run as plain calls (compare is left out: this run is about speed, not accuracy); stage 6
runs as the notebook a reviewer reads, then the run's report.html is written. Used for docs/h100-throughput/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import papermill as pm

from yolo_compile import runs
from yolo_compile.stages import build
from yolo_compile.stages import calibrate
from yolo_compile.stages import export
from yolo_compile.stages import quantize
from yolo_compile.report.html import write_report
from yolo_compile.pipeline.workflow import notebook_for, reference_defaults


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--max-seconds", type=float, default=3.0)
    args = ap.parse_args()
    ref = reference_defaults()
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {"model": args.model, "imgsz": args.imgsz, "target": "cpu", "recipe": "mixed",
              "calib_images": args.calib_images, "batch_sizes": args.batch_sizes}
    inputs = {k: v for k, v in {"model": args.model, "calib_dir": ref["calib_dir"], "eval_dir": ref["eval_dir"]}.items()
              if Path(v).exists()}
    runs.init_manifest(run_dir, "gpu-throughput", params, inputs)
    steps = [("export", lambda: export.run(export.ExportConfig(model=args.model, imgsz=args.imgsz), run_dir)),
             ("calibrate", lambda: calibrate.run(calibrate.CalibrateConfig(calib_dir=ref["calib_dir"],
                                                                         calib_images=args.calib_images), run_dir)),
             ("quantize", lambda: quantize.run(quantize.QuantizeConfig(target="cpu", recipe="mixed"), run_dir)),
             ("build", lambda: build.run(build.BuildConfig(target="cpu"), run_dir))]
    for stage, step in steps:
        t0 = time.perf_counter()
        res = step()
        runs.record_stage(run_dir, stage, status=res.status, seconds=round(time.perf_counter() - t0, 2))
        print(f"{stage}: {res.status} ({time.perf_counter() - t0:.1f} s)", flush=True)
    nb = notebook_for("throughput")
    t0 = time.perf_counter()
    pm.execute_notebook(str(nb), str(run_dir / nb.name), kernel_name="python3", progress_bar=False,
                        parameters={"run_dir": str(run_dir), "eval_dir": ref["eval_dir"],
                                    "batch_sizes": [int(b) for b in args.batch_sizes.split(",")],
                                    "max_seconds": args.max_seconds})
    res = runs.read_result(run_dir, "throughput")
    runs.record_stage(run_dir, "throughput", status=res["status"], seconds=round(time.perf_counter() - t0, 2),
                      notebook=nb.name)
    write_report(run_dir, res["status"])
    runs.finish_manifest(run_dir, res["status"])
    print((run_dir / res["table"]).read_text())
    return 0 if res["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
