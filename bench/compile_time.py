"""Wall time per stage, cold and warm, and the notebook chain's overhead (papermill vs direct calls).

    python bench/compile_time.py [--write]       # the default compile of the reference detector (--write: into bench/README.md)
    python bench/compile_time.py --tiny          # a tiny YOLOv8n at 64 px (quick plumbing check)
    python bench/compile_time.py -- --set study=off   # anything after -- goes to `yolo-compile run`
    python bench/compile_time.py --vs-peer 3        # cold stages, imports warm, vs Ultralytics' INT8 export, paired

Cold: an empty stage and tensor cache. Warm: the same command again (every stage from the stage cache).
Direct: the same stages called from this Python process (config + stage.run) into another run folder, with
its own empty cache. Overhead = (cold through papermill - direct) / direct; goal <= 15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, table, tiny_args  # noqa: E402


def cli_run(workflow: str, args: list[str], artifacts: Path, cache: Path) -> tuple[float, dict, str]:
    env = {**os.environ, "YOLO_COMPILE_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "yolo_compile.cli", "run", workflow, *args, "--artifacts", str(artifacts)],
                         capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        sys.exit(f"compile refused: {out.stderr.strip()}")
    run = sorted(p for p in artifacts.iterdir() if p.is_dir())[-1]
    return wall, json.loads((run / "manifest.json").read_text()), out.stdout


def direct_run(workflow: str, args: list[str], artifacts: Path, cache: Path) -> tuple[float, dict]:
    """Run the same stages in this process: no kernels, no notebooks."""
    os.environ["YOLO_COMPILE_CACHE"] = str(cache)
    sys.path.insert(0, str(REPO / "src"))
    from yolo_compile import runs
    from yolo_compile.config import build, parse_set
    from yolo_compile.pipeline import registry
    from yolo_compile.pipeline.workflow import load_workflow, resolve_params

    ns = argparse.Namespace(set=[], model=None, calib=None, eval=None)
    it = iter(args)
    for a in it:
        if a == "--set":
            ns.set.append(next(it))
        elif a in ("--model", "--calib", "--eval"):
            setattr(ns, a[2:], next(it))
    overrides = parse_set(ns.set)
    overrides.update({k: v for k, v in (("model", ns.model), ("calib_dir", ns.calib), ("eval_dir", ns.eval)) if v})
    wf = load_workflow(workflow)
    params = resolve_params(wf, overrides)
    run_dir = runs.new_run_dir(artifacts, {"direct": True})
    from yolo_compile.runtimes import openvino

    openvino.use_openvino_cache(runs.cache_root(run_dir) / "openvino")  # as notebook.setup does in each kernel
    times = {}
    t0 = time.perf_counter()
    for stage in wf["stages"]:
        t = time.perf_counter()
        res = registry.get(stage).module.run(build(registry.config_class(stage), registry.stage_params(stage, params)),
                                             run_dir)
        times[stage] = round(time.perf_counter() - t, 2)
        if getattr(res, "status", "") == "failed":
            break
    return time.perf_counter() - t0, times


def vs_peer(workflow: str, args: list[str], tmp: Path, rounds: int) -> list[list[str]]:
    """Ours (every stage, direct, a new empty cache each time) and the peer's export, imports warm, A B A B.

    The issue-23 measure: cold stages with imports warm against Ultralytics' OpenVINO INT8 export of the same
    checkpoint on the same calibration images, in this one process (both import what they use before the clock).
    """
    import statistics

    os.environ.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", MPLBACKEND="Agg")
    import nncf  # noqa: F401  imports warm on both sides
    import onnxruntime  # noqa: F401
    import openvino  # noqa: F401
    import polygraphy.backend.onnxrt  # noqa: F401
    import torch  # noqa: F401
    from ultralytics import YOLO

    from cpu_target import DOMAINS, dataset_copy, domain_paths
    from yolo_compile import runs

    domain = next((d for d, w in DOMAINS.items() if w == workflow), "aoi")
    ref = domain_paths(domain)
    ours, peer, stages = [], [], []
    for i in range(rounds):
        total, times = direct_run(workflow, args, tmp / f"ours-{i}", tmp / f"cache-{i}")
        ours.append(total)
        stages.append(times)
        if i == 0:
            run = sorted(p for p in (tmp / "ours-0").iterdir() if p.is_dir())[-1]
            cal = runs.read_result(run, "calibrate")
            data = dataset_copy(tmp / "data", [Path(cal["calib_dir"]) / f["file"] for f in cal["files"]], Path(ref["data"]))
        pt = tmp / f"peer-{i}" / Path(ref["model"]).name  # its exports land beside the .pt
        pt.parent.mkdir()
        shutil.copy(ref["model"], pt)
        t0 = time.perf_counter()
        YOLO(str(pt)).export(format="openvino", int8=True, data=str(data), split="train", fraction=1.0, imgsz=640,
                             device="cpu")
        peer.append(time.perf_counter() - t0)
        print(f"round {i + 1}: ours {ours[-1]:.1f} s, peer {peer[-1]:.1f} s, ratio {ours[-1] / peer[-1]:.2f}x; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    ratios = [o / p for o, p in zip(ours, peer)]
    rows = [[stage, f"{statistics.median(t[stage] for t in stages):.1f}"] for stage in stages[0]]
    rows += [["ours: every stage, cold, imports warm", f"{statistics.median(ours):.1f} ({min(ours):.1f}-{max(ours):.1f})"],
             ["peer: Ultralytics format=openvino int8=True", f"{statistics.median(peer):.1f} ({min(peer):.1f}-{max(peer):.1f})"],
             ["ours / peer, pair by pair", f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}; goal <= 1.5x)"]]
    return rows


def first_run(workflow: str, args: list[str], tmp: Path) -> list[list[str]]:
    """What a newcomer pays: a fresh clone, `make setup-compile` (new venv), then the first compile in it.

    Then the same compile with a new empty stage cache (cold stages, imports warm: bytecode and the OS's file cache
    filled by the first run), then again (warm). The pip cache is the machine's own (as CI's is); the OS page cache
    is not dropped (that would disturb every other process on the machine).
    """
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", "--no-local", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    t0 = time.perf_counter()
    setup = subprocess.run(["make", "setup-compile"], cwd=clone, env=env, capture_output=True, text=True)
    setup_s = time.perf_counter() - t0
    if setup.returncode:
        sys.exit(f"make setup-compile failed in {clone}: {setup.stderr[-2000:]}")
    rows = [["make setup-compile (new venv)", f"{setup_s:.1f}", ""]]
    cli = [str(clone / ".venv" / "bin" / "yolo-compile"), "run", workflow, *args, "--artifacts", str(tmp / "first-runs")]
    for label, cache in (("first compile (new venv, empty caches, no __pycache__ but pip's)", "cache-1"),
                         ("cold stages, imports warm (new empty stage cache)", "cache-2"),
                         ("warm (every stage from the stage cache)", "cache-2")):
        t0 = time.perf_counter()
        out = subprocess.run(cli, cwd=clone, env={**env, "YOLO_COMPILE_CACHE": str(tmp / cache)}, capture_output=True,
                             text=True)
        wall = time.perf_counter() - t0
        rows.append([label, f"{wall:.1f}", "passed" if out.returncode == 0 else f"exit {out.returncode}"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default="default")
    ap.add_argument("--tiny", action="store_true", help="a tiny YOLOv8n at 64 px instead of the reference detector")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct (no papermill) run")
    ap.add_argument("--write", action="store_true", help="write the table into bench/README.md")
    ap.add_argument("--first-run", action="store_true",
                    help="a fresh clone: make setup-compile, the first compile in its new venv, cold-with-warm-imports, warm")
    ap.add_argument("--vs-peer", type=int, metavar="ROUNDS", default=0,
                    help="ours (direct, cold stages, imports warm) vs the peer's export, ROUNDS pairs A B A B")
    ap.add_argument("rest", nargs="*", help="after --: extra `yolo-compile run` arguments")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    args = (tiny_args(tmp / "inputs") if a.tiny else []) + a.rest
    if a.vs_peer:
        from _common import machine_line

        rows = vs_peer(a.workflow, args, tmp, a.vs_peer)
        print(machine_line() + f" Load average at the end: {os.getloadavg()[0]:.2f}.")
        print(table(rows, ["stage / side", "seconds: median (min-max)"]))
        return 0
    if a.first_run:
        from _common import machine_line

        rows = first_run(a.workflow, args, tmp)
        print(machine_line() + f" Load average at the end: {os.getloadavg()[0]:.2f}.")
        print(table(rows, ["step", "wall s", "status"]))
        if a.write:
            from _common import write_section

            md = ["| step | wall s | status |", "|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
            write_section("first_run", "First run: what a fresh clone pays before and during its first compile",
                          "python bench/compile_time.py --first-run --write", "\n".join([machine_line(), "", *md]))
        return 0
    cold_wall, cold, _ = cli_run(a.workflow, args, tmp / "runs", tmp / "cache")
    warm_wall, warm, warm_out = cli_run(a.workflow, args, tmp / "runs", tmp / "cache")
    direct_total, direct = (None, {}) if a.no_direct else direct_run(a.workflow, args, tmp / "direct", tmp / "cache-direct")
    rows = []
    for stage, info in cold["stages"].items():
        w = warm["stages"].get(stage, {})
        rows.append([stage, info.get("status"), f"{info.get('wall_seconds', info.get('seconds', 0)):.1f}",
                     f"{w.get('wall_seconds', w.get('seconds', 0)):.1f}" + (" (cached)" if w.get("cached") else ""),
                     f"{direct[stage]:.1f}" if stage in direct else "-"])
    cold_stages = sum(s.get("wall_seconds", s.get("seconds", 0)) for s in cold["stages"].values())
    rows.append(["all stages", cold["status"], f"{cold_stages:.1f}",
                 f"{sum(s.get('wall_seconds', 0) for s in warm['stages'].values()):.1f}",
                 f"{direct_total:.1f}" if direct_total else "-"])
    rows.append(["command wall", "", f"{cold_wall:.1f}", f"{warm_wall:.1f}", ""])
    header = ["stage", "status", "cold s", "warm s", "direct s"]
    print(table(rows, header))
    goals = [f"cold compile: {cold_wall:.1f} s wall (goal <= 60 s): {'met' if cold_wall <= 60 else 'MISSED'}",
             f"warm re-run: {warm_wall:.1f} s wall (goal <= 10 s): {'met' if warm_wall <= 10 else 'MISSED'}"]
    if direct_total:
        ratio = cold_stages / direct_total
        goals.append(f"notebook chain overhead: papermill {cold_stages:.1f} s / direct {direct_total:.1f} s = {ratio:.2f}x "
                     f"({(ratio - 1) * 100:+.0f} %, goal <= +15 %): {'met' if ratio <= 1.15 else 'MISSED'}")
    print("\n" + "\n".join(goals))
    print(f"machine: {os.cpu_count()} cores; folders under {tmp}")
    if a.write:
        from _common import machine_line, write_section

        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
        write_section("compile_time", "Compile time, cold and warm, and the notebook chain's overhead",
                      "python bench/compile_time.py --write", "\n".join([machine_line(), "", *md, "", *[f"- {g}" for g in goals]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
