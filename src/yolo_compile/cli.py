"""`yolo-compile`: run a workflow (a chain of stage notebooks) into a new run folder."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from yolo_compile import STAGES
from yolo_compile.config import parse_set
from yolo_compile.errors import CompileError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 passed, 1 a stage or gate failed, 2 bad input, 3 regression)."""
    ap = argparse.ArgumentParser(prog="yolo-compile", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a workflow: yolo-compile run default [--model M.pt] [--set key=value]")
    r.add_argument("workflow", help="a name in workflows/ (default, fp16) or a path to a workflow .yaml")
    r.add_argument("--model", help="Ultralytics .pt (or model .yaml); default: the reference AOI detector")
    r.add_argument("--calib", help="calibration image folder; default: calib_data/aoi")
    r.add_argument("--eval", help="held-out image folder for the compare stage; default: the reference val split")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any stage parameter (repeatable)")
    r.add_argument("--artifacts", "--out", help="where run folders go; default: artifacts/runs")
    from .pipeline.commands import add_commands as add_ci_commands, add_run_options

    add_run_options(r)  # --baseline, --regress-*-max, -q (CI use)
    for p in (r, sub.add_parser("resume", help="finish a run that died: yolo-compile resume RUN_DIR")):
        p.add_argument("-v", "--verbose", action="store_true", help="show papermill's log and the notebooks' output")
        p.add_argument("--no-cache", action="store_true", help="run every stage's notebook, ignoring the stage cache")
    sub.choices["resume"].add_argument("run_dir", help="the run folder to finish (artifacts/runs/<run>)")
    sub.add_parser("params", help="list every stage parameter with its type and default")
    mx = sub.add_parser("matrix", help="compile a models x targets x recipes matrix on Ray (yolo-compile[cluster])")
    mx.add_argument("file", help="matrix .yaml (models, targets, recipes, calib/eval/data, params, overrides)")
    mx.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else Ray starts embedded)")
    mx.add_argument("--workers", type=int, help="CPUs of the embedded Ray (default: all cores)")
    mx.add_argument("--artifacts", help="where run folders go; default: ./artifacts/runs")
    mx.add_argument("--shared", help="a folder every node can write: runs are written there instead of shipped back")
    mx.add_argument("--wait-for-gpu", action="store_true", help="queue TensorRT entries until a GPU node joins")
    q = sub.add_parser("qat", help="when PTQ cannot pass: fine-tune with fake-quant on a GPU, then compile the new .pt")
    q.add_argument("run_dir", help="the compile run whose gate failed (artifacts/runs/<run>): its model, images and recipe")
    q.add_argument("--data", required=True, help="Ultralytics data.yaml with a labeled 'train' split (not the gate's split)")
    q.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    q.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate (default 1e-4)")
    q.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    q.add_argument("--workers", type=int, default=8, help="data loader processes (default 8)")
    q.add_argument("--fraction", type=float, default=1.0, help="share of the train split to use (default 1)")
    q.add_argument("--calibration", default="run", help="run (the quantize stage's), max, entropy or percentile-<p>")
    q.add_argument("--calib", default="", help="the run's calibration images, where its cached array is gone")
    q.add_argument("--out", default="", help="folder for the checkpoint and qat.json (default artifacts/qat/<run>)")
    q.add_argument("--no-recalibrate", dest="recalibrate", action="store_false",
                   help="keep the first ranges for every epoch (default: reset them from the calibration images each epoch)")
    q.add_argument("--fused-kernels", action="store_true", help="ModelOpt's CUDA fake-quant kernels (built with nvcc)")
    from yolo_compile.report.archive import add_commands

    add_commands(sub)  # ls, diff, verify, gc, review
    add_ci_commands(sub)  # accept, plan; ls --html
    args = ap.parse_args(argv)
    if getattr(args, "handler", None):
        try:
            return args.handler(args)
        except CompileError as e:
            print(f"yolo-compile: {e}", file=sys.stderr)
            return 2
    verbose = getattr(args, "verbose", False)
    _quiet_logging(verbose)
    from yolo_compile.pipeline.workflow import config_class, resume, run_workflow

    if args.cmd == "params":
        for stage in STAGES:
            for f in dataclasses.fields(config_class(stage)):
                default = "(required)" if f.default is dataclasses.MISSING else repr(f.default)
                print(f"{stage:<11} {f.name:<24} {str(f.type):<18} {default}")
        return 0
    if args.cmd == "matrix":
        return _matrix(args)
    if args.cmd == "qat":
        return _qat(args)
    _stop_on_signals()
    try:
        kw = {"use_cache": not args.no_cache, "verbose": verbose, "on_stage": _print_stage}
        from .pipeline.commands import ci_overrides, quiet_stage_printer

        kw["on_stage"] = quiet_stage_printer(args, _print_stage)  # -q
        if args.cmd == "resume":
            run_dir, manifest = resume(args.run_dir, **kw)
        else:
            overrides = parse_set(args.set)
            for key, value in (("model", args.model), ("calib_dir", args.calib), ("eval_dir", args.eval)):
                if value:
                    overrides[key] = value
            overrides.update(ci_overrides(args))
            run_dir, manifest = run_workflow(args.workflow, overrides, args.artifacts, **kw)
    except CompileError as e:
        from .progress import stop_console

        stop_console()
        print(f"yolo-compile: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = getattr(e, "run_dir", None)
        print(f"interrupted: {where}\nresume with: yolo-compile resume {where}" if where else "interrupted", file=sys.stderr)
        return 130
    from .ci.hooks import on_console

    code = on_console(run_dir, manifest)  # vs baseline lines, step summary, exit 3 on a regression
    print(f"{manifest['status'] if code != 3 else 'regressed'}: {run_dir}/report.html")
    if manifest["status"] != "passed":
        _print_next_step(run_dir)
    return code


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop a compile: the runner marks it `interrupted` and kills its kernels."""
    import signal

    from yolo_compile.pipeline.execute import Interrupted

    def stop(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, stop)
        except (ValueError, OSError):  # not the main thread: leave the defaults
            pass


def _print_next_step(run_dir) -> None:
    """Print the compare stage's next step (the QAT command) when post-training quantization could not pass."""
    import json
    from pathlib import Path

    try:
        step = json.loads((Path(run_dir) / "compare" / "result.json").read_text()).get("next_step")
    except (OSError, ValueError):
        return
    if step:
        print(f"next step: {step}")


def _matrix(args) -> int:
    from yolo_compile.pipeline.matrix import run_matrix

    try:
        folder, result = run_matrix(args.file, address=args.address, artifacts=args.artifacts, workers=args.workers,
                                    shared=args.shared, wait_for_gpu=args.wait_for_gpu)
    except ImportError as e:
        print(f"yolo-compile: matrix needs Ray ({e}); pip install 'yolo-compile[cluster]'", file=sys.stderr)
        return 2
    except CompileError as e:
        print(f"yolo-compile: {e}", file=sys.stderr)
        return 2
    width = max(len(r["label"]) for r in result["runs"])
    for r in result["runs"]:
        drop = (r.get("summary") or {}).get("map_drop_points")
        extra = f"mAP drop {drop:.2f} pts" if isinstance(drop, (int, float)) else r.get("error", "")
        print(f"  {r['label']:<{width}}  {r['status']:<8} {extra}")
    print(f"matrix: {folder}/matrix.html")
    return 0 if all(r["status"] in ("passed", "reused") for r in result["runs"]) else 1


def _qat(args) -> int:
    from yolo_compile.qat.finetune import QatConfig, run

    try:
        res = run(QatConfig(run_dir=args.run_dir, train_data=args.data, out=args.out, epochs=args.epochs, lr=args.lr,
                            batch=args.batch, workers=args.workers, train_fraction=args.fraction, calibration=args.calibration, calib_dir=args.calib,
                            recalibrate=args.recalibrate, fused_kernels=args.fused_kernels))
    except CompileError as e:
        print(f"yolo-compile: {e}", file=sys.stderr)
        return 2
    print(f"QAT checkpoint: {res.checkpoint} ({res.epochs} epochs, {res.seconds.get('train_s', 0):.0f} s on {res.device})")
    print(f"compile it: {res.compile_command}")
    if res.reference_map50_95 is not None:
        print(f"judge its INT8 mAP50-95 against the original FP32 {res.reference_map50_95:.4f}: the new run's gate "
              "compares with the QAT checkpoint's own FP32")
    return 0


def _quiet_logging(verbose: bool) -> None:
    """One line per stage on the console; -v adds papermill's log. Kernel and ZMQ chatter stays out either way."""
    import warnings

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("papermill", "traitlets", "jupyter_client", "nbclient", "asyncio", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="(zmq|jupyter_client|nbclient|papermill|traitlets)")


def _headline(stage: str, info: dict, res: dict) -> str:
    """Return the one number worth seeing for a stage (size, images, drop, images/s), or its reason/error."""
    if info.get("error"):
        return str(info["error"])[:160]
    parts = []
    if stage == "export" and res.get("onnx_bytes"):
        parts.append(f"{res['onnx_bytes'] / 2**20:.1f} MB ONNX")
    if stage == "calibrate" and res.get("shape"):
        parts.append(f"{res['shape'][0]} images" + (f", {len(res['skipped'])} skipped" if res.get("skipped") else ""))
    if stage == "quantize" and "quantized_nodes" in res:
        parts.append(f"{len(res['quantized_nodes'])} INT8 nodes, {res.get('onnx_bytes', 0) / 2**20:.1f} MB")
    for k in ("map_drop", "speedup", "engine", "images_per_s"):
        if isinstance(res.get(k), (int, float, str)) and res.get(k) not in ("", None):
            parts.append(f"{k}={res[k]:.3g}" if isinstance(res[k], float) else f"{k}={res[k]}")
    if res.get("reason"):
        parts.append(str(res["reason"])[:120])
    return "; ".join(parts)


def _print_stage(stage: str, info: dict) -> None:
    """Print one stage's line: status, seconds, where it came from, headline."""
    import json
    from pathlib import Path

    res = {}
    run = info.get("run_dir")
    try:
        res = json.loads((Path(run) / stage / "result.json").read_text()) if run else {}
    except (OSError, ValueError):
        pass
    how = " (cached)" if info.get("cached") else " (kept)" if info.get("kept") else ""
    print(f"  {stage:<10} {str(info.get('status')) + how:<17} {info.get('wall_seconds', info.get('seconds', 0)):>6.1f} s  "
          f"{_headline(stage, info, res)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
