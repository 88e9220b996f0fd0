"""The quantize stage's scorer: candidates' mAP drop from FP32 (or label-free agreement), its paired-bootstrap noise,
and sequential scoring that stops a candidate once it is decisively outside the bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo_compile.evaluate.accuracy import (LabeledSplit, agreement_map, cache_entry, load_detections, map_of_rows,
                                            matched, predict, predict_cached, open_scoring_runner, store_detections)
from yolo_compile.evaluate.detections import Detections


class Scorer:
    """Scores quantized candidates against FP32 on one image set: mAP drop on labels, or agreement without them.

    With a labeled split, a candidate's figure is its mAP50-95 drop from FP32 in points. Without labels, FP32's
    own confident detections are the labels (agreement with FP32, label-free), and the figure is the same kind
    of drop. Detections are kept per model so that two candidates' difference gets a paired bootstrap noise.
    """

    def __init__(self, fp32: Path, array: np.ndarray, size: int, names: dict, *, split: LabeledSplit | None = None,
                 backend: str = "onnxruntime", conf: float = 0.25, array_key: str = "", cache_dir: Path | None = None):
        self.array, self.size, self.names, self.split = array, size, names, split
        self.array_key, self.cache_dir = array_key, cache_dir
        self.backend, self.conf = backend, conf
        self.kind = "map50_95 drop on labels" if split is not None else "label-free: agreement with FP32 (mAP50-95 against FP32's detections)"
        self.dets: dict[str, list[Detections]] = {}
        self.stopped: dict[str, dict] = {}  # candidates stopped early by the sequential rule (score with a bar)
        self.rows: dict[int, tuple] = {}  # id(detections) -> (detections, per-image matches): kept alive together
        self.ref = self.predict(fp32, "fp32")
        self.base = self.value(self.ref, range(len(array)))

    def predict(self, path: Path, label: str) -> list[Detections]:
        """Return (and keep under label) one model's detections on the image set."""
        self.dets[label] = predict_cached(path, self.array, self.array_key, self.cache_dir, backend=self.backend,
                                          desc=f"score {label}")
        return self.dets[label]

    def value(self, dets: list[Detections], idx) -> float:
        """Return mAP50-95 x 100 of dets over the images idx (against labels, or against FP32's detections)."""
        idx = list(idx)
        if self.split is not None:
            key = id(dets)
            if key not in self.rows:  # matched once per model; every subset and resample reuses it
                self.rows[key] = (dets, matched(dets, self.split, self.size)["all"])
            return 100 * (map_of_rows(self.rows[key][1], idx)[0] or 0.0)
        return 100 * agreement_map([self.ref[i] for i in idx], [dets[i] for i in idx], self.conf)

    def score(self, path: Path, label: str, bar: float | None = None) -> float:
        """Return the candidate's drop from FP32 in points (smaller is better).

        With a bar (accept_drop) and enough images, scoring is sequential: on a random quarter of the images,
        then half, the candidate stops once its drop there exceeds the bar by more than STOP_Z paired-bootstrap
        standard deviations (it cannot come within the bar on the full split); `self.stopped[label]` then says
        on how many images. A candidate within reach is always scored on every image.
        """
        n = len(self.array)
        entry = (cache_entry(path, self.backend, self.array_key, self.cache_dir)
                 if self.cache_dir is not None and self.array_key else None)
        dets = load_detections(entry) if entry is not None else None
        if dets is None:
            if bar is not None and n >= STOP_MIN_IMAGES:
                dets = self._sequential(path, label, bar)
                if dets is None:  # stopped early
                    return self.stopped[label]["drop_points"]
            else:
                dets = predict(path, self.array, desc=f"score {label}", backend=self.backend)
            if entry is not None:
                store_detections(entry, dets)
        self.dets[label] = dets
        return round(self.base - self.value(dets, range(n)), 3)

    def finish(self, path: Path, label: str) -> float:
        """Score a stopped candidate on the images it skipped; return its drop on every image (and cache it)."""
        dets = list(self.dets[label])
        todo = np.array([i for i, d in enumerate(dets) if d is None], np.int64)
        if len(todo):
            for i, d in zip(todo, predict(path, self.array, desc=f"score {label} (the rest)", backend=self.backend,
                                          index=todo)):
                dets[i] = d
            if self.cache_dir is not None and self.array_key:
                store_detections(cache_entry(path, self.backend, self.array_key, self.cache_dir), dets)
        self.dets[label] = dets
        self.stopped.pop(label, None)
        return round(self.base - self.value(dets, range(len(self.array))), 3)

    def _sequential(self, path: Path, label: str, bar: float) -> list[Detections] | None:
        """Score in looks over a fixed random order; return all detections, or None (and self.stopped) when stopped."""
        n = len(self.array)
        order = np.random.default_rng(0).permutation(n)
        dets: list[Detections | None] = [None] * n
        done = 0
        runner = open_scoring_runner(path, self.backend)  # compiled once for every look
        for frac in STOP_LOOKS + (1.0,):
            k = n if frac == 1.0 else int(n * frac)
            chunk = np.sort(order[done:k])
            part = predict(path, self.array, desc=f"score {label} ({k} of {n} images)", backend=self.backend,
                           runner=runner, index=chunk)
            dets = list(dets)  # a new list per look: matched rows are kept per list
            for i, d in zip(chunk, part):
                dets[i] = d
            done = k
            if k == n:
                return dets
            idx = np.sort(order[:k])
            drop = self.value(self.ref, idx) - self.value(dets, idx)
            sd = self._paired_sd(self.ref, dets, idx, rounds=40)
            if drop - STOP_Z * sd > bar:
                self.dets[label] = dets
                self.stopped[label] = {"images": int(k), "of": int(n), "drop_points": round(float(drop), 3),
                                       "noise_points": round(sd, 3),
                                       "why": (f"stopped after {k} of {n} images: drop {drop:.3f} exceeds the bar "
                                               f"{bar:g} by more than {STOP_Z:g} x its paired-bootstrap noise "
                                               f"({sd:.3f}) on those images")}
                return None
        return dets

    def _paired_sd(self, a: list, b: list, idx, rounds: int = 40, seed: int = 0) -> float:
        """Return the paired-bootstrap standard deviation (over the images idx) of value(a) - value(b)."""
        rng = np.random.default_rng(seed)
        idx = np.asarray(list(idx))
        diffs = []
        for _ in range(rounds):
            pick = idx[rng.integers(0, len(idx), len(idx))]
            diffs.append(self.value(a, pick) - self.value(b, pick))
        return float(np.std(diffs))

    def noise(self, a: str, b: str, rounds: int = 40, seed: int = 0) -> float:
        """Return the paired-bootstrap standard deviation (over images) of the drop difference between a and b.

        Over the images both were scored on (all, unless one stopped early).
        """
        da, db = self.dets[a], self.dets[b]
        idx = [i for i in range(len(self.array)) if da[i] is not None and db[i] is not None]
        return round(self._paired_sd(da, db, idx, rounds, seed), 3)


STOP_LOOKS = (0.25, 0.5)  # sequential scoring: looks after these fractions of the images
STOP_Z = 3.0  # ... stop once the drop there exceeds the bar by more than this many paired-bootstrap deviations
STOP_MIN_IMAGES = 100  # ... on fewer images than this a quarter is too few to look at: every candidate is scored in full
