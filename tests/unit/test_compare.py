import json

import numpy as np
import pytest

from yolo_compile import compare
from yolo_compile.errors import CompareError


def _outputs(anchors=50, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[:, :4] = rng.uniform(0, 640, (1, 4, anchors))
    out[:, 4:] = rng.uniform(0, 0.1, (1, classes, anchors))
    out[0, 4, :5] = 0.9  # five confident anchors
    return out


def _judge(ref, test, **kw):
    func = compare.YoloCompareFunc(**{"box_atol": 2.0, "score_atol": 0.05, "conf": 0.25, **kw})
    verdict = func({"output0": ref}, {"output0": test})
    return verdict, func.summary()


def test_identical_outputs_pass():
    a = _outputs()
    verdict, (stats, reasons) = _judge(a, a.copy())
    assert all(verdict.values()) and reasons == []
    assert stats["output0"]["confident_anchors"] == 5


def test_box_error_on_a_confident_anchor_fails_but_not_on_background():
    a = _outputs()
    b = a.copy()
    b[0, 0, 40:] += 100.0  # background anchors: boxes there do not matter
    verdict, (_, reasons) = _judge(a, b)
    assert verdict["output0[boxes]"] and not reasons
    b[0, :4, :5] += 10.0  # confident anchors moved by 10 px
    verdict, (stats, reasons) = _judge(a, b)
    assert not verdict["output0[boxes]"] and verdict["output0[scores]"]
    assert stats["output0"]["boxes"]["p99"] == pytest.approx(10.0, rel=1e-4)
    assert "boxes: p99 error 10 px > box_atol 2.0" in reasons[0]


def test_score_drift_fails_the_score_channels_only():
    a = _outputs()
    b = a.copy()
    b[0, 4:] += 0.2
    verdict, (_, reasons) = _judge(a, b)
    assert verdict["output0[boxes]"] and not verdict["output0[scores]"]
    assert any("scores" in r for r in reasons)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_always_fails(bad):
    a = _outputs()
    b = a.copy()
    b[0, 6, 30] = bad
    verdict, (stats, reasons) = _judge(a, b, score_atol=10.0, box_atol=1e6)
    assert not any(verdict.values())
    assert stats["output0"]["nonfinite"] == 1 and "NaN/Inf" in reasons[0]


def test_compare_stage_runs_polygraphy_on_held_out_images(run_copy, image_sets):
    res = compare.run(compare.CompareConfig(eval_dir=str(image_sets["eval"]), eval_images=3), run_copy)
    assert res.passed and res.images == 3
    assert res.polygraphy["runners"] == ["fp32", "quant-mixed"]
    assert res.stats["output0"]["scores"]["count"] == 3 * 80 * 84
    assert (run_copy / res.plot).stat().st_size > 1000


def test_gate_tighter_than_the_model_achieves_fails_and_records_why(run_copy, image_sets):
    with pytest.raises(CompareError, match="accuracy gate failed.*scores: p99 error"):
        compare.run(compare.CompareConfig(eval_dir=str(image_sets["eval"]), eval_images=3, score_atol=1e-12), run_copy)
    res = json.loads((run_copy / "compare" / "result.json").read_text())
    assert res["status"] == "failed" and res["passed"] is False and res["reasons"]


def test_calibration_images_are_refused_for_comparison(run_copy, image_sets):
    with pytest.raises(CompareError, match="used for calibration"):
        compare.run(compare.CompareConfig(eval_dir=str(image_sets["calib"]), eval_images=10), run_copy)
