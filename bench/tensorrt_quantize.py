"""target=tensorrt on a 500-image labeled set: the quantize stage of two code versions, back to back (issue 23).

    python bench/tensorrt_quantize.py --make-set                 # only generate build/bench_trt/aoi500-<seed>/
    python bench/tensorrt_quantize.py [--before REF] [--after REF] [--only before|after]

Each side is a fresh process with its own empty cache running its own code (git archive of REF; `--after` empty:
this tree): export and calibrate of the reference detector (defaults, untimed), then the quantize stage with
target=tensorrt and data=<the set>, timed. Both score on ONNX Runtime (TensorRT's reference arithmetic). Prints
seconds, candidates scored, the chosen recipe and its drop.
The labeled set is the project's own generator (the aoi scene, split 'val', the reference seed: frames 0-199 are
data/aoi/val itself, 200-499 more of the same stream): nothing downloaded, nothing committed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_line  # noqa: E402

OUT = REPO / "build" / "bench_trt"
SEED = 20261124
BEFORE = "1e0c4f6"  # main when issue 23 was filed (2026-12-01): the 'today' of its 1/4 goal

CHILD = r"""
import json, os, sys, time
import yolo_compile
if os.path.isdir(os.path.join(yolo_compile.__path__[0], "stages")):
    from yolo_compile.stages import calibrate, export, quantize
    from yolo_compile.pipeline.workflow import reference_defaults
else:  # the flat layout before the redesign (issue 22)
    from yolo_compile import calibrate, export, quantize
    from yolo_compile.workflow import reference_defaults
run_dir, data = sys.argv[1], sys.argv[2]
ref = reference_defaults()
export.run(export.ExportConfig(model=ref["model"]), run_dir)
calibrate.run(calibrate.CalibrateConfig(calib_dir=ref["calib_dir"]), run_dir)
t = time.perf_counter()
r = quantize.run(quantize.QuantizeConfig(target="tensorrt", data=data), run_dir)
s = time.perf_counter() - t
c = r.chosen
print("RESULT " + json.dumps({"seconds": round(s, 1), "calibration": r.calibration_method, "onnx": r.onnx,
      "drop_points": c.get("drop_points"), "noise": c.get("noise_points"), "why": c.get("why"),
      "scored": len([x for x in r.candidates if x.get("drop_points") is not None])}))
"""


def make_set(count: int = 500, seed: int = SEED) -> Path:
    """Generate (once) `count` labeled aoi frames under build/bench_trt/aoi<count>-<seed>/; return its data.yaml."""
    sys.path.insert(0, str(REPO / "src"))
    from yolo_compile.reference import tasks as ref

    root = OUT / f"aoi{count}-{seed}"
    yaml, manifest = root / "data.yaml", root / "val" / "manifest.json"
    if yaml.is_file() and manifest.is_file() and json.loads(manifest.read_text()).get("count") == count:
        return yaml
    t = time.perf_counter()
    ref.generate_split(root / "val", count, seed, labeled=True, split="val", workers=os.cpu_count() or 1,
                       progress=True, task="aoi")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(ref.get_task("aoi").class_names))
    yaml.write_text(f"# {count} generated aoi frames, seed {seed} (bench/tensorrt_quantize.py)\n"
                    f"train: val/images\nval: val/images\nnames:\n{names}")
    print(f"generated {count} labeled images in {time.perf_counter() - t:.1f} s: {yaml}")
    return yaml


def code_of(ref: str, base: Path) -> Path:
    """Return the src/ folder of a copy of the repository at git ref `ref` (git archive; no worktree)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = base / f"code-{sha}"
    dest.mkdir(parents=True)
    subprocess.run(f"git -C {REPO} archive {ref} | tar -x -C {dest}", shell=True, check=True, executable="/bin/bash")
    return dest / "src"


def side(label: str, src: Path, base: Path, data: Path) -> dict:
    """Run one side in a fresh process with an empty cache; return its RESULT plus wall and load."""
    run = base / label / "run"
    run.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(src), "YOLO_COMPILE_CACHE": str(base / label / "cache")}
    load0 = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", CHILD, str(run), str(data)], env=env, capture_output=True, text=True)
    (base / label / "log.txt").write_text(out.stdout + out.stderr)
    if out.returncode:
        sys.exit(f"{label}: failed (see {base / label / 'log.txt'}):\n{out.stderr[-3000:]}")
    res = json.loads(next(l for l in reversed(out.stdout.splitlines()) if l.startswith("RESULT "))[7:])
    return {"side": label, **res, "file": str(run / res["onnx"]), "load": f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-set", action="store_true", help="only generate the labeled set")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--before", default=BEFORE, help=f"git ref measured as 'before' (default {BEFORE})")
    ap.add_argument("--after", default="", help="git ref measured as 'after' (default: this tree)")
    ap.add_argument("--only", choices=("before", "after"))
    a = ap.parse_args()
    data = make_set(a.count)
    if a.make_set:
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    print(f"{machine_line()}; work folder {base}", flush=True)
    rows = []
    for label in ("before", "after"):
        if a.only and a.only != label:
            continue
        ref = a.before if label == "before" else a.after
        rows.append(side(label, code_of(ref, base) if ref else REPO / "src", base, data))
        print(json.dumps(rows[-1]), flush=True)
    print("| side | quantize s | candidates scored | chosen | drop, points (ours) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {r['seconds']} | {r['scored']} | {r['calibration']} | {r['drop_points']} |")
    if len(rows) == 2:
        print(f"after / before: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x the time")
    (base / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
