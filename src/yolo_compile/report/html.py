"""The archive-grade compile report: one self-contained HTML page (no URL, font or script it must fetch).

First screen: a summary card answering "can I ship this engine, what does it cost and gain?". Then pictures
(precision of every layer, per-class mAP, detection agreement, error histograms, latency vs batch, coverage),
every executed notebook rendered by nbconvert (inputs collapsed), and each stage's result as tables with the
raw JSON behind a disclosure. Stage results grow new fields over time: anything unknown is rendered as a table.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from yolo_compile import STAGES, fileio, plots, runs
from yolo_compile.quant.graph import onnx_layer_precisions
from yolo_compile.report.notebooks import notebooks_html, pygments_css

_CSS = """body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:10px 18px;max-width:1180px;
color:#1d1d1d}h1{font-size:21px;margin:4px 0 8px}h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse;margin:.4em 0 1em}td,th{border:1px solid #d4d4d4;
padding:2px 7px;text-align:left;vertical-align:top}th{background:#f4f4f4;font-weight:600}.passed,.pass{color:#176a1f;
font-weight:700}.failed,.fail{color:#b00020;font-weight:700}.skipped,.running,.unknown{color:#8a6d00;font-weight:700}
code,pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;background:#f7f7f7}pre{padding:6px;overflow-x:auto;
white-space:pre-wrap}img{max-width:100%}.card{display:grid;grid-template-columns:minmax(0,1.25fr) minmax(0,1fr);gap:18px;
border:2px solid #bbb;border-radius:8px;padding:10px 14px}.card-pass{border-color:#2e7d32}.card-fail{border-color:#b00020}
.card table{margin:0;width:100%}.card th{width:9.5em}.verdict{font-size:17px;margin:0 0 6px}.muted{color:#666}
.figs{display:flex;flex-wrap:wrap;gap:14px 26px;align-items:flex-start}.legend span{display:inline-block;width:11px;
height:11px;margin:0 4px 0 12px;vertical-align:-1px}details>summary{cursor:pointer;color:#1f5fa8}
.nb{border:1px solid #ddd;border-radius:6px;padding:4px 12px;margin:10px 0}.nb .prompt{display:none}
.nb .output_stderr{background:#fff4f4}.nb .output_area pre{background:none}.nb .input_area{background:#f7f7f7}
.nb details.nb-in{margin:4px 0}.nb .output_subarea{overflow-x:auto}svg text{font-family:system-ui,sans-serif}tr.chosen td{background:#eef7ee;font-weight:600}"""



def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mb(n: Any) -> str:
    return f"{n / 1e6:,.1f} MB" if _num(n) else "-"


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v)) if v is not None and v != "" else "-"


def _value(v: Any, depth: int = 0) -> str:
    """Return HTML for any JSON value: scalars inline, lists of dicts and dicts of dicts as tables."""
    if isinstance(v, dict):
        if not v:
            return "-"
        if all(not isinstance(x, (dict, list)) for x in v.values()) and len(v) > 8:
            return html.escape("; ".join(f"{k}: {x:.4g}" if isinstance(x, float) else f"{k}: {x}" for k, x in v.items()))
        if depth < 3 and all(isinstance(x, dict) for x in v.values()):
            return rows_table([{"": k, **x} for k, x in v.items()], depth + 1)
        if depth < 3:
            return kv_table(v, depth + 1)
    if isinstance(v, list):
        if not v:
            return "-"
        if depth < 3 and all(isinstance(x, dict) for x in v):
            return rows_table(v[:60], depth + 1) + (f"<p class='muted'>{len(v) - 60} more rows in the raw JSON</p>"
                                                    if len(v) > 60 else "")
        if all(not isinstance(x, (dict, list)) for x in v):
            text = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:40])
            return html.escape(text + (f", ... ({len(v)} items)" if len(v) > 40 else ""))
    if isinstance(v, (dict, list)):
        return "<pre>" + html.escape(json.dumps(v, indent=1)[:3000]) + "</pre>"
    return _scalar(v)


def kv_table(d: dict, depth: int = 0) -> str:
    """Return an HTML table of a dict's keys and values (nested values as nested tables)."""
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value(v, depth)}</td></tr>"
                               for k, v in d.items()) + "</table>"


def rows_table(rows: list[dict], depth: int = 0) -> str:
    """Return an HTML table of a list of dicts (columns: the union of their keys, in first-seen order)."""
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_value(r.get(k), depth + 1)}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def png(path: Path, alt: str = "") -> str:
    """Return an <img> with the PNG inlined as a data URI ('' where the file is missing)."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt or path.name)}" src="data:image/png;base64,{data}">'


def read_results(run_dir: Path) -> dict[str, dict]:
    """Return {stage: result.json as a dict} for every stage that wrote one (unreadable ones as {})."""
    out = {}
    for stage in STAGES:
        path = Path(run_dir) / stage / "result.json"
        try:
            out[stage] = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            out[stage] = {}
    return out


def _throughput(tp: dict) -> dict:
    """Return the engine's gain over the FP32 baseline at the largest batch both ran, and the honest verdict."""
    rows = [r for r in tp.get("rows") or [] if isinstance(r, dict) and _num(r.get("images_per_s"))]
    eng = [r for r in rows if r.get("shipped")] or [r for r in rows if str(r.get("model", "")).startswith("engine")]
    if not eng:
        return {}
    device, backend = eng[0].get("device"), eng[0].get("backend")
    fp32 = [r for r in rows if "fp32" in str(r.get("model", "")).lower()]
    base = ([r for r in fp32 if r.get("backend") == backend] or [r for r in fp32 if r.get("device") == device] or fp32)
    common = sorted({r.get("batch") for r in eng} & {r.get("batch") for r in base}, key=lambda b: _num(b) or 0)
    best = max(eng, key=lambda r: r["images_per_s"])
    out = {"engine": best.get("model"), "device": device, "best_images_per_s": best["images_per_s"],
           "best_batch": best.get("batch")}
    if common:
        b = common[-1]
        e = max(r["images_per_s"] for r in eng if r.get("batch") == b)
        f = max(r["images_per_s"] for r in base if r.get("batch") == b)
        out.update(batch=b, gain=e / f, engine_images_per_s=e, fp32_images_per_s=f)
        where = "GPU" if str(device).startswith("cuda") else "CPU"
        out["verdict"] = (f"{e / f:.2f}x FP32 at batch {b} on this {where}" if e >= f else
                          f"{f / e:.2f}x slower than FP32 at batch {b} on this {where}")
    notes = [n for n in tp.get("notes") or [] if isinstance(n, str) and ("under load" in n or "VNNI" in n or "not a speed win" in n)]
    if notes:
        out["note"] = notes[0]
    return out


def facts(run_dir: str | Path, status: str | None = None) -> dict:
    """Return the run's headline facts (status, verdict, model, recipe, mAP, sizes, speed, times) from its files."""
    run_dir = Path(run_dir)
    m = runs.read_manifest(run_dir)
    r = read_results(run_dir)
    exp, q, cmp, build, tp = (r[s] for s in ("export", "quantize", "compare", "build", "throughput"))
    params, stages = m.get("parameters") or {}, m.get("stages") or {}
    model_in = (m.get("inputs") or {}).get("model") or {}
    acc = cmp.get("accuracy") or {}
    f: dict[str, Any] = {
        "run": run_dir.name, "status": status or m.get("status", "unknown"), "workflow": m.get("workflow"),
        "created": m.get("created_utc"),
        "model": Path(str(model_in.get("path") or params.get("model") or (exp.get("source") or {}).get("path") or "?")).name,
        "model_sha256": model_in.get("sha256") or exp.get("checkpoint_sha256"),
        "recipe": q.get("recipe") or params.get("recipe"), "target": q.get("target") or params.get("target"),
        "calibration": (f"{q['calibration_method']}, {q.get('calibration_images')} images"
                        if q.get("calibration_method") and q.get("recipe") != "float" else None),
        "head_dtype": q.get("high_precision_dtype"),
        "gate": None if "passed" not in cmp else ("pass" if cmp.get("passed") else "fail"),
        "gate_reasons": cmp.get("reasons") or [], "next_step": cmp.get("next_step") or "",
        "map_fp32": _num((acc.get("fp32") or {}).get("map50_95")),
        "map_quant": _num((acc.get("quantized") or {}).get("map50_95")),
        "map_drop": _num(acc.get("drop_points")), "map_drop_max": _num((cmp.get("thresholds") or {}).get("map_drop_max")),
        "fp32_bytes": exp.get("onnx_bytes") or q.get("fp32_bytes"), "quant_bytes": q.get("onnx_bytes"),
        "engine_bytes": build.get("engine_bytes") or None, "engine_backend": build.get("backend"),
        "build_status": build.get("status"), "build_reason": build.get("reason"),
        "throughput": _throughput(tp), "stage_seconds": {s: v.get("seconds") for s, v in stages.items()},
        "stage_status": {s: v.get("status") for s, v in stages.items()},
        "tools": m.get("tools") or {}, "git_commit": m.get("git_commit"),
    }
    dev = m.get("device") or {}
    f["device"] = ", ".join(dev.get("gpus") or []) or f"{dev.get('cpu', '?')} ({dev.get('cores', '?')} cores, INT8: {dev.get('int8_isa', '?')})"
    failed = next(((s, v) for s, v in stages.items() if v.get("status") == "failed"), None)
    if failed:
        cell = f" (cell {failed[1]['failed_cell']})" if failed[1].get("failed_cell") else ""
        f["verdict"] = f"failed in stage {failed[0]}{cell}: {failed[1].get('error') or failed[1].get('reason') or 'see its notebook'}"
    elif f["status"] == "passed":
        parts = ["every stage passed"]
        if f["gate"] == "pass" and f["map_drop"] is not None:
            parts.append(f"accuracy gate met: mAP50-95 drop {f['map_drop']:.2f} <= {f['map_drop_max']} points")
        if f["build_status"] == "skipped":
            parts.append(f"engine not built here: {f['build_reason']}")
        f["verdict"] = "; ".join(parts)
    else:
        f["verdict"] = f"run {f['status']}: not every stage finished"
    return f


def summary_card(f: dict) -> str:
    """Return the first screen: verdict, model, recipe, target, accuracy vs gate, sizes, speed, time per stage."""
    ok = f["status"] == "passed"
    tp = f["throughput"]
    rows = {"model": f"{html.escape(f['model'])} <code>sha256 {html.escape(str(f['model_sha256'] or '?')[:16])}</code>",
            "recipe": html.escape(" / ".join(str(x) for x in (f["recipe"], f["calibration"],
                                                              f["head_dtype"] and f"head {f['head_dtype']}") if x) or "-"),
            "target, device": html.escape(f"{f['target'] or '-'} on {f['device']}")}
    if None not in (f["map_fp32"], f["map_quant"], f["map_drop"]):
        cls = {"pass": "pass", "fail": "fail"}.get(f["gate"] or "", "")
        rows["mAP50-95"] = (f"{f['map_fp32']:.4f} FP32 &rarr; {f['map_quant']:.4f} quantized: <span class='{cls}'>"
                            f"{f['map_drop']:.2f} points lost</span> (gate &le; {f['map_drop_max']})")
    elif f["gate"]:
        rows["accuracy gate"] = f"<span class='{f['gate']}'>{f['gate']}</span>"
    if f["gate_reasons"]:
        rows["gate reasons"] = html.escape("; ".join(map(str, f["gate_reasons"])))
    if f["next_step"]:
        rows["next step"] = html.escape(f["next_step"])
    size = f"FP32 ONNX {_mb(f['fp32_bytes'])} &rarr; quantized ONNX {_mb(f['quant_bytes'])}"
    if f["engine_bytes"]:
        size += f" &rarr; {html.escape(str(f['engine_backend']))} engine {_mb(f['engine_bytes'])}"
    rows["model size"] = size
    if tp.get("verdict"):
        rows["throughput"] = (f"<b>{html.escape(tp['verdict'])}</b> ({plots.number(tp['engine_images_per_s'])} vs "
                              f"{plots.number(tp['fp32_images_per_s'])} images/s)"
                              + (f"<br><span class='muted'>{html.escape(tp['note'])}</span>" if tp.get("note") else ""))
    elif f["build_status"] == "skipped":
        rows["throughput"] = html.escape(f"not measured: engine skipped ({f['build_reason']})")
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows.items()) + "</table>"
    secs = {s: v for s, v in f["stage_seconds"].items() if _num(v) is not None}
    total = sum(secs.values())
    times = plots.bar_chart([f"{s} ({f['stage_status'].get(s)})" for s in secs], {"seconds": list(secs.values())},
                            f"Wall time per stage (total {total:,.0f} s)", " s", width=430)
    verdict = f"<p class='verdict'><span class='{'pass' if ok else 'fail'}'>{'PASS' if ok else 'FAIL'}</span>: " \
              f"{html.escape(f['verdict'])}</p>"
    return f"<section id='summary' class='card card-{'pass' if ok else 'fail'}'><div>{verdict}{table}</div><div>{times}</div></section>"


def figures_html(run_dir: Path, results: dict[str, dict]) -> str:
    """Return the pictures: precision strip, per-class mAP, agreement, latency vs batch, and the stages' PNGs."""
    exp, q, cmp, tp = (results[s] for s in ("export", "quantize", "compare", "throughput"))
    parts = []
    onnx_path = run_dir / str(q.get("onnx") or "quantize/model.quant.onnx")
    if q and onnx_path.is_file():
        layers = onnx_layer_precisions(onnx_path, exp.get("head_index"))
        counts = {p: sum(1 for x in layers if x["precision"] == p) for p in plots.PRECISION_COLOURS}
        legend = "".join(f"<span style='background:{c}'></span>{p} {counts[p]}" for p, c in plots.PRECISION_COLOURS.items())
        parts.append(f"<h3>Precision of every layer, in graph order (read from {html.escape(onnx_path.name)})</h3>"
                     f"<p class='legend'>{len(layers)} layers:{legend}</p>{plots.precision_strip(layers)}")
    figs = []
    acc = cmp.get("accuracy") or {}
    names = {str(k): str(v) for k, v in (exp.get("class_names") or {}).items()}
    per_f, per_q = (acc.get("fp32") or {}).get("per_class") or {}, (acc.get("quantized") or {}).get("per_class") or {}
    classes = list(dict.fromkeys([*per_f, *per_q]))[:40]
    if classes:
        get = lambda d, c: _num((d.get(c) or {}).get("map50_95"))  # noqa: E731
        figs.append(plots.bar_chart([names.get(c, c) for c in classes], {"FP32": [get(per_f, c) for c in classes],
                                    "quantized": [get(per_q, c) for c in classes]}, "mAP50-95 per class", vmax=1.0))
    agree = cmp.get("agreement") or {}
    if agree.get("all"):
        rows = {"all": agree["all"], **(agree.get("per_class") or {})}
        labels = list(rows)[:40]
        figs.append(plots.bar_chart(labels, {k: [_num((rows[c] or {}).get(k)) for c in labels] for k in ("recall", "precision")},
                                    f"Detection agreement with FP32 (conf {agree.get('conf')}, IoU {agree.get('iou')})",
                                    vmax=1.0))
    if q.get("pareto"):  # the quantize stage's front, the bar its accept_drop
        figs.append(plots.pareto_chart(q["pareto"], _num(q["chosen"].get("accept_drop")), "Candidates: mAP drop vs speed"))
    series: dict[str, list] = {}
    for r in tp.get("rows") or []:
        if isinstance(r, dict) and _num(r.get("batch")) and _num(r.get("p50_ms")):
            series.setdefault(f"{r.get('model')} ({r.get('device', '?')})", []).append((r["batch"], r["p50_ms"]))
    if series:
        figs.append(plots.line_chart(series, "Latency vs batch (p50)", "batch", "ms per batch"))
    for stage in STAGES:
        res = results[stage]
        for rel in list(dict.fromkeys(res.get("plots") or ([res["plot"]] if res.get("plot") else []))):
            figs.append(f"<figure>{png(run_dir / str(rel))}<figcaption class='muted'>{html.escape(str(rel))}"
                        f"</figcaption></figure>")
    if figs:
        parts.append("<div class='figs'>" + "".join(f"<div>{x}</div>" for x in figs if x) + "</div>")
    return "<h2>Pictures</h2>" + "".join(parts) if parts else ""


def stage_html(run_dir: Path, stage: str, res: dict) -> str:
    """Return one stage's result as tables: headline scalars first, then each structured field by name."""
    hide = {"files", "brightness", "contrast", "quantized_nodes", "head_nodes", "stem_nodes", "plot", "plots", "table"}
    flat = lambda v: not isinstance(v, (dict, list)) or all(not isinstance(x, (dict, list))  # noqa: E731
                                                            for x in (v.values() if isinstance(v, dict) else v))
    scalars = {k: v for k, v in res.items() if k not in hide and flat(v)}
    parts = [kv_table(scalars)]
    for key in ("quantized_nodes", "head_nodes", "stem_nodes"):
        if isinstance(res.get(key), list) and res[key]:
            parts.append(f"<details><summary>{len(res[key])} {key.replace('_', ' ')}</summary>{_value(res[key])}</details>")
    for k, v in res.items():
        if k in hide or k in scalars or not v:
            continue
        if k == "commands":
            parts.append("<h3>command lines</h3>" + "".join(f"<pre>{html.escape(str(c))}</pre>" for c in v))
            continue
        title = {"sensitivity": "Layer sensitivity", "recipes": "Recipes side by side",
                 "agreement": "Detection agreement after NMS", "accuracy": "Task accuracy (mAP)",
                 "stats": "Tensor errors, FP32 vs quantized (Polygraphy)",
                 "pareto": "The front: mAP drop vs images/s per candidate (FP32 included)"}.get(k, k.replace("_", " "))
        parts.append(f"<h3>{html.escape(title)}</h3>{_value(v)}")
    if stage:  # in a notebook (stage ''), the plots show through the report's figures instead
        return "".join(parts)
    for rel in res.get("plots") or ([res["plot"]] if res.get("plot") else []):
        parts.append(png(run_dir / str(rel)))
    return "".join(parts)


def write_report(run_dir: str | Path, status: str | None = None) -> Path:
    """Write run_dir/report.html from the manifest, each stage's result.json and notebooks; return its path."""
    run_dir = Path(run_dir)
    m = runs.read_manifest(run_dir)
    f = facts(run_dir, status)
    results = read_results(run_dir)
    stage_rows = [{"stage": s, "status": v.get("status"), "seconds": v.get("seconds"), "notebook": v.get("notebook"),
                   "reason / error": v.get("error") or v.get("reason") or ""} for s, v in (m.get("stages") or {}).items()]
    from .baseline_card import baseline_card  # the "vs baseline" card (ci.baseline's result in the manifest)
    from .tables import decision_html  # the quantize front and F1 at the working threshold, as tables
    body = [f"<h1>yolo-compile report <span class='muted'>{html.escape(run_dir.name)}</span></h1>", baseline_card(m), summary_card(f),
            figures_html(run_dir, results), decision_html(results), "<h2>Stages</h2>", rows_table(stage_rows)]
    for stage in STAGES:
        res = results[stage]
        if res:
            body.append(f"<h3 id='stage-{stage}'>{stage} <span class='{html.escape(str(res.get('status')))}'>"
                        f"{html.escape(str(res.get('status')))}</span></h3>{stage_html(run_dir, stage, res)}"
                        f"<details><summary>raw result.json</summary><pre>{html.escape(json.dumps(res, indent=1))}"
                        f"</pre></details>")
    body.append(notebooks_html(run_dir, m))
    body += ["<h2>Provenance</h2>", kv_table({"workflow": m.get("workflow"), "run folder": m.get("run_dir"),
                                              "created (UTC)": m.get("created_utc"), "finished (UTC)": m.get("finished_utc"),
                                              "git commit": m.get("git_commit")}),
             "<h3>Parameters</h3>", kv_table(m.get("parameters") or {}), "<h3>Inputs</h3>", _value(m.get("inputs") or {}),
             "<h3>Tools</h3>", kv_table(m.get("tools") or {}), "<h3>Device</h3>", kv_table(m.get("device") or {}),
             "<details><summary>raw manifest.json</summary><pre>" + html.escape(json.dumps(m, indent=1)) + "</pre></details>"]
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>yolo-compile {html.escape(run_dir.name)}: "
            f"{html.escape(f['status'])}</title><style>{_CSS}{pygments_css()}</style></head><body>{''.join(body)}</body></html>")
    return fileio.write_text(run_dir / "report.html", page)
