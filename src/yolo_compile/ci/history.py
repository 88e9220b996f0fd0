"""`yolo-compile ls --html history.html`: mAP drop, images/s and size over the runs of each model, the accepted run marked.

Read from the run folders alone (manifest.json and the stages' result.json): nothing is recomputed or re-timed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .. import fileio, runs


def rows(root: Path) -> list[dict]:
    """Return one row per run under root, oldest first: model, status, mAP drop, images/s, size, accepted."""
    from ..report.archive import list_runs
    from ..report.html import facts
    from .baseline import accepted_file

    acc = accepted_file(root)
    accepted = json.loads(acc.read_text()).get("run") if acc.is_file() else None
    out = []
    for run in reversed(list_runs(root)):
        f = facts(run)
        reg = runs.read_manifest(run).get("regression") or {}
        out.append({"run": run.name, "created": f["created"] or "", "model": f["model"], "model_sha256": f["model_sha256"] or "?",
                    "status": "regressed" if reg.get("regressed") and f["status"] == "passed" else f["status"],
                    "recipe": f["recipe"] or "-", "target": f["target"] or "-", "map_drop": f["map_drop"],
                    "images_per_s": (f["throughput"] or {}).get("engine_images_per_s"),
                    "bytes": f["engine_bytes"] or f["quant_bytes"], "accepted": run.name == accepted})
    return out


def _figure(model_rows: list[dict], title: str) -> str:
    """Return an inline PNG: the three series over the runs, the accepted run as a star."""
    from .. import plots

    fig, axes = plots.subplots(1, 3, figsize=(12, 2.8))
    x = list(range(len(model_rows)))
    series = (("map_drop", "mAP50-95 drop (points)", 1.0), ("images_per_s", "images/s (shipped engine)", 1.0),
              ("bytes", "size (MB)", 1 / 2**20))
    for ax, (key, label, scale) in zip(axes, series):
        pts = [(i, r[key] * scale) for i, r in zip(x, model_rows) if isinstance(r[key], (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="#1f5fa8", ms=4)
        else:
            ax.text(0.5, 0.5, "not measured in these runs", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks(x)
        for i, r in zip(x, model_rows):
            if r["accepted"] and isinstance(r[key], (int, float)):
                ax.plot([i], [r[key] * scale], "*", color="#d08000", ms=14, label="accepted")
            if r["status"] in ("failed", "regressed"):
                ax.axvline(i, color="#b00020", alpha=0.25, lw=3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("run (oldest first)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _row(r: dict, number) -> str:
    drop = "-" if r["map_drop"] is None else f"{r['map_drop']:.2f}"
    speed = number(r["images_per_s"]) if isinstance(r["images_per_s"], (int, float)) else "-"
    size = f"{r['bytes'] / 2**20:.2f} MB" if r["bytes"] else "-"
    cells = [("★ " if r["accepted"] else "") + r["run"], r["status"], str(r["recipe"]), str(r["target"]), drop, speed, size]
    return "<tr>" + "".join(f"<td{' class=' + repr(r['status']) if i == 1 else ''}>{html.escape(c)}</td>"
                            for i, c in enumerate(cells)) + "</tr>"


def write_history(root: Path, path: Path) -> Path:
    """Write the history page of the runs under root to path; return path."""
    from ..plots import number

    all_rows = rows(Path(root))
    by_model: dict[str, list[dict]] = {}
    for r in all_rows:
        by_model.setdefault(r["model_sha256"], []).append(r)
    parts = [f"<h1>yolo-compile history <span class='muted'>{html.escape(str(root))}</span></h1>",
             f"<p>{len(all_rows)} runs of {len(by_model)} models; the accepted baseline is starred; failed or regressed "
             "runs are shaded. Read from the run folders' manifests and results.</p>"]
    if not all_rows:
        parts.append("<p>No runs.</p>")
    for sha, model_rows in by_model.items():
        name = f"{model_rows[-1]['model']} (sha256 {sha[:12]})"
        parts.append(f"<h2>{html.escape(name)}</h2>{_figure(model_rows, name)}")
        head = "<tr><th>run</th><th>status</th><th>recipe</th><th>target</th><th>mAP drop</th><th>images/s</th><th>size</th></tr>"
        body = "".join(_row(r, number) for r in reversed(model_rows))
        parts.append(f"<table>{head}{body}</table>")
    css = ("body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:10px 18px;max-width:1180px}table{border-collapse:"
           "collapse}td,th{border:1px solid #ccc;padding:2px 7px;text-align:left}.passed{color:#176a1f}.failed,.regressed"
           "{color:#b00020;font-weight:700}.muted{color:#666}img{max-width:100%}")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>yolo-compile history</title>"
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>")
    return fileio.write_text(path, page)
