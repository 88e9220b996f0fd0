import numpy as np
import pytest

from yolo_compile.evaluate.detections import Detections, agreement, box_iou, decode


def _raw(boxes_cxcywh, class_scores, anchors=10, classes=3):
    out = np.zeros((4 + classes, anchors), np.float32)
    for a, (box, scores) in enumerate(zip(boxes_cxcywh, class_scores)):
        out[:4, a] = box
        out[4:, a] = scores
    return out


def test_decode_suppresses_overlaps_within_a_class_only():
    raw = _raw([(50, 50, 20, 20), (51, 50, 20, 20), (50, 50, 20, 20), (200, 200, 10, 10)],
               [(0.9, 0, 0), (0.8, 0, 0), (0, 0.7, 0), (0, 0, 0.0005)])
    d = decode(raw, conf=0.001, iou=0.7)
    assert sorted((int(c), round(float(s), 2)) for c, s in zip(d.classes, d.scores)) == [(0, 0.9), (1, 0.7)]
    assert np.allclose(d.boxes[d.classes == 0][0], [40, 40, 60, 60])


def test_box_iou():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert np.allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]], atol=1e-6)


def _dets(boxes, scores, classes):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(classes))


def test_agreement_counts_matches_by_class_and_iou():
    ref = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 1])]
    same = agreement(ref, ref, {0: "a", 1: "b"})
    assert same["all"]["recall"] == same["all"]["precision"] == 1.0 and same["all"]["mean_iou"] == pytest.approx(1.0)
    moved = [_dets([[0, 0, 10, 10], [26, 20, 36, 30]], [0.7, 0.8], [0, 1])]  # second box IoU 0.25
    res = agreement(ref, moved, {0: "a", 1: "b"})
    assert res["all"]["recall"] == 0.5 and res["per_class"]["b"]["recall"] == 0.0
    assert res["per_class"]["a"]["score_drift"] == pytest.approx(0.2)
    wrong_class = [_dets([[0, 0, 10, 10]], [0.9], [1])]
    assert agreement(ref, wrong_class, {})["all"]["matched"] == 0


@pytest.mark.parametrize("n", [300, 2500])  # torchvision offsets the groups up to 1000 boxes, loops over them above
@pytest.mark.parametrize("max_det", [300, 40])
def test_batched_nms_keeps_exactly_what_torchvision_keeps(n, max_det):
    import torch
    from torchvision.ops import batched_nms as tv_batched_nms

    from yolo_compile.evaluate.detections import batched_nms

    rng = np.random.default_rng(n + max_det)
    xy = rng.uniform(-20, 620, (n, 2)).astype(np.float32)  # some corners off the frame, as YOLO boxes can be
    wh = rng.uniform(0, 120, (n, 2)).astype(np.float32)
    wh[:10] = 0  # degenerate boxes (0/0 IoU)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = np.round(rng.uniform(0.001, 1, n), 2).astype(np.float32)  # many exact ties
    groups = rng.integers(0, 5, n)
    ours = batched_nms(boxes, scores, groups, 0.7, max_det)
    ref = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.7).numpy()
    assert len(ours) == min(max_det, len(ref)) > 20
    assert np.array_equal(scores[ours], scores[ref[:max_det]])  # the same scores, best first
    assert set(batched_nms(boxes, scores, groups, 0.7, n).tolist()) == set(ref.tolist())  # the same boxes survive
    # Cut at max_det, a tie at the cut may fall either way (torchvision's final sort is not stable); above it, none can.
    above = scores[ours] > scores[ours[-1]]
    assert set(ours[above].tolist()) == set(ref[:max_det][above].tolist())


def test_batched_nms_of_nothing_is_empty():
    from yolo_compile.evaluate.detections import batched_nms

    kept = batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.7)
    assert kept.shape == (0,) and kept.dtype == np.int64
