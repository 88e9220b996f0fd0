"""Commands over finished run folders: ls, diff, verify (and SSH signing), gc of the shared cache, review in Jupyter."""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import time
from pathlib import Path

from yolo_compile import fileio, runs
from yolo_compile.errors import RunFolderError
from yolo_compile.report import review
from yolo_compile.report.signing import NAMESPACE, SIG, check_signature, sign_manifest
from yolo_compile.resources import runs_root

SCREENSHOT = "report-summary.png"  # written by the browser check after the run; not an artifact of the run
NOT_OUTPUTS = {runs.MANIFEST, SIG, SCREENSHOT}  # files that verify never expects in manifest['outputs']
_HEX64 = re.compile(rb"[0-9a-f]{64}")


def list_runs(root: Path) -> list[Path]:
    """Return the run folders (those holding a manifest.json) under root, newest first."""
    found = [p for p in root.iterdir() if (p / runs.MANIFEST).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: (runs.read_manifest(p).get("created_utc") or "", p.name), reverse=True)


def _run_dir(arg: str, root: Path) -> Path:
    p = Path(arg)
    if not (p / runs.MANIFEST).is_file() and (root / arg / runs.MANIFEST).is_file():
        p = root / arg
    if not (p / runs.MANIFEST).is_file():
        raise RunFolderError(f"{arg}: not a run folder (no {runs.MANIFEST}); `yolo-compile ls` lists the runs in {root}")
    return p


def _mb(n) -> str:
    return f"{n / 1e6:.1f} MB" if isinstance(n, (int, float)) and n else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def matrix_groups(root: Path) -> list[tuple[str, Path, list[str]]]:
    """Return [(matrix name, its folder, run names)] from the matrix.json files beside root, newest matrix first.

    `yolo-compile matrix` writes artifacts/matrices/<utc time>-<name>/matrix.json next to artifacts/runs; a run
    that several matrices name (a re-run reuses it) belongs to the newest.
    """
    folder, seen, out = root.parent / "matrices", set(), []
    for mfile in sorted(folder.glob("*/matrix.json"), reverse=True) if folder.is_dir() else []:
        try:
            m = json.loads(mfile.read_text())
        except (OSError, ValueError):
            continue
        names = [r["run"] for r in m.get("runs") or [] if isinstance(r, dict) and r.get("run") and r["run"] not in seen]
        seen.update(names)
        if names:
            out.append((str(m.get("name") or mfile.parent.name), mfile.parent, names))
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the runs newest first (status, model, recipe, target, gate, mAP drop, size, throughput); matrix runs grouped."""
    from yolo_compile.plots import number
    from yolo_compile.report.html import facts

    def row(run: Path) -> list[str]:
        f = facts(run)
        tp = f["throughput"]
        return [run.name, f["status"], f["workflow"] or "-", f["model"], f["recipe"] or "-", f["target"] or "-",
                f["gate"] or "-", "-" if f["map_drop"] is None else f"{f['map_drop']:.2f}",
                _mb(f["engine_bytes"] or f["quant_bytes"]),
                f"{tp['gain']:.2f}x fp32 ({number(tp['engine_images_per_s'])}/s)" if tp.get("gain") else "-"]

    root = runs_root(args.artifacts)
    found = {run.name: run for run in list_runs(root)}
    groups = matrix_groups(root)
    grouped = {n for _, _, names in groups for n in names}
    rows = [["run", "status", "workflow", "model", "recipe", "target", "gate", "mAP drop", "size", "throughput"]]
    rows += [row(run) for name, run in found.items() if name not in grouped]
    heads = {}  # row index -> the header line printed above it
    for name, folder, names in groups:
        here = [n for n in names if n in found]  # in the matrix's own order: models x targets x recipes
        if here:
            gone = len(names) - len(here)
            heads[len(rows)] = (f"\nmatrix {name}: {len(here)} runs ({folder})"
                                + (f"; {gone} listed runs are not in {root}" if gone else ""))
            rows += [row(found[n]) for n in here]
    if len(rows) == 1:
        print(f"no runs in {root}")
        return 0
    lines = _table(rows).splitlines()
    print("\n".join(f"{heads[i]}\n{line}" if i in heads else line for i, line in enumerate(lines)))
    return 0


def diff_sections(a: Path, b: Path) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Return [(section, [(key, value in a, value in b)])] for inputs, parameters, tools, device, mAP, sizes, speed."""
    from yolo_compile.report.html import facts, read_results

    ma, mb = runs.read_manifest(a), runs.read_manifest(b)
    fa, fb = facts(a), facts(b)
    ra, rb = read_results(a), read_results(b)

    def pairs(da: dict, db: dict, fmt=str) -> list[tuple[str, str, str]]:
        return [(str(k), fmt(da[k]) if k in da else "-", fmt(db[k]) if k in db else "-") for k in dict.fromkeys([*da, *db])]

    def entry(e) -> str:
        if not isinstance(e, dict):
            return str(e)
        return f"{Path(str(e.get('path', '?'))).name} {str(e.get('sha256', 'missing'))[:12]}"

    def per_class(res: dict) -> dict:
        acc = res.get("accuracy") or {}
        out = {"all": (acc.get("fp32") or {}).get("map50_95"), "all (quantized)": (acc.get("quantized") or {}).get("map50_95")}
        for c, v in ((acc.get("quantized") or {}).get("per_class") or {}).items():
            out[f"class {c} (quantized)"] = (v or {}).get("map50_95")
        return {k: "-" if v is None else f"{v:.4f}" for k, v in out.items()}

    def speed(res: dict) -> dict:
        return {f"{r.get('model')} [{r.get('backend')}, {r.get('device')}] batch {r.get('batch')}": f"{r['images_per_s']:.1f} img/s"
                for r in res.get("rows") or [] if isinstance(r, dict) and isinstance(r.get("images_per_s"), (int, float))}

    def sizes(f: dict) -> dict:
        return {"fp32 onnx": _mb(f["fp32_bytes"]), "quantized onnx": _mb(f["quant_bytes"]), "engine": _mb(f["engine_bytes"])}

    stages = lambda m: {s: f"{v.get('status')} {v.get('seconds', 0) or 0:.1f} s" for s, v in (m.get("stages") or {}).items()}  # noqa: E731
    verdict = lambda f: {"status": f["status"], "workflow": str(f["workflow"]), "recipe": str(f["recipe"]),  # noqa: E731
                         "target": str(f["target"]), "gate": str(f["gate"]),
                         "mAP drop": "-" if f["map_drop"] is None else f"{f['map_drop']:.2f}", "git commit": str(f["git_commit"])}
    return [("run", pairs(verdict(fa), verdict(fb))),
            ("inputs (file, sha256)", pairs(ma.get("inputs") or {}, mb.get("inputs") or {}, entry)),
            ("parameters", pairs(ma.get("parameters") or {}, mb.get("parameters") or {}, json.dumps)),
            ("tool versions", pairs(ma.get("tools") or {}, mb.get("tools") or {})),
            ("device", pairs(ma.get("device") or {}, mb.get("device") or {})),
            ("mAP50-95", pairs(per_class(ra["compare"]), per_class(rb["compare"]))),
            ("sizes", pairs(sizes(fa), sizes(fb))), ("throughput", pairs(speed(ra["throughput"]), speed(rb["throughput"]))),
            ("stages", pairs(stages(ma), stages(mb)))]


def diff_html(a: Path, b: Path, sections) -> str:
    """Return the diff as a self-contained HTML page (changed rows highlighted)."""
    from yolo_compile.report.html import _CSS

    body = [f"<h1>yolo-compile diff</h1><p>A: <code>{html.escape(str(a))}</code><br>B: <code>{html.escape(str(b))}</code></p>"]
    for title, rows in sections:
        trs = "".join(f"<tr{' class=changed' if va != vb else ''}><th>{html.escape(k)}</th><td>{html.escape(va)}</td>"
                      f"<td>{html.escape(vb)}</td></tr>" for k, va, vb in rows)
        body.append(f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>A</th><th>B</th></tr>{trs}</table>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>yolo-compile diff</title><style>{_CSS}"
            f"tr.changed td{{background:#fff3cd}}</style></head><body>{''.join(body)}</body></html>")


def cmd_diff(args: argparse.Namespace) -> int:
    """Print what differs between two runs (all rows with --all); write the HTML page with --html."""
    root = runs_root(args.artifacts)
    a, b = _run_dir(args.run_a, root), _run_dir(args.run_b, root)
    sections = diff_sections(a, b)
    print(f"A: {a}\nB: {b}")
    for title, rows in sections:
        shown = [r for r in rows if args.all or r[1] != r[2]]
        same = len(rows) - len(shown)
        print(f"\n== {title}" + (f" ({same} identical)" if same else ""))
        if shown:
            print(_table([["", "A", "B"], *[[k, va, vb] for k, va, vb in shown]]))
    if args.html:
        print(f"\nHTML: {fileio.write_text(args.html, diff_html(a, b, sections))}")
    return 0


def verify_run(run_dir: Path, check_inputs: bool = False) -> list[str]:
    """Return the problems found re-hashing the run folder against its manifest (empty: every file matches)."""
    m = runs.read_manifest(run_dir)
    outputs = m.get("outputs")
    if outputs is None:
        return [f"{run_dir / runs.MANIFEST}: no 'outputs' recorded (status {m.get('status')!r}): the run never finished"]
    problems = []
    for rel, entry in outputs.items():
        path = run_dir / rel
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif fileio.sha256(path) != entry.get("sha256"):
            problems.append(f"changed: {rel} (sha256 {fileio.sha256(path)[:12]}, manifest {str(entry.get('sha256'))[:12]})")
    for f in sorted(run_dir.rglob("*")):
        rel = f.relative_to(run_dir).as_posix()
        if f.is_file() and rel not in outputs and rel not in NOT_OUTPUTS and not f.name.startswith("."):
            problems.append(f"added: {rel} (not in the manifest)")
    if check_inputs:
        for key, entry in (m.get("inputs") or {}).items():
            now = runs.file_entry(entry.get("path", ""))
            if now.get("sha256") != entry.get("sha256"):
                problems.append(f"input {key} {'missing' if now.get('missing') else 'changed'}: {entry.get('path')}")
    return problems


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash every file against the manifest (and the signature); exit 1 on any difference."""
    run_dir = _run_dir(args.run, runs_root(args.artifacts))
    problems = verify_run(run_dir, args.inputs)
    n = len(runs.read_manifest(run_dir).get("outputs") or {})
    for p in problems:
        print(p)
    ok = not problems
    if (run_dir / SIG).is_file():
        sig_ok, msg = check_signature(run_dir, args.signer, args.identity)
        print(f"{'ok' if sig_ok else 'FAILED'}: {SIG}: {msg}")
        ok = ok and sig_ok
    elif args.signer:
        print(f"FAILED: {run_dir / SIG} does not exist (sign with: yolo-compile verify {args.run} --sign KEY)")
        ok = False
    if ok and args.sign:
        print(f"signed: {sign_manifest(run_dir, args.sign)}")
    print(f"{'ok' if not problems else 'FAILED'}: {n - sum(p.startswith(('missing', 'changed')) for p in problems)} of "
          f"{n} files match {run_dir / runs.MANIFEST}" + (f"; {len(problems)} problem(s)" if problems else ""))
    return 0 if ok else 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove cache entries that no run references (after a grace period), or unused for --max-age-days."""
    roots = [runs_root(a) for a in (args.artifacts or [None])]
    cache = Path(args.cache) if args.cache else runs.cache_root(roots[0] / "_")
    referenced: set[str] = set()
    n_runs = 0
    for root in roots:
        for run in list_runs(root):
            n_runs += 1
            for f in [run / runs.MANIFEST, *run.glob("*/result.json")]:
                referenced.update(h.decode() for h in _HEX64.findall(f.read_bytes()))
    now, removed, kept, freed = time.time(), [], 0, 0
    entries = [e for kind in sorted(cache.iterdir()) if kind.is_dir() for e in sorted(kind.iterdir())] if cache.is_dir() else []
    for entry in entries:
        st = entry.stat()
        age_h = (now - max(st.st_mtime, st.st_atime)) / 3600
        used = entry.name.split(".")[0] in referenced
        if (not used and age_h >= args.grace_hours) or (args.max_age_days is not None and age_h >= 24 * args.max_age_days):
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else st.st_size
            removed.append(f"{entry.relative_to(cache)} ({_mb(size)}, {'referenced' if used else 'unreferenced'}, "
                           f"{age_h / 24:.1f} days)")
            freed += size
            if not args.dry_run:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        else:
            kept += 1
    for line in removed:
        print(("would remove " if args.dry_run else "removed ") + line)
    print(f"{cache}: {'would free' if args.dry_run else 'freed'} {_mb(freed) if freed else '0 MB'} in {len(removed)} "
          f"entries; kept {kept} ({n_runs} runs scanned in {', '.join(map(str, roots))})")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """Serve the run folder in JupyterLab, print the URL of its first (or failed) notebook, wait until Ctrl-C."""
    return review.serve(_run_dir(args.run, runs_root(args.artifacts)).resolve(), ip=args.ip, port=args.port,
                        verbose=args.verbose, no_browser=args.no_browser)


def add_commands(sub) -> None:
    """Register ls, diff, verify, gc and review on the CLI's subparsers (each sets args.handler)."""
    art = dict(help="the folder of run folders; default: ./artifacts/runs")
    p = sub.add_parser("ls", help="list runs newest first: status, model, recipe, target, gate, mAP drop, size, speed; "
                       "runs of a matrix under its name")
    p.add_argument("--artifacts", "--out", **art)
    p.set_defaults(handler=cmd_ls)
    p = sub.add_parser("diff", help="what differs between two runs: inputs, parameters, tools, device, mAP, sizes, speed")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--all", action="store_true", help="show identical rows too")
    p.add_argument("--html", help="also write the diff as an HTML page here")
    p.add_argument("--artifacts", "--out", **art)
    p.set_defaults(handler=cmd_diff)
    p = sub.add_parser("verify", help="re-hash every file of a run against its manifest; exit 1 on any change")
    p.add_argument("run")
    p.add_argument("--inputs", action="store_true", help="also re-hash the inputs (model, image folders) where they are")
    p.add_argument("--sign", metavar="KEY", help="after a clean check, sign manifest.json with this SSH private key")
    p.add_argument("--signer", metavar="PUB", help="check manifest.json.sig against this public key or allowed_signers file")
    p.add_argument("--identity", default=NAMESPACE, help="signer identity in an allowed_signers file (default: yolo-compile)")
    p.add_argument("--artifacts", "--out", **art)
    p.set_defaults(handler=cmd_verify)
    p = sub.add_parser("gc", help="prune the shared cache: entries no run references, or unused for N days")
    p.add_argument("--artifacts", "--out", action="append", help="a folder of run folders (repeatable); default ./artifacts/runs")
    p.add_argument("--cache", help="the cache folder; default: $YOLO_COMPILE_CACHE or artifacts/cache")
    p.add_argument("--max-age-days", type=float, help="also remove referenced entries unused for this many days")
    p.add_argument("--grace-hours", type=float, default=1.0, help="keep unreferenced entries younger than this (a run may "
                   "be writing them); default 1")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(handler=cmd_gc)
    p = sub.add_parser("review", help="open the run's executed notebooks in JupyterLab (needs yolo-compile[review])")
    p.add_argument("run")
    p.add_argument("--no-browser", action="store_true", help="only print the URL (remote hosts)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-v", "--verbose", action="store_true", help="show JupyterLab's log")
    p.add_argument("--artifacts", "--out", **art)
    p.set_defaults(handler=cmd_review)
