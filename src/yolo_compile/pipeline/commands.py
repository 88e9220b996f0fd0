"""The CLI's CI commands and options: accept, plan, finish, `ls --html`, `run --baseline ... -q`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ci import EXIT_PASSED

_REGRESS = (("--regress-map-max", "largest mAP50-95 drop against the baseline, points (default 0.5, beyond 2x noise)"),
            ("--regress-latency-max", "largest latency ratio new/baseline (default 1.25)"),
            ("--regress-size-max", "largest size ratio new/baseline (default 1.10)"))


def add_baseline_options(p: argparse.ArgumentParser) -> None:
    """--baseline and the three regress_* thresholds."""
    p.add_argument("--baseline", metavar="RUN|DIR|accepted",
                   help="gate against an earlier run (a name under the runs folder, a run folder, or the accepted one); "
                        "exit 3 on a regression")
    for flag, text in _REGRESS:
        p.add_argument(flag, type=float, help=text)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The run command's CI options."""
    add_baseline_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final line (and regressions)")


def ci_overrides(args: argparse.Namespace) -> dict:
    """Return --baseline and --regress-* as the keys ci.baseline.take() reads."""
    out = {}
    if getattr(args, "baseline", None):
        out["baseline"] = args.baseline
    for flag, _ in _REGRESS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    return out


def quiet_stage_printer(args: argparse.Namespace, printer):
    """Return the per-stage printer, or None with -q; without -q, long stages' progress shows while they run."""
    if getattr(args, "quiet", False):
        return None
    from ..progress import start_console

    watcher = start_console()

    def on_stage(stage: str, info: dict) -> None:
        watcher.poll()
        watcher.clear()
        printer(stage, info)

    return on_stage


def _overrides(args) -> dict:
    from ..config import parse_set

    over = parse_set(args.set)
    for key, value in (("model", args.model), ("calib_dir", args.calib), ("eval_dir", args.eval)):
        if value:
            over[key] = value
    return {**over, **ci_overrides(args)}


def cmd_plan(args) -> int:
    """Print the papermill lines that reproduce `yolo-compile run` with the same arguments."""
    from .plan import plan

    print("\n".join(plan(args.workflow, _overrides(args), args.artifacts, args.run_dir)))
    return EXIT_PASSED


def cmd_finish(args) -> int:
    """Seal a run folder written by a plan's papermill lines; exit as `run` would."""
    from .. import resources
    from ..ci.baseline import take
    from ..ci.hooks import on_console
    from .plan import finish

    wf: dict = {}
    take(wf, ci_overrides(args), resources.runs_root(Path(args.run_dir).resolve().parent))
    manifest = finish(args.run_dir, args.workflow, wf.get("baseline"))
    code = on_console(Path(args.run_dir), manifest)
    print(f"{manifest['status'] if code != 3 else 'regressed'}: {Path(args.run_dir).resolve()}/report.html")
    return code


def cmd_accept(args) -> int:
    """Record a run as the accepted baseline."""
    from .. import resources
    from ..ci.baseline import accept

    root = resources.runs_root(args.artifacts)
    path = accept(Path(args.run) if Path(args.run).is_dir() else root / args.run, root)
    print(f"accepted: {Path(args.run).name} ({path}); gate later runs with --baseline accepted")
    return EXIT_PASSED


def cmd_ls(args) -> int:
    """`ls`, and with --html the history page of the runs."""
    from ..report.archive import cmd_ls as plain

    code = plain(args)
    if code == 0 and getattr(args, "html", None):
        from .. import resources
        from ..ci.history import write_history

        page = write_history(resources.runs_root(args.artifacts), Path(args.html))
        print(f"history: {page}")
    return code


def add_commands(sub) -> None:
    """Register accept, plan and finish, and add --html to ls."""
    art = dict(help="the folder of run folders; default: ./artifacts/runs")
    p = sub.add_parser("accept", help="mark a run (passed, verified, not regressed) as the accepted baseline")
    p.add_argument("run")
    p.add_argument("--artifacts", "--out", **art)
    p.set_defaults(handler=cmd_accept)
    p = sub.add_parser("plan", help="print the papermill command lines that reproduce `yolo-compile run`")
    p.add_argument("workflow")
    p.add_argument("--model")
    p.add_argument("--calib")
    p.add_argument("--eval")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--artifacts", "--out", **art)
    p.add_argument("--run-dir", help="the run folder to write (default: a new name under the runs folder)")
    add_baseline_options(p)
    p.set_defaults(handler=cmd_plan)
    p = sub.add_parser("finish", help="seal a run folder a plan wrote: manifest, junit.xml, report.html")
    p.add_argument("run_dir")
    p.add_argument("workflow")
    add_baseline_options(p)
    p.set_defaults(handler=cmd_finish)
    ls = sub.choices["ls"]
    ls.add_argument("--html", help="also write the history page (mAP drop, images/s, size over the runs of each model)")
    ls.set_defaults(handler=cmd_ls)
