"""Quantize-stage cost on this machine: ModelOpt PTQ wall time and peak memory by calibration size and method.

    python bench/quantize_cpu.py [--sizes 32,128] [--methods entropy,max] [--imgsz 640]

Each measurement runs in a fresh process (peak RSS is per process). Prints a table; targets are in TARGETS
and a miss exits 1. Runs on the reference detector and its calibration frames.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (method, images) -> (max seconds, max peak RSS GiB) on a 2-core CPU at 640 px
TARGETS = {("max", 32): (30, 2.5), ("entropy", 32): (60, 2.5), ("max", 128): (60, 3.0), ("entropy", 128): (150, 3.0)}

CHILD = r"""
import json, resource, sys, time
from yolo_compile.stages import calibrate
from yolo_compile.stages import quantize
run_dir, n, method = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calibrate.run(calibrate.CalibrateConfig(calib_dir=sys.argv[4], calib_images=n), run_dir)
t = time.perf_counter()
quantize.run(quantize.QuantizeConfig(target="cpu", calibration_method=method, quantizer="modelopt"), run_dir)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="32,128")
    ap.add_argument("--methods", default="max,entropy")
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    from yolo_compile.stages import export
    from yolo_compile.pipeline.workflow import reference_defaults

    ref = reference_defaults()
    base = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    export.run(export.ExportConfig(model=ref["model"], imgsz=args.imgsz), base)
    print(f"{'method':<8} {'images':>6} {'seconds':>8} {'peak GiB':>9} {'target':>14}  ok")
    missed = 0
    for method in args.methods.split(","):
        for n in map(int, args.sizes.split(",")):
            run_dir = Path(tempfile.mkdtemp(prefix=f"{method}-{n}-", dir=base))
            (run_dir / "export").symlink_to(base / "export")
            out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(n), method, ref["calib_dir"]],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            limit = TARGETS.get((method, n))
            ok = limit is None or (m["seconds"] <= limit[0] and m["peak_rss_gib"] <= limit[1])
            missed += not ok
            target = f"<={limit[0]}s,{limit[1]}G" if limit else "-"
            print(f"{method:<8} {n:>6} {m['seconds']:>8.1f} {m['peak_rss_gib']:>9.2f} {target:>14}  {'yes' if ok else 'NO'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
