import json
from pathlib import Path

import numpy as np
import pytest

from yolo_compile.evaluate import accuracy
from yolo_compile.evaluate import scorer as scorer_mod
from yolo_compile.evaluate.detections import Detections
from yolo_compile.errors import CompareError


def _perfect(split, size):
    return [Detections(accuracy.letterbox_boxes(l, s, size).astype(np.float32), np.full(len(l), 0.9, np.float32),
                       l[:, 0].astype(np.int64)) for l, s in zip(split.labels, split.shapes)]


def test_perfect_detections_score_map_one_and_none_score_zero(image_sets):
    split = accuracy.read_split(image_sets["data"])
    assert len(split.images) == 6 and split.shapes[0] == (96, 128)
    res = accuracy.evaluate(_perfect(split, 64), split, 64, {0: "a", 1: "b", 2: "c"})
    assert res["map50_95"] == pytest.approx(1.0, abs=0.01) and res["targets"] == 18
    assert set(res["per_class"]) <= {"a", "b", "c"} and res["small"]["targets"] == 18  # all under 32x32 px
    empty = [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))] * 6
    assert accuracy.evaluate(empty, split, 64, {})["map50_95"] == 0.0


def test_shifted_boxes_lose_map50_95_but_keep_map50(image_sets):
    split = accuracy.read_split(image_sets["data"])
    dets = _perfect(split, 640)
    for d in dets:
        w = d.boxes[:, 2] - d.boxes[:, 0]
        d.boxes[:, [0, 2]] += (0.12 * w)[:, None]  # IoU about 0.79
    res = accuracy.evaluate(dets, split, 640, {})
    assert res["map50"] == pytest.approx(1.0, abs=0.01) and 0.2 < res["map50_95"] < 0.8


def test_agreement_map_is_one_for_identical_and_lower_when_moved(image_sets):
    split = accuracy.read_split(image_sets["data"])
    ref = _perfect(split, 640)
    assert accuracy.agreement_map(ref, ref) == pytest.approx(1.0, abs=0.01)
    moved = [Detections(d.boxes + 4, d.scores, d.classes) for d in ref]
    assert accuracy.agreement_map(ref, moved) < 0.9


def test_letterbox_boxes_map_normalised_labels_into_the_padded_frame():
    lbl = np.array([[0, 0.5, 0.5, 1.0, 1.0]], np.float32)
    assert np.allclose(accuracy.letterbox_boxes(lbl, (480, 640), 640), [[0, 80, 640, 560]])


def test_split_errors_name_the_file(tmp_path):
    with pytest.raises(CompareError, match="no such data.yaml"):
        accuracy.read_split(tmp_path / "missing.yaml")
    (tmp_path / "d.yaml").write_text("train: x\n")
    with pytest.raises(CompareError, match="has no 'val' key"):
        accuracy.read_split(tmp_path / "d.yaml")


@pytest.mark.slow
def test_reference_detector_map_matches_the_recorded_ultralytics_value():
    """Our evaluator against Ultralytics' own val on the reference checkpoint (recorded beside it)."""
    from yolo_compile import images
    from yolo_compile.runs import REPO_ROOT
    from yolo_compile.stages.export import ExportConfig, run as export

    meta = json.loads((REPO_ROOT / "models" / "aoi_yolov8n.json").read_text())
    split = accuracy.read_split(REPO_ROOT / "data" / "aoi" / "data.yaml")
    run_dir = Path(__import__("tempfile").mkdtemp())
    res = export(ExportConfig(model=str(REPO_ROOT / "models" / "aoi_yolov8n.pt")), run_dir)
    arr = np.stack([images.load_tensor(p, 640) for p in split.images])
    m = accuracy.evaluate(accuracy.predict(run_dir / res.onnx, arr, "images"), split, 640, res.class_names)
    assert m["map50_95"] == pytest.approx(meta["fp32_val"]["map50_95"], abs=0.005)


def test_average_precision_equals_ultralytics_ap_per_class():
    """Our AP (no torch import) against Ultralytics' own function, on rows with score ties and missed classes."""
    from ultralytics.utils.metrics import ap_per_class

    rng = np.random.default_rng(3)
    n = 900
    tp = rng.random((n, 10)) < np.linspace(0.8, 0.2, 10)
    conf = np.round(rng.random(n), 2)  # ties
    pred_cls = rng.integers(0, 5, n)  # class 4 is predicted but never labeled
    target_cls = np.concatenate([rng.integers(0, 4, 300), [5, 5]])  # class 5 is labeled but never predicted
    ap, classes = accuracy.average_precision(tp, conf, pred_cls, target_cls)
    ref = ap_per_class(tp, conf, pred_cls, target_cls)
    assert np.array_equal(classes, ref[6]) and ap.shape == (5, 10)
    assert np.allclose(ap, ref[5], rtol=0, atol=1e-12) and ap[-1].sum() == 0


def _shifted_copy(src: Path, dst: Path, px: float) -> Path:
    """The same model with every predicted box moved px pixels right: a candidate worse by construction."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    out = m.graph.output[0]
    shift = np.zeros((1, int(out.type.tensor_type.shape.dim[1].dim_value), 1), np.float32)
    shift[0, 0, 0] = px  # row 0 is the box centre x
    m.graph.initializer.append(numpy_helper.from_array(shift, "shift_x"))
    for n in m.graph.node:
        n.output[:] = [o + "_raw" if o == out.name else o for o in n.output]
    m.graph.node.append(helper.make_node("Add", [out.name + "_raw", "shift_x"], [out.name]))
    onnx.save(m, str(dst))
    return dst


def test_sequential_scoring_stops_a_candidate_decisively_outside_the_bar(quantized_run, tmp_path):
    """With a bar, a candidate far outside it stops after a quarter of the images; one within it is scored on all;
    finishing the stopped one gives the figure scoring it without a bar gives, and both land in the cache."""
    import sys

    from yolo_compile import images

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from conftest import IMGSZ, make_images

    paths = images.list_images(make_images(tmp_path / "imgs", 120, seed=11))
    fp32 = quantized_run / "export" / "model.onnx"
    # the tiny untrained model is confident on few drawn images: 120 frames made of those, so every one counts
    probe = scorer_mod.Scorer(fp32, images.preprocessed(paths, IMGSZ, tmp_path / "probe").array, IMGSZ, {})
    firing = [i for i, d in enumerate(probe.ref) if (d.scores >= probe.conf).any()]
    assert firing, "the tiny model detects nothing confidently on the drawn images"
    array = probe.array[(firing * 120)[:120]]
    key = "tiled-" + "-".join(map(str, firing))
    bad = _shifted_copy(fp32, tmp_path / "bad.onnx", 6.0)
    same = tmp_path / "same.onnx"
    same.write_bytes(fp32.read_bytes())
    scorer = scorer_mod.Scorer(fp32, array, IMGSZ, {}, array_key=key, cache_dir=tmp_path / "cache")
    assert scorer.base > 0 and len(scorer.array) == 120

    assert scorer.score(same, "same", bar=1.0) == 0.0 and "same" not in scorer.stopped
    drop = scorer.score(bad, "bad", bar=1.0)
    stop = scorer.stopped["bad"]
    assert stop["images"] == 30 and stop["of"] == 120 and drop > 1.0 + scorer_mod.STOP_Z * stop["noise_points"]
    assert sum(d is not None for d in scorer.dets["bad"]) == 30 and "stopped after 30 of 120" in stop["why"]
    assert scorer.noise("bad", "fp32") > 0  # the noise of a stopped candidate: over the images it was scored on

    full = scorer.finish(bad, "bad")
    assert "bad" not in scorer.stopped and all(d is not None for d in scorer.dets["bad"])
    unbarred = scorer_mod.Scorer(fp32, array, IMGSZ, {}, array_key=key, cache_dir=tmp_path / "cache2")
    assert unbarred.score(bad, "bad") == full > 1.0
    cached = accuracy.load_detections(accuracy.cache_entry(bad, "onnxruntime", key, tmp_path / "cache"))
    assert [len(d.scores) for d in cached] == [len(d.scores) for d in unbarred.dets["bad"]]
    # a split too small to look at a quarter of is always scored in full
    small = scorer_mod.Scorer(fp32, array[:40], IMGSZ, {})
    assert small.score(bad, "bad", bar=1.0) > 1.0 and not small.stopped
