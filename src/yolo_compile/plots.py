"""Pictures: matplotlib PNGs saved atomically into the run folder, and small inline SVG charts for the report.

The SVG charts need nothing but the standard library, so a report can be redrawn anywhere (no display,
no fonts, no scripts) and stays one self-contained file.
"""

from __future__ import annotations

import html
from pathlib import Path

PRECISION_COLOURS = {"INT8": "#2e7d32", "FP16": "#ef8a17", "FP32": "#1f5fa8"}
SERIES_COLOURS = ("#1f5fa8", "#ef8a17", "#2e7d32", "#b00020", "#6a3d9a", "#8c564b", "#17becf", "#7f7f7f")


def subplots(*args, **kwargs):
    """Return (fig, axes) from pyplot.subplots on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig, path: Path) -> Path:
    """Write fig as a PNG at path (atomically), close it, and return path."""
    import matplotlib.pyplot as plt

    from yolo_compile.fileio import atomic_path
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def number(v: float) -> str:
    """Return v with thousands separators from 100 up, else three significant digits (1.23, 0.0456)."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


_fmt = number


def precision_strip(layers: list[dict], width: int = 1040) -> str:
    """Return an SVG strip with one cell per layer ({name, op, precision, head}) in graph order, head bracketed."""
    if not layers:
        return ""
    n = len(layers)
    cell = max(1.0, min(14.0, (width - 20) / n))
    h, top = 34, 6
    parts = []
    for i, layer in enumerate(layers):
        colour = PRECISION_COLOURS.get(layer["precision"], "#999")
        parts.append(f'<rect x="{10 + i * cell:.2f}" y="{top}" width="{max(cell - 0.4, 0.6):.2f}" height="{h}" '
                     f'fill="{colour}"><title>{i}: {_esc(layer["name"])} ({_esc(layer["op"])}, '
                     f'{_esc(layer["precision"])}{", head" if layer.get("head") else ""})</title></rect>')
    head = [i for i, layer in enumerate(layers) if layer.get("head")]
    y = top + h + 4
    if head:
        x0, x1 = 10 + head[0] * cell, 10 + (head[-1] + 1) * cell
        parts.append(f'<path d="M{x0:.1f} {y} v6 H{x1:.1f} v-6" fill="none" stroke="#222" stroke-width="1.5"/>'
                     f'<text x="{(x0 + x1) / 2:.1f}" y="{y + 18}" text-anchor="middle" font-size="12">detection head '
                     f'({len(head)} layers)</text>')
    parts.append(f'<text x="10" y="{y + 18}" font-size="12">input</text>'
                 f'<text x="{10 + n * cell:.1f}" y="{y + 32}" text-anchor="end" font-size="12">output</text>')
    total_w = int(20 + n * cell)
    return (f'<svg class="strip" role="img" aria-label="precision of every layer" viewBox="0 0 {total_w} {y + 38}" '
            f'width="{total_w}" height="{y + 38}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def bar_chart(labels: list[str], series: dict[str, list[float | None]], title: str, unit: str = "",
              vmax: float | None = None, width: int = 520) -> str:
    """Return a horizontal grouped bar chart as SVG: one group per label, one bar per series."""
    if not labels or not series:
        return ""
    names = list(series)
    values = [v for vals in series.values() for v in vals if v is not None]
    top = vmax if vmax is not None else max(values + [1e-12])
    top = top or 1.0
    label_w, bar_h, gap = int(min(190, 16 + 6.3 * max(len(str(x)[:26]) for x in labels))), 11, 7
    group_h = bar_h * len(names) + gap
    plot_w = width - label_w - 60
    legend_h = 18
    height = 24 + legend_h + group_h * len(labels) + 6
    parts = [f'<text x="0" y="14" font-size="13" font-weight="600">{_esc(title)}</text>']
    for j, name in enumerate(names):
        x = label_w + j * 120
        parts.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{SERIES_COLOURS[j % 8]}"/>'
                     f'<text x="{x + 14}" y="33" font-size="11">{_esc(name)}</text>')
    y0 = 24 + legend_h
    for i, label in enumerate(labels):
        y = y0 + i * group_h
        parts.append(f'<text x="{label_w - 6}" y="{y + group_h / 2 + 2}" text-anchor="end" font-size="11">'
                     f'{_esc(str(label)[:26])}</text>')
        for j, name in enumerate(names):
            v = series[name][i] if i < len(series[name]) else None
            by = y + j * bar_h
            if v is None:
                parts.append(f'<text x="{label_w + 2}" y="{by + bar_h - 2}" font-size="10" fill="#888">n/a</text>')
                continue
            w = max(0.0, min(1.0, v / top)) * plot_w
            parts.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 1}" fill="{SERIES_COLOURS[j % 8]}">'
                         f'<title>{_esc(label)}, {_esc(name)}: {_fmt(v)}{_esc(unit)}</title></rect>'
                         f'<text x="{label_w + w + 3:.1f}" y="{by + bar_h - 2}" font-size="10">{_fmt(v)}{_esc(unit)}</text>')
    return (f'<svg class="chart" role="img" aria-label="{_esc(title)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               width: int = 560, height: int = 260) -> str:
    """Return an SVG line chart of (x, y) points per series (x on a log2 axis when it spans powers of two)."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    import math

    xs = sorted({p[0] for p in pts})
    log = len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 4
    fx = (lambda x: math.log2(x)) if log else (lambda x: x)  # noqa: E731
    x_lo, x_hi = fx(min(xs)), fx(max(xs))
    y_hi = max(p[1] for p in pts) * 1.1 or 1.0
    left, right, top, bottom = 56, 200, 26, 40
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (0.5 if x_hi == x_lo else (fx(x) - x_lo) / (x_hi - x_lo)) * pw

    def py(y: float) -> float:
        return top + ph - y / y_hi * ph

    parts = [f'<text x="0" y="14" font-size="13" font-weight="600">{_esc(title)}</text>',
             f'<path d="M{left} {top} V{top + ph} H{left + pw}" fill="none" stroke="#444"/>',
             f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{_esc(xlabel)}</text>',
             f'<text x="12" y="{top + ph / 2}" font-size="11" transform="rotate(-90 12 {top + ph / 2})" '
             f'text-anchor="middle">{_esc(ylabel)}</text>']
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 14}" text-anchor="middle" font-size="10">{_fmt(x)}</text>')
    for frac in (0.0, 0.5, 1.0):
        v = y_hi / 1.1 * frac
        parts.append(f'<text x="{left - 4}" y="{py(v) + 3:.1f}" text-anchor="end" font-size="10">{_fmt(v)}</text>')
    for j, (name, s) in enumerate(series.items()):
        colour = SERIES_COLOURS[j % 8]
        s = sorted(s)
        d = " ".join(f"{'M' if k == 0 else 'L'}{px(x):.1f} {py(y):.1f}" for k, (x, y) in enumerate(s))
        parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"><title>{_esc(name)}, {_esc(xlabel)} '
                  f'{_fmt(x)}: {_fmt(y)} {_esc(ylabel)}</title></circle>' for x, y in s]
        parts.append(f'<rect x="{left + pw + 10}" y="{top + j * 16}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + pw + 24}" y="{top + j * 16 + 9}" font-size="10">{_esc(name[:32])}</text>')
    return (f'<svg class="chart" role="img" aria-label="{_esc(title)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def pareto_chart(points: list[dict], bar: float | None, title: str, width: int = 560, height: int = 300) -> str:
    """Return an SVG of mAP drop (y) vs images/s (x): one dot per candidate with its noise bars, the chosen one
    ringed, FP32 a square, the accept_drop bar a dashed line ('' without timed points)."""
    pts = [p for p in points if p.get("images_per_s")]
    if not pts:
        return ""
    left, right, top, bottom = 56, 20, 26, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [p["images_per_s"] * (1 + s * p.get("speed_noise", 0)) for p in pts for s in (-1, 1)]
    ys = [(p.get("drop_points") or 0) + s * (p.get("drop_noise") or 0) for p in pts if p.get("drop_points") is not None
          for s in (-1, 1)] + ([bar] if bar else []) + [0.0]
    x_lo, x_hi = min(xs) * 0.97, max(xs) * 1.03
    y_lo, y_hi = min(ys), max(ys)
    y_lo, y_hi = y_lo - 0.05 * ((y_hi - y_lo) or 1), y_hi + 0.1 * ((y_hi - y_lo) or 1)
    px = lambda x: left + (x - x_lo) / ((x_hi - x_lo) or 1) * pw  # noqa: E731
    py = lambda y: top + ph - (y - y_lo) / ((y_hi - y_lo) or 1) * ph  # noqa: E731
    parts = [f'<text x="0" y="14" font-size="13" font-weight="600">{_esc(title)}</text>',
             f'<path d="M{left} {top} V{top + ph} H{left + pw}" fill="none" stroke="#444"/>',
             f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="11">images/s (batch {pts[0].get("batch", 1)})</text>',
             f'<text x="12" y="{top + ph / 2}" font-size="11" transform="rotate(-90 12 {top + ph / 2})" '
             f'text-anchor="middle">mAP50-95 drop (points)</text>']
    for v in (x_lo, (x_lo + x_hi) / 2, x_hi):
        parts.append(f'<text x="{px(v):.1f}" y="{top + ph + 14}" text-anchor="middle" font-size="10">{_fmt(v)}</text>')
    for v in (y_lo, (y_lo + y_hi) / 2, y_hi):
        parts.append(f'<text x="{left - 4}" y="{py(v) + 3:.1f}" text-anchor="end" font-size="10">{_fmt(v)}</text>')
    if bar:
        parts.append(f'<path d="M{left} {py(bar):.1f} H{left + pw}" stroke="#b00020" stroke-dasharray="5 4"/>'
                     f'<text x="{left + pw - 2}" y="{py(bar) - 3:.1f}" text-anchor="end" font-size="10" fill="#b00020">'
                     f'accept_drop {_fmt(bar)}</text>')
    for p in pts:
        if p.get("drop_points") is None:  # timed, never scored (slower than the winner): on the x axis only
            x = px(p["images_per_s"])
            parts.append(f'<path d="M{x:.1f} {top + ph - 4} V{top + ph + 4}" stroke="#7f7f7f" stroke-width="2">'
                         f'<title>{_esc(p["candidate"])}: {_fmt(p["images_per_s"])} images/s, not scored</title></path>')
            continue
        x, y = px(p["images_per_s"]), py(p["drop_points"])
        dx = px(p["images_per_s"] * (1 + p.get("speed_noise", 0))) - x
        dy = py(p["drop_points"] - (p.get("drop_noise") or 0)) - y
        colour = "#2e7d32" if p.get("chosen") else "#1f5fa8" if p["candidate"] != "fp32" else "#444"
        tip = (f'{_esc(p["candidate"])}: drop {_fmt(p["drop_points"])} &#177; {_fmt(p.get("drop_noise") or 0)}, '
               f'{_fmt(p["images_per_s"])} images/s &#177; {p.get("speed_noise", 0):.0%}; {_esc(p.get("why", ""))}')
        parts.append(f'<path d="M{x - dx:.1f} {y:.1f} H{x + dx:.1f} M{x:.1f} {y - dy:.1f} V{y + dy:.1f}" stroke="{colour}"/>')
        shape = (f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}">' if p["candidate"] == "fp32"
                 else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if p.get("chosen") else 3.5}" fill="{colour}">')
        parts.append(shape + f'<title>{tip}</title>{"</rect>" if p["candidate"] == "fp32" else "</circle>"}')
        if p.get("chosen") or p["candidate"] == "fp32":
            parts.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}" font-size="10">{"chosen" if p.get("chosen") else "FP32"}</text>')
    return (f'<svg class="chart" role="img" aria-label="{_esc(title)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def grouped_bars(ax, rows: list[dict], series: str, group: str, value: str, group_label: str, ylabel: str) -> None:
    """Draw one bar series per distinct rows[series], grouped by rows[group], heights rows[value]."""
    names = list(dict.fromkeys(r[series] for r in rows))
    groups = sorted({r[group] for r in rows})
    width = 0.8 / len(names)
    for i, m in enumerate(names):
        vals = [next((r[value] for r in rows if r[series] == m and r[group] == g), 0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=m)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))], [f"{group_label} {g}" for g in groups])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
