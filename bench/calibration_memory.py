"""Peak anonymous memory of calibrate + quantize by calibration size, as ratios to the smallest size.

    python bench/calibration_memory.py [--sizes 128,512,1024] [--method max] [--write]

RssAnon (sampled every 20 ms in the child), not RSS: touched pages of the memory-mapped image cache count in
RSS but are not held memory. Each size runs in a fresh process. The reference calibration folder holds fewer
images than the largest size, so its frames are repeated under new names (the cache keys by content, so the
preprocessing cost is the same as for distinct frames). Goal: 1024 images <= 1.2x of 128.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.2

CHILD = r"""
import json, sys, threading, time
peak = [0]
def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
def watch():
    while True:
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
from yolo_compile.stages import calibrate
from yolo_compile.stages import quantize
run_dir, n, method, folder, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
base = rss_anon()
t = time.perf_counter()
calibrate.run(calibrate.CalibrateConfig(calib_dir=folder, calib_images=n), run_dir)
quantize.run(quantize.QuantizeConfig(target="cpu", calibration_method=method, quantizer="modelopt"), run_dir)
time.sleep(0.05)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_anon_gib": peak[0] / 2**30, "start_anon_gib": base / 2**30}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,512,1024")
    ap.add_argument("--method", default="max")
    ap.add_argument("--write", action="store_true", help="write the table into bench/README.md")
    args = ap.parse_args()
    import os

    from yolo_compile import images
    from yolo_compile.stages import export
    from yolo_compile.pipeline.workflow import reference_defaults

    sizes = [int(s) for s in args.sizes.split(",")]
    ref = reference_defaults()
    base = Path(tempfile.mkdtemp(prefix="bench-calmem-"))
    export.run(export.ExportConfig(model=ref["model"]), base / "export-run")
    frames = images.list_images(ref["calib_dir"])
    folder = base / "frames"
    folder.mkdir()
    for i in range(max(sizes)):
        src = frames[i % len(frames)]
        (folder / f"{i:05d}{src.suffix}").symlink_to(src)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "YOLO_COMPILE_CACHE": str(base / "cache")}
    print(f"{'images':>6} {'peak RssAnon GiB':>17} {'ratio':>6} {'seconds':>8}")
    first, md = None, ["| calibration images | peak anonymous memory GiB | ratio to the first | seconds |", "|---|---|---|---|"]
    for n in sizes:
        run_dir = base / f"run-{n}"
        run_dir.mkdir()
        (run_dir / "export").symlink_to(base / "export-run" / "export")
        out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(n), args.method, str(folder),
                              str(base / "cache")], capture_output=True, text=True, env=env)
        if out.returncode:
            print(out.stderr[-2000:])
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        first = first or r["peak_anon_gib"]
        print(f"{n:>6} {r['peak_anon_gib']:>17.2f} {r['peak_anon_gib'] / first:>6.2f} {r['seconds']:>8.1f}")
        md.append(f"| {n} | {r['peak_anon_gib']:.2f} | {r['peak_anon_gib'] / first:.2f} | {r['seconds']:.1f} |")
        last = r["peak_anon_gib"] / first
    verdict = f"goal: {max(sizes)} images <= {GOAL}x of {sizes[0]} -> {'met' if last <= GOAL else 'MISSED'}"
    print(verdict)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import machine_line, write_section

        write_section("calibration_memory", f"Calibration memory (calibrate + quantize, ModelOpt {args.method})",
                      "python bench/calibration_memory.py --write",
                      "\n".join([machine_line(), "", *md, "", f"- {verdict}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
