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
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return html.escape(", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)) or "-"
    if isinstance(v, dict) and len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v.values()):
        return html.escape("; ".join(f"{k}: {x:.4g}" if isinstance(x, float) else f"{k}: {x}" for k, x in v.items()))
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
    skip = {"rows", "stats", "files", "brightness", "contrast", "layer_precisions", "commands", "quantized_nodes",
            "head_nodes", "plot", "plots", "agreement", "accuracy", "recipes", "sensitivity", "calib_sweep",
            "end_to_end", "end_to_end_summary", "table"}
    parts = [kv_table({k: v for k, v in res.items() if k not in skip})]
    if res.get("stats"):
        rows = [{"output": out, "channels": g, **s[g]} for out, s in res["stats"].items() for g in ("boxes", "scores")]
        parts.append("<h3>Tensor errors, FP32 vs quantized (Polygraphy)</h3>" + rows_table(rows))
    if res.get("agreement"):
        agree = res["agreement"]
        parts.append(f"<h3>Detection agreement after NMS (conf {agree['conf']}, IoU {agree['iou']}, same class)</h3>"
                     + rows_table([{"class": "all", **agree["all"]}] + [{"class": k, **v} for k, v in agree["per_class"].items()]))
    if res.get("accuracy"):
        acc = res["accuracy"]
        parts.append(f"<h3>Task accuracy on {html.escape(acc['data'])} ({acc['images']} images)</h3>"
                     f"<p>mAP50-95 {acc['fp32']['map50_95']:.4f} (FP32) -> {acc['quantized']['map50_95']:.4f} (quantized): "
                     f"drop <b>{acc['drop_points']:.2f} points</b>; mAP50 drop {acc['drop_points_map50']:.2f} points.</p>")
        classes = sorted(set(acc["fp32"]["per_class"]) | set(acc["quantized"]["per_class"]))
        parts.append(rows_table([{"class": c, "fp32 mAP50-95": acc["fp32"]["per_class"].get(c, {}).get("map50_95"),
                                  "quantized mAP50-95": acc["quantized"]["per_class"].get(c, {}).get("map50_95")}
                                 for c in classes] + [{"class": "small objects", "fp32 mAP50-95": acc["fp32"]["small"]["map50_95"],
                                                       "quantized mAP50-95": acc["quantized"]["small"]["map50_95"]}]))
    if res.get("recipes"):
        parts.append("<h3>Recipes side by side</h3>" + rows_table(res["recipes"]))
    if res.get("sensitivity"):
        sens = res["sensitivity"]
        parts.append(f"<h3>Layer sensitivity</h3><p>{sens['groups']} layer groups; all-INT8 disagreement with FP32 "
                     f"{sens['baseline_all_int8_loss']:.2f}; top five: {html.escape(', '.join(sens['top5']))}.</p>"
                     + rows_table(sens["ranked"][:10]))
        if sens.get("search"):
            search = sens["search"]
            verdict = (f"passes with {len(search['float_groups'])} group(s) in float: "
                       f"{html.escape(', '.join(search['float_groups']) or 'none')}" if search["passed"]
                       else "no tried set passed the gate")
            parts.append(f"<p>Recipe search: {verdict}.</p>" + rows_table(search["steps"]))
            if search["passed"]:
                parts.append("<p>nodes_to_exclude:</p><pre>" + html.escape(json.dumps(search["nodes_to_exclude"])) + "</pre>")
    if res.get("calib_sweep"):
        parts.append("<h3>Calibration-set size sweep</h3>" + rows_table(res["calib_sweep"]))
    if res.get("rows"):
        parts.append(rows_table(res["rows"]))
    if res.get("end_to_end"):
        parts.append("<h3>End to end: JPEG frames to detections</h3>" + rows_table(res["end_to_end"]))
    if res.get("layer_precisions"):
        parts.append(kv_table(res["layer_precisions"]))
    if res.get("quantized_nodes") is not None and stage == "quantize":
        parts.append(f"<p>{len(res['quantized_nodes'])} nodes run INT8; {len(res.get('head_nodes', []))} head nodes "
                     f"kept in {html.escape(str(res.get('high_precision_dtype')))}.</p>")
    if res.get("commands"):
        parts.append("<p>Command lines:</p>" + "".join(f"<pre>{html.escape(c)}</pre>" for c in res["commands"]))
    for plot in res.get("plots") or ([res["plot"]] if res.get("plot") else []):
        parts.append(_img(run_dir / plot))
    return "".join(parts)


def summary_html(run_dir: Path) -> str:
    """Return the verdict in a few lines: accuracy against FP32, the gate, sizes, the engine and its speed."""
    def res(stage: str) -> dict:
        path = run_dir / stage / "result.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    q, cmp, build, tp = res("quantize"), res("compare"), res("build"), res("throughput")
    lines = []
    if q:
        lines.append(f"Recipe <b>{html.escape(q['recipe'])}</b> for target {html.escape(q['target'])}: "
                     f"{len(q.get('quantized_nodes', []))} nodes INT8, head kept in {html.escape(q['high_precision_dtype'])}; "
                     f"{q['calibration_method']} calibration on {q['calibration_images']} images.")
    if cmp.get("accuracy"):
        acc = cmp["accuracy"]
        lines.append(f"mAP50-95 {acc['fp32']['map50_95']:.4f} FP32 -> {acc['quantized']['map50_95']:.4f} quantized: "
                     f"<b>{acc['drop_points']:.2f} points</b> lost (gate {cmp['thresholds']['map_drop_max']}).")
    if cmp.get("reasons"):
        lines.append("<span class='failed'>Gate failed: " + html.escape("; ".join(cmp["reasons"])) + "</span>")
    search = (cmp.get("sensitivity") or {}).get("search") or {}
    if search.get("passed"):
        lines.append(f"Recipe search: keeping {html.escape(', '.join(search['float_groups']) or 'nothing')} in float "
                     f"loses {search['steps'][-1]['map50_95_drop_points']:.2f} points (compare/nodes_to_exclude.json).")
    if build:
        lines.append(f"Engine: {html.escape(build.get('backend', ''))} ({html.escape(build.get('status', ''))}"
                     + (f": {html.escape(build['reason'])}" if build.get("reason") else "") + ").")
    if tp.get("rows"):
        best = max(tp["rows"], key=lambda r: r["images_per_s"])
        lines.append(f"Fastest measured: {html.escape(str(best['model']))} at batch {best['batch']}, "
                     f"{best['images_per_s']:.0f} images/s.")
    return "<h2>Summary</h2><ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>" if lines else ""


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
            "<h2>Stages</h2>", rows_table(stage_rows), summary_html(run_dir)]
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

