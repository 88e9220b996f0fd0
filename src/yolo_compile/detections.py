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
    import torch
    from torchvision.ops import batched_nms

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
    idx = batched_nms(torch.from_numpy(boxes), torch.from_numpy(score), torch.from_numpy(cls), iou).numpy()[:max_det]
    return Detections(boxes[idx], score[idx], cls[idx].astype(np.int64))


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
