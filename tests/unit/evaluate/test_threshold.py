"""Precision, recall and F1 at the working threshold: scores that shrink below conf cost recall, not mAP."""

import numpy as np

from yolo_compile.evaluate import threshold
from yolo_compile.evaluate.accuracy import LabeledSplit
from yolo_compile.evaluate.detections import Detections


def _split() -> LabeledSplit:
    # two images 100x100 (letterboxed into 100: no scaling), one object of class 0 and one of class 1 each
    lbl = np.array([[0, 0.25, 0.25, 0.2, 0.2], [1, 0.75, 0.75, 0.2, 0.2]], np.float32)
    return LabeledSplit(["a.jpg", "b.jpg"], [lbl, lbl], [(100, 100), (100, 100)])


def _dets(score1: float) -> list[Detections]:
    boxes = np.array([[15, 15, 35, 35], [65, 65, 85, 85], [0, 0, 5, 5]], np.float32)
    return [Detections(boxes, np.array([0.9, score1, 0.3], np.float32), np.array([0, 1, 0]))] * 2


def test_shrunk_scores_cost_recall_at_conf_and_the_gate_says_so():
    names = {0: "a", 1: "b"}
    f = threshold.at_threshold(_dets(0.8), _split(), 100, names, conf=0.25)
    q = threshold.at_threshold(_dets(0.2), _split(), 100, names, conf=0.25)  # class b's score fell below conf
    assert f["all"]["recall"] == 1.0 and f["all"]["detections"] == 6 and f["all"]["precision"] == round(4 / 6, 4)
    assert q["per_class"]["a"] == f["per_class"]["a"] and q["all"]["detections"] == 4
    assert "b" not in q["per_class"] or q["per_class"]["b"]["recall"] == 0.0
    out = threshold.compare(f, q, 0.25, 0.5, f1_drop_max=5.0)
    row_b = next(r for r in out["per_class"] if r["class"] == "b")
    assert row_b["detections_fp32"] == 2 and row_b["detections_quantized"] == 0 and row_b["f1_drop_points"] == 100.0
    assert out["f1_drop_points"] > 5 and not out["passed"] and out["detections_ratio"] == round(4 / 6, 4)
    assert threshold.compare(f, q, 0.25, 0.5)["passed"]  # f1_drop_max 0: reported, not gated
