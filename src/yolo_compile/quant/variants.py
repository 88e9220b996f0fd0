"""One variant of the quantized model for the accuracy study: Q/DQ placed by ModelOpt, scales from shared statistics.

The serial study (`study.Study.quantize`) and its Ray tasks (`study_parallel`) build variants with these two
functions, so a variant built on a worker is the file the driver would have built: same template, same
statistics, same scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from yolo_compile.quant import scales


def build(src: Path, dst: Path, data: np.ndarray, exp: dict, hp_dtype: str, method: str,
          stats_of: Callable[[list[str]], scales.ActivationStats], work: Path, *, exclude=None, include=None) -> Path:
    """Write dst: ModelOpt's Q/DQ placement from one image of data, activation scales of `method` from stats_of."""
    from yolo_compile.quant.modelopt import modelopt_quantize

    template = Path(work) / f"template-{dst.name}"
    modelopt_quantize(src, template, data[:1], exp, "max", hp_dtype, exclude=exclude, include=include)
    tensors = list(scales.activation_qdq(template))
    stats = scales.merged(stats_of(tensors), scales.shared_groups(src, template))
    scales.apply(template, scales.thresholds(stats, method), dst)
    template.unlink()
    return dst


def complete(stats: scales.ActivationStats, src: Path, tensors: list[str], data: np.ndarray) -> scales.ActivationStats:
    """Return stats (updated in place) covering tensors: one pass over data for any tensor it lacks."""
    missing = [t for t in dict.fromkeys(scales.source_name(t) for t in tensors) if t not in stats.amax]
    if missing:
        more = scales.collect(src, missing, data, desc=f"statistics of {len(missing)} more tensors")
        for part in ("amax", "top", "hist", "fixed"):
            getattr(stats, part).update(getattr(more, part))
    return stats
