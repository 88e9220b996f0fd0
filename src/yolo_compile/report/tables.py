"""The report's two decision tables: the quantize front (drop vs images/s per candidate) and F1 at the working threshold.

The front is the Pareto picture's numbers (issue 23: "the same numbers as a table"); the F1 table is the compare
stage's precision, recall, F1 and count of detections above `conf`, FP32 vs quantized, overall and per class: a
quantized model whose mAP holds can still pass fewer boxes at the production threshold.
"""

from __future__ import annotations

import html
from typing import Any


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[Any]], marked: list[bool] | None = None) -> str:
    marked = marked or [False] * len(rows)
    body = "".join(f"<tr{' class=chosen' if m else ''}>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>"
                   for r, m in zip(rows, marked))
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>"


def front_table(quantize: dict) -> str:
    """Return the quantize stage's front as a table (one row per timed candidate and FP32), or ''."""
    pts = quantize.get("pareto") or []
    if not pts:
        return ""
    chosen = quantize.get("chosen") or {}
    batch = pts[0].get("batch", 1)
    b1 = ["images/s at batch 1"] if batch > 1 else []
    rows = [[p.get("candidate"), p.get("drop_points"), p.get("drop_noise"), p.get("images_per_s"), p.get("speed_noise"),
             *([p.get("batch1_images_per_s")] if b1 else []), "chosen" if p.get("chosen") else p.get("why")]
            for p in sorted(pts, key=lambda p: -(p.get("images_per_s") or 0))]
    note = (f"<p class='muted'>objective={html.escape(str(quantize.get('objective', '?')))}, "
            f"accept_drop={_cell(chosen.get('accept_drop'))} points; speed: {html.escape(str(chosen.get('latency', '')))}; "
            f"{html.escape(str(chosen.get('says', '')))}</p>")
    return (f"<h3>The front: every timed candidate's mAP50-95 drop and images/s (batch {batch})</h3>" + note
            + _table(["candidate", "drop, points", "drop noise", f"images/s at batch {batch}", "speed noise", *b1,
                      "chosen, or why it lost"], rows,
                     [bool(p.get("chosen")) for p in sorted(pts, key=lambda p: -(p.get("images_per_s") or 0))]))


def threshold_table(compare: dict, names: dict[str, str]) -> str:
    """Return F1 at the working threshold, FP32 vs quantized, overall then per class, or ''."""
    t = (compare.get("accuracy") or {}).get("at_threshold")
    if not t:
        return ""
    f, q = t["fp32"], t["quantized"]
    rows = [["all", f.get("targets"), f["precision"], q["precision"], f["recall"], q["recall"], f["f1"], q["f1"],
             t.get("f1_drop_points"), f["detections"], q["detections"]]]
    for c in t.get("per_class") or []:
        rows.append([names.get(str(c["class"]), c["class"]), c["targets"], c["precision_fp32"], c["precision_quantized"],
                     c["recall_fp32"], c["recall_quantized"], c["f1_fp32"], c["f1_quantized"], c["f1_drop_points"],
                     c["detections_fp32"], c["detections_quantized"]])
    gate = (f"gated: f1_drop_max {t['f1_drop_max']}" if t.get("f1_drop_max") else "reported, not gated (f1_drop_max=0)")
    return (f"<h3>At the working threshold (conf {t['conf']}, IoU {t['iou']}): precision, recall, F1 and detections "
            f"above conf, FP32 vs quantized</h3><p class='muted'>{html.escape(gate)}; "
            f"{'passed' if t.get('passed', True) else 'FAILED'}</p>"
            + _table(["class", "targets", "P FP32", "P quantized", "R FP32", "R quantized", "F1 FP32", "F1 quantized",
                      "F1 drop, points", "detections FP32", "detections quantized"], rows))


def decision_html(results: dict[str, dict]) -> str:
    """Return the section with both tables, or '' when neither stage produced them."""
    names = {str(k): str(v) for k, v in ((results.get("export") or {}).get("class_names") or {}).items()}
    parts = [front_table(results.get("quantize") or {}), threshold_table(results.get("compare") or {}, names)]
    return "<h2>Speed and accuracy</h2>" + "".join(parts) if any(parts) else ""
