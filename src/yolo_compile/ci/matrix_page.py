"""matrix.html in the report's summary style: a verdict per entry, drop vs gate, size, speed with its timing
condition, a link to each report, and a plot of mAP drop against images/s across the entries."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def _entry_facts(root: Path, r: dict) -> dict | None:
    from ..report.html import facts

    run = root / r["run"] if r.get("run") else None
    if run is None or not (run / "manifest.json").is_file():
        return None
    try:
        return facts(run)
    except Exception:  # noqa: BLE001  a damaged run folder is shown as such, the page still renders
        return None


def _plot(points: list[tuple[str, float, float, bool]]) -> str:
    """Return an inline PNG: mAP drop (points) against images/s, one labelled dot per entry."""
    from .. import plots

    if not points:
        return ""
    fig, ax = plots.subplots(1, 1, figsize=(6.4, 3.6))
    for label, speed, drop, ok in points:
        ax.plot([speed], [drop], "o", color="#2e7d32" if ok else "#b00020", ms=7)
        ax.annotate(label, (speed, drop), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("images/s, shipped engine (batch 1)", fontsize=8)
    ax.set_ylabel("mAP50-95 drop (points)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="mAP drop vs images/s" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def render(result: dict, root: Path) -> str:
    """Return the self-contained matrix page (links are relative: ../../runs/<run>/report.html)."""
    from ..plots import number

    esc = html.escape
    rows, points = [], []
    for r in result["runs"]:
        e = r.get("entry") or {}
        label = r.get("label", "").split(" / ")
        model = Path(str(e.get("model") or label[0])).stem
        target = e.get("target") or (label[1] if len(label) > 1 else "?")
        recipe = e.get("recipe") or (label[2] if len(label) > 2 else "?")
        short = f"{model} / {target} / {recipe}"
        f = _entry_facts(Path(root), r)
        status = r.get("status", "?")
        ok = status in ("passed", "reused")
        if f is None:
            rows.append(f"<tr><td>{esc(short)}</td><td class='failed'>{esc(status)}</td><td colspan='4'>"
                        f"{esc(str(r.get('error') or 'no run folder'))[:300]}</td><td>-</td></tr>")
            continue
        drop = "-" if f["map_drop"] is None else f"{f['map_drop']:.2f} / {f['map_drop_max']:g} points"
        size_b, fp32_b = f["engine_bytes"] or f["quant_bytes"], f["fp32_bytes"]
        size = (f"{size_b / 2**20:.1f} MB" + (f" ({size_b / fp32_b:.2f}x FP32)" if fp32_b else "")) if size_b else "-"
        tp = f["throughput"] or {}
        ips = tp.get("engine_images_per_s")
        speed = (f"{number(ips)} images/s" if isinstance(ips, (int, float)) else "not timed") + \
                (f"; {tp['verdict']}" if tp.get("verdict") else "")
        if isinstance(ips, (int, float)) and f["map_drop"] is not None:
            points.append((short, float(ips), float(f["map_drop"]), ok))
        secs = sum(v or 0 for v in (f["stage_seconds"] or {}).values())
        verdict = f["verdict"] if ok else (f["verdict"] or status)
        rows.append(f"<tr><td>{esc(short)}</td><td class='{'passed' if ok else 'failed'}'>{esc(status)}</td>"
                    f"<td>{esc(verdict[:300])}</td><td>{esc(drop)}</td><td>{esc(size)}</td><td>{esc(speed)}</td>"
                    f"<td>{number(secs)} s · <a href='../../runs/{esc(r['run'])}/report.html'>report</a></td></tr>")
    res = result.get("cluster") or {}
    where = ", ".join(f"{number(float(v))} {k}" for k, v in sorted(res.items()) if k in ("CPU", "GPU", "tensorrt")) or "?"
    passed = sum(r.get("status") in ("passed", "reused") for r in result["runs"])
    head = "<tr><th>entry</th><th>status</th><th>verdict</th><th>mAP drop / gate</th><th>size</th><th>speed</th><th>compile</th></tr>"
    css = ("body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:10px 18px;max-width:1280px}table{border-collapse:"
           "collapse;width:100%}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}th{background:"
           "#f4f4f4}.passed{color:#176a1f;font-weight:700}.failed{color:#b00020;font-weight:700}.muted{color:#666}"
           ".verdict{font-size:17px}img{max-width:100%}")
    verdict = (f"{passed} of {len(result['runs'])} entries passed" + ("" if passed == len(result["runs"]) else
                                                                     f"; {len(result['runs']) - passed} did not"))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>matrix {esc(result['name'])}</title>"
            f"<style>{css}</style></head><body><h1>Compile matrix <span class='muted'>{esc(result['name'])}</span></h1>"
            f"<p class='verdict {'passed' if passed == len(result['runs']) else 'failed'}'>{esc(verdict)}</p>"
            f"<p class='muted'>{number(float(result.get('seconds') or 0))} s on {esc(where)}; file "
            f"{esc(Path(str(result.get('matrix_file', '?'))).name)}</p>"
            f"<table>{head}{''.join(rows)}</table>{_plot(points)}</body></html>")
