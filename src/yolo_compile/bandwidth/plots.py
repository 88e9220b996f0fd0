"""The bandwidth stage's plots: bytes a frame by representation, and link utilisation per input path."""

from __future__ import annotations

from pathlib import Path


def plot_budget(res, path: Path) -> Path:
    """Log-scale bars of bytes a frame (inputs, weights' share, activations, output); per-group activations beside."""
    from yolo_compile import plots

    batch = max(res.streams)
    bars = [(r["representation"], r["bytes"], "tab:blue") for r in res.inputs]
    bars += [(f"weights {r['precision']} / frame (batch {batch})", r[f"per_frame_batch_{batch}"], "tab:orange")
             for r in res.weights]
    bars += [(f"activations {r['precision']} (r + w)", r["total_bytes"], "tab:green") for r in res.activations]
    bars.append(("output", res.output_bytes, "tab:gray"))
    fig, (ax, ax2) = plots.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.3]})
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_xscale("log")
    ax.minorticks_off()  # log-scale minor ticks dominate the drawing time
    ax.invert_yaxis()
    ax.set_xlabel("bytes a frame (log)")
    ax.tick_params(axis="y", labelsize=7)
    groups = [r["group"].replace("model.", "") for r in res.layer_groups]
    x = range(len(groups))
    ax2.bar([i - 0.2 for i in x], [(r["fp32_read_bytes"] + r["fp32_written_bytes"]) / 1e6 for r in res.layer_groups],
            0.4, label="fp32")
    ax2.bar([i + 0.2 for i in x], [(r["read_bytes"] + r["written_bytes"]) / 1e6 for r in res.layer_groups], 0.4,
            label="compiled")
    ax2.set_xticks(list(x), groups, fontsize=7)
    ax2.set_xlabel("layer group /model.<i>/")
    ax2.set_ylabel("MB read + written a frame")
    ax2.legend(fontsize=7)
    return plots.save(fig, path)


def plot_links(res, link: str, path: Path) -> Path:
    """Grouped bars: utilisation (%) of every link at the largest stream count, per input path; 100% marked."""
    from yolo_compile import plots

    n = max(res.streams)
    key = f"utilisation_{n}_streams_pct"
    links = list(dict.fromkeys(r["link"] for r in res.links))
    paths = list(dict.fromkeys(r["path"] for r in res.links))
    fig, ax = plots.subplots(figsize=(11, 4))
    width = 0.8 / max(len(paths), 1)
    for i, p in enumerate(paths):
        vals = [next((r[key] for r in res.links if r["link"] == lk and r["path"] == p), 0) for lk in links]
        ax.bar([j + i * width for j in range(len(links))], vals, width, label=p)
    ax.axhline(100, color="red", lw=1)
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(links))],
                  [lk + (" *" if lk == link else "") for lk in links], fontsize=8)
    ax.set_ylabel(f"utilisation at {n} x {res.fps:g} fps (%, log)")
    ax.set_title(f"{n} streams of {res.camera}; * = verdict link; red = saturated", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return plots.save(fig, path)
