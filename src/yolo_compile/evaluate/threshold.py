"""Accuracy at the working threshold: precision, recall, F1 and how many detections pass `conf`, FP32 vs quantized.

mAP integrates over every score, so an INT8 model whose scores shrink keeps its mAP while fewer boxes pass the
production threshold. These figures are taken at the one threshold a deployment uses (conf, IoU), per class.
"""

from __future__ import annotations

import numpy as np

from yolo_compile.evaluate.accuracy import LabeledSplit, _match, letterbox_boxes
from yolo_compile.evaluate.detections import Detections


def _prf(tp: int, n_det: int, n_gt: int) -> dict:
    p = tp / n_det if n_det else 0.0
    r = tp / n_gt if n_gt else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4), "detections": int(n_det),
            "targets": int(n_gt), "true_positives": int(tp)}


def at_threshold(dets: list[Detections], split: LabeledSplit, size: int, names: dict, conf: float = 0.25,
                 iou: float = 0.5) -> dict:
    """Return {all, per_class}: precision, recall, F1 and detections above conf (matched at IoU iou) on the split."""
    tp: dict[int, int] = {}
    nd: dict[int, int] = {}
    ng: dict[int, int] = {}
    for d, lbl, shape in zip(dets, split.labels, split.shapes):
        keep = d.scores >= conf
        boxes, cls = d.boxes[keep], d.classes[keep].astype(np.int64)
        gt, gcls = letterbox_boxes(lbl, shape, size), lbl[:, 0].astype(np.int64)
        ok = _match(boxes, cls, gt, gcls, np.array([iou]))[:, 0]
        for c in set(cls.tolist()) | set(gcls.tolist()):
            tp[c] = tp.get(c, 0) + int(ok[cls == c].sum())
            nd[c] = nd.get(c, 0) + int((cls == c).sum())
            ng[c] = ng.get(c, 0) + int((gcls == c).sum())
    per = {str(names.get(c, c)): _prf(tp[c], nd[c], ng[c]) for c in sorted(nd)}
    return {"all": _prf(sum(tp.values()), sum(nd.values()), sum(ng.values())), "per_class": per}


def compare(fp32: dict, quant: dict, conf: float, iou: float, f1_drop_max: float = 0.0) -> dict:
    """Return FP32 vs quantized at the working threshold: overall, a row per class, the F1 drop and its gate."""
    rows = []
    for c in dict.fromkeys([*fp32["per_class"], *quant["per_class"]]):
        f, q = fp32["per_class"].get(c, _prf(0, 0, 0)), quant["per_class"].get(c, _prf(0, 0, 0))
        rows.append({"class": c, "targets": max(f["targets"], q["targets"]),
                     **{f"{k}_fp32": f[k] for k in ("precision", "recall", "f1", "detections")},
                     **{f"{k}_quantized": q[k] for k in ("precision", "recall", "f1", "detections")},
                     "f1_drop_points": round(100 * (f["f1"] - q["f1"]), 2)})
    drop = round(100 * (fp32["all"]["f1"] - quant["all"]["f1"]), 2)
    out = {"conf": conf, "iou": iou, "fp32": fp32["all"], "quantized": quant["all"], "f1_drop_points": drop,
           "detections_ratio": round(quant["all"]["detections"] / fp32["all"]["detections"], 4)
           if fp32["all"]["detections"] else None, "per_class": rows, "f1_drop_max": f1_drop_max}
    out["passed"] = f1_drop_max <= 0 or drop <= f1_drop_max
    return out
