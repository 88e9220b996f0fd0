"""Matplotlib without a display, and figures saved atomically as PNG into the run folder."""

from __future__ import annotations

from pathlib import Path


def subplots(*args, **kwargs):
    """Return (fig, axes) from pyplot.subplots on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig, path: Path) -> Path:
    """Write fig as a PNG at path (atomically), close it, and return path."""
    import matplotlib.pyplot as plt

    from .runs import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
