"""Raw YOLO output -> detections (class-aware NMS), and how well two models' detections agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections in letterboxed pixel coordinates (xyxy), best class per box."""

    boxes: np.ndarray  # (n, 4) float32 xyxy
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int


def decode(output: np.ndarray, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> Detections:
    """Return NMS'd detections of one image from a raw (4 + classes, anchors) YOLO output (cx, cy, w, h)."""
    out = np.asarray(output, dtype=np.float32)
    scores_all = out[4:]
    cls = scores_all.argmax(0)
    score = scores_all[cls, np.arange(out.shape[1])]
    keep = score >= conf
    cx, cy, w, h = out[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    score, cls = score[keep], cls[keep]
    if len(score) > 30000:  # Ultralytics' max_nms: keep the best before the quadratic step
        top = np.argsort(-score)[:30000]
        boxes, score, cls = boxes[top], score[top], cls[top]
    idx = batched_nms(boxes, score, cls, iou, max_det)
    return Detections(boxes[idx], score[idx], cls[idx].astype(np.int64))


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou: float, max_det: int = 300) -> np.ndarray:
    """Return the indices kept by class-aware greedy NMS, best first, at most max_det: torchvision's batched_nms in NumPy.

    The same float32 arithmetic and branches as torchvision's CPU kernel (the per-group loop above 1000 boxes, the
    coordinate offset below it), so the detections, and every mAP computed from them, equal those of
    `torchvision.ops.batched_nms` (tests/test_detections.py checks it on real model outputs); no torch import on a
    CPU compile, where that import costs seconds in every stage's kernel.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    per_group = n * 4 > 4000
    if not per_group:  # boxes of different groups moved apart, as torchvision does
        boxes = boxes + (groups.astype(np.float32) * (boxes.max() + np.float32(1)))[:, None]
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    g = groups[order]
    keep: list[int] = []
    alive = np.arange(n)
    zero = np.float32(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        while len(alive) and len(keep) < max_det:
            i, rest = alive[0], alive[1:]
            keep.append(i)
            w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            gone = inter / (area[i] + area[rest] - inter) > np.float64(iou)
            if per_group:
                gone &= g[rest] == g[i]
            alive = rest[~gone]
    return order[np.asarray(keep, np.int64)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the (len(a), len(b)) IoU matrix of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def agreement(ref: list[Detections], test: list[Detections], names: dict, conf: float = 0.25,
              iou_thr: float = 0.5) -> dict:
    """Match test detections to reference ones (same class, IoU >= iou_thr, greedy by score) above conf.

    Returns overall and per-class recall (reference boxes found), precision (test boxes that match),
    mean IoU and mean |score drift| of the matches. Needs no labels.
    """
    per: dict[int, dict[str, float]] = {}
    for r, t in zip(ref, test):
        rk, tk = r.scores >= conf, t.scores >= conf
        rb, rs, rc = r.boxes[rk], r.scores[rk], r.classes[rk]
        tb, ts, tc = t.boxes[tk], t.scores[tk], t.classes[tk]
        for c in np.union1d(rc, tc):
            acc = per.setdefault(int(c), {"ref": 0, "test": 0, "matched": 0, "iou": 0.0, "drift": 0.0})
            ri, ti = np.flatnonzero(rc == c), np.flatnonzero(tc == c)
            acc["ref"] += len(ri)
            acc["test"] += len(ti)
            if not len(ri) or not len(ti):
                continue
            ious = box_iou(rb[ri], tb[ti])
            taken = np.zeros(len(ti), bool)
            for i in np.argsort(-rs[ri]):
                cand = np.where(taken, 0.0, ious[i])
                j = int(cand.argmax())
                if cand[j] >= iou_thr:
                    taken[j] = True
                    acc["matched"] += 1
                    acc["iou"] += float(cand[j])
                    acc["drift"] += abs(float(rs[ri[i]] - ts[ti[j]]))
    summary = lambda a: {  # noqa: E731
        "reference": a["ref"], "quantized": a["test"], "matched": a["matched"],
        "recall": a["matched"] / a["ref"] if a["ref"] else 1.0,
        "precision": a["matched"] / a["test"] if a["test"] else 1.0,
        "mean_iou": a["iou"] / a["matched"] if a["matched"] else 0.0,
        "score_drift": a["drift"] / a["matched"] if a["matched"] else 0.0,
    }
    total = {k: sum(a[k] for a in per.values()) for k in ("ref", "test", "matched", "iou", "drift")}
    return {"conf": conf, "iou": iou_thr, "all": summary(total),
            "per_class": {str(names.get(c, names.get(str(c), c))): summary(a) for c, a in sorted(per.items())}}
