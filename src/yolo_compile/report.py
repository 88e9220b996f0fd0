"""The self-contained compile report (one HTML page, plots inlined) and the notebooks' display helpers."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from . import STAGES, runs

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}.passed{color:#176a1f;font-weight:600}.failed{color:#b00020;font-weight:600}
.skipped{color:#8a6d00;font-weight:600}code,pre{font-size:12px;background:#f7f7f7}pre{padding:6px;overflow-x:auto}
img{max-width:100%}"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > 12:
        return html.escape(f"{len(v)} items: " + ", ".join(map(str, v[:6])) + ", ...")
    if isinstance(v, (dict, list)):
        return "<pre>" + html.escape(json.dumps(v, indent=1)[:3000]) + "</pre>"
    return html.escape(str(v))


def kv_table(d: dict) -> str:
    """Return an HTML table of a dict's keys and values (long lists summarised)."""
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in d.items()) + "</table>"


def rows_table(rows: list[dict]) -> str:
    """Return an HTML table of a list of same-keyed dicts."""
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def stage_html(run_dir: Path, stage: str, res: dict) -> str:
    """Return one stage's section: key facts, tables and inlined plots."""
    skip = {"rows", "stats", "files", "brightness", "layer_precisions", "commands", "quantized_nodes", "head_nodes", "plot"}
    parts = [kv_table({k: v for k, v in res.items() if k not in skip})]
    if res.get("stats"):
        rows = [{"output": out, "channels": g, **s[g]} for out, s in res["stats"].items() for g in ("boxes", "scores")]
        parts.append(rows_table(rows))
    if res.get("rows"):
        parts.append(rows_table(res["rows"]))
    if res.get("layer_precisions"):
        parts.append(kv_table(res["layer_precisions"]))
    if res.get("quantized_nodes") is not None and stage == "quantize":
        parts.append(f"<p>{len(res['quantized_nodes'])} nodes run INT8; {len(res.get('head_nodes', []))} head nodes "
                     f"kept in {html.escape(str(res.get('high_precision_dtype')))}.</p>")
    if res.get("commands"):
        parts.append("<p>Command lines:</p>" + "".join(f"<pre>{html.escape(c)}</pre>" for c in res["commands"]))
    if res.get("plot"):
        parts.append(_img(run_dir / res["plot"]))
    return "".join(parts)


def write_report(run_dir: str | Path, status: str | None = None) -> Path:
    """Write run_dir/report.html from the manifest and every stage's result.json; return its path."""
    run_dir = Path(run_dir)
    m = runs.read_manifest(run_dir)
    status = status or m.get("status", "unknown")
    stage_rows = [{"stage": s, "status": v.get("status"), "seconds": v.get("seconds"), "notebook": v.get("notebook"),
                   "reason / error": v.get("error") or v.get("reason") or ""} for s, v in m.get("stages", {}).items()]
    body = [f"<h1>yolo-compile report: <span class='{status}'>{html.escape(status)}</span></h1>",
            kv_table({"workflow": m.get("workflow"), "run folder": m.get("run_dir"), "created (UTC)": m.get("created_utc"),
                      "git commit": m.get("git_commit")}),
            "<h2>Stages</h2>", rows_table(stage_rows)]
    for stage in STAGES:
        path = run_dir / stage / "result.json"
        if path.is_file():
            res = json.loads(path.read_text())
            body.append(f"<h2>{stage} <span class='{res.get('status')}'>{html.escape(str(res.get('status')))}</span></h2>")
            body.append(stage_html(run_dir, stage, res))
    body += ["<h2>Parameters</h2>", kv_table(m.get("parameters", {})), "<h2>Inputs</h2>", kv_table(m.get("inputs", {})),
             "<h2>Tools</h2>", kv_table(m.get("tools", {})), "<h2>Device</h2>", kv_table(m.get("device", {}))]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>yolo-compile {html.escape(run_dir.name)}</title>" \
           f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    return runs.write_text(run_dir / "report.html", page)

