"""Tensor-level comparison of raw YOLO outputs: the compare function Polygraphy's Comparator calls, and its statistics."""

from __future__ import annotations

import numpy as np


def error_stats(diff: np.ndarray) -> dict:
    """Return max/mean/median/p99 of |diff| (and how many elements) as plain floats."""
    d = np.abs(diff.astype(np.float64)).ravel()
    if d.size == 0:
        return {"count": 0, "max": 0.0, "mean": 0.0, "median": 0.0, "p99": 0.0}
    return {"count": int(d.size), "max": float(d.max()), "mean": float(d.mean()),
            "median": float(np.median(d)), "p99": float(np.quantile(d, 0.99))}


class YoloCompareFunc:
    """Polygraphy compare_func for raw YOLO outputs (B, 4 + classes, anchors): boxes and scores judged apart.

    Boxes are pixel coordinates and only matter where the FP32 model is confident, so they are judged on
    anchors whose best FP32 score reaches `conf`; scores are judged everywhere. NaN or Inf always fails.
    """

    def __init__(self, box_atol: float, score_atol: float, conf: float):
        self.box_atol, self.score_atol, self.conf = box_atol, score_atol, conf
        self.diffs: dict[str, dict[str, list[np.ndarray]]] = {}
        self.nonfinite: dict[str, int] = {}
        self.confident: dict[str, int] = {}

    def __call__(self, ref, test) -> dict[str, bool]:
        verdicts = {}
        for name in ref.keys():
            a = np.asarray(ref[name].numpy() if hasattr(ref[name], "numpy") else ref[name], dtype=np.float32)
            b = np.asarray(test[name].numpy() if hasattr(test[name], "numpy") else test[name], dtype=np.float32)
            bad = int((~np.isfinite(b)).sum() + (~np.isfinite(a)).sum())
            self.nonfinite[name] = self.nonfinite.get(name, 0) + bad
            mask = a[:, 4:, :].max(axis=1) >= self.conf  # (B, anchors)
            self.confident[name] = self.confident.get(name, 0) + int(mask.sum())
            box_diff = (a[:, :4, :] - b[:, :4, :]).transpose(0, 2, 1)[mask]
            score_diff = a[:, 4:, :] - b[:, 4:, :]
            store = self.diffs.setdefault(name, {"boxes": [], "scores": []})
            store["boxes"].append(box_diff.ravel())
            store["scores"].append(score_diff.ravel())
            ok_box = box_diff.size == 0 or float(np.quantile(np.abs(box_diff), 0.99)) <= self.box_atol
            ok_score = float(np.quantile(np.abs(score_diff), 0.99)) <= self.score_atol
            verdicts[f"{name}[boxes]"] = bool(ok_box and bad == 0)
            verdicts[f"{name}[scores]"] = bool(ok_score and bad == 0)
        return verdicts

    def summary(self) -> tuple[dict, list[str]]:
        """Return (stats per output and channel group, reasons the gate failed: empty when it passed)."""
        stats, reasons = {}, []
        for name, groups in self.diffs.items():
            boxes = np.concatenate(groups["boxes"]) if groups["boxes"] else np.zeros(0)
            scores = np.concatenate(groups["scores"])
            stats[name] = {"boxes": error_stats(boxes), "scores": error_stats(scores),
                           "confident_anchors": self.confident[name], "nonfinite": self.nonfinite[name]}
            if self.nonfinite[name]:
                reasons.append(f"{name}: {self.nonfinite[name]} NaN/Inf values")
            if boxes.size and stats[name]["boxes"]["p99"] > self.box_atol:
                reasons.append(f"{name} boxes: p99 error {stats[name]['boxes']['p99']:.3g} px > box_atol {self.box_atol}")
            if stats[name]["scores"]["p99"] > self.score_atol:
                reasons.append(f"{name} scores: p99 error {stats[name]['scores']['p99']:.3g} > score_atol {self.score_atol}")
        return stats, reasons
