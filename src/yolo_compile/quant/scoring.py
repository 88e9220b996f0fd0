"""How quantize candidates are scored: one Scorer on the labeled split, else held-out images, else calibration images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo_compile import images, runs


def make_scorer(cfg, run_dir: Path, exp: dict, src: Path, data: np.ndarray, target: str):
    """Return a scorer.Scorer on the runtime that ships for the target; its `where` says on which images."""
    from yolo_compile.evaluate import accuracy
    from yolo_compile.evaluate import scorer as scorer_mod
    from yolo_compile.runtimes.registry import scoring_backend

    size = int(exp["imgsz"])
    names = {int(k): v for k, v in exp["class_names"].items()}
    backend = scoring_backend(target)
    n = cfg.score_images
    cache = runs.cache_root(run_dir)
    if cfg.data:
        split = accuracy.read_split(cfg.data)
        keep = images.sample(list(range(len(split.images))), n or len(split.images), 1)
        split = accuracy.LabeledSplit([split.images[i] for i in keep], [split.labels[i] for i in keep],
                                      [split.shapes[i] for i in keep])
        imgs = images.preprocessed(split.images, size, cache, desc="labeled images")
        scorer = scorer_mod.Scorer(src, imgs.array, size, names, split=split, backend=backend,
                                 array_key=imgs.key, cache_dir=cache)
        where = f"{len(split.images)} labeled images of {cfg.data}"
    elif cfg.eval_dir:
        paths = images.sample(images.list_images(cfg.eval_dir), n or 64, 1)
        imgs = images.preprocessed(paths, size, cache, desc="held-out images")
        scorer = scorer_mod.Scorer(src, imgs.array, size, names, backend=backend, array_key=imgs.key,
                                 cache_dir=cache)
        where = f"{len(paths)} held-out images of {cfg.eval_dir} (no labels: pass data= for mAP)"
    else:
        arr = data[-min(len(data), n or 64):]
        scorer = scorer_mod.Scorer(src, arr, size, names, backend=backend)
        where = (f"{len(arr)} calibration images (no labels and no eval_dir: agreement with FP32 on the images the "
                 "scales came from; pass data= for mAP)")
    scorer.where = where
    return scorer
