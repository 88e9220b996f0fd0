"""Conveyor sequence and feature delta encoding: determinism, exact lossless deltas, drift, the split head."""

import numpy as np
import pytest

from yolo_compile.reference import conveyor
from yolo_compile.bandwidth import delta

SMALL = conveyor.Conveyor(frame_size=(320, 240), speed_px=16, move_frames=3, dwell_frames=2, gap_px=32)


def test_conveyor_is_deterministic_and_steps_then_dwells():
    a, b = conveyor.Sequence(SMALL, 8), conveyor.Sequence(SMALL, 8)
    for i in (0, 3, 7):
        (fa, la), (fb, lb) = a.frame(i), b.frame(i)
        assert fa.shape == (240, 320, 3) and np.array_equal(fa, fb) and la == lb
    assert [SMALL.offset(i) for i in range(7)] == [0, 16, 32, 48, 48, 48, 64]
    assert [SMALL.moving(i) for i in range(6)] == [False, True, True, True, False, False]
    f0, f1 = a.frame(0)[0].astype(int), a.frame(1)[0].astype(int)
    assert np.abs(f0 - f1).mean() > 1  # it moved (and fresh noise on every frame)
    for _, x0, y0, x1, y1 in a.frame(3)[1]:
        assert 0 <= x0 < x1 <= 320


def test_generate_caches_frames_by_key(tmp_path):
    paths = conveyor.generate(tmp_path, 3, SMALL)
    assert [p.name for p in paths] == ["conveyor_00000.jpg", "conveyor_00001.jpg", "conveyor_00002.jpg"]
    assert paths[0].parent.parent.name == SMALL.key(3) and (paths[0].parent.parent / "manifest.json").is_file()
    stamp = paths[1].stat().st_mtime_ns
    assert conveyor.generate(tmp_path, 3, SMALL) == paths and paths[1].stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="at least 2"):
        conveyor.generate(tmp_path, 1, SMALL)


def test_lossless_delta_round_trips_and_deadzone_drifts_only_open_loop():
    rng = np.random.default_rng(0)
    q = np.cumsum(rng.integers(-2, 3, (12, 50)), axis=0).clip(-128, 127).astype(np.int8)
    for a, b in ((q[0], q[1]), (np.int8([-128, 127]), np.int8([127, -128]))):
        d = delta.wrap_delta(a, b)
        assert d.dtype == np.uint8 and np.array_equal((a.view(np.uint8) + d).view(np.int8), b)
    for closed in (False, True):
        r, _ = delta.reconstruct(q, keyframe=100, deadzone=0, closed_loop=closed)
        assert np.array_equal(r, q)
    r_open, sent = delta.reconstruct(q, keyframe=100, deadzone=1, closed_loop=False)
    r_closed, _ = delta.reconstruct(q, keyframe=100, deadzone=1, closed_loop=True)
    err = lambda r: np.abs(r.astype(int) - q.astype(int)).max()  # noqa: E731
    assert err(r_closed) <= 1 < err(r_open)  # closed loop is bounded by the dead zone; open loop accumulates
    r_key, _ = delta.reconstruct(q, keyframe=4, deadzone=1, closed_loop=False)
    assert all(np.array_equal(r_key[t], q[t]) for t in (0, 4, 8)) and (sent[1:] == 0).mean() > 0.3


def test_split_head_on_graph_scales_reproduces_the_compiled_output(quantized_run, image_sets, tmp_path):
    import json

    import onnx
    import onnxruntime as ort

    from yolo_compile import images

    exp = json.loads((quantized_run / "export" / "result.json").read_text())
    qpath = quantized_run / "quantize" / "model.quant.onnx"
    levels = delta.head_features(onnx.load(str(qpath)), exp["head_index"])
    assert [lv["level"] for lv in levels] == ["P3", "P4", "P5"] and all(lv["quantized"] for lv in levels)
    fpath, hpath = delta.split_model(qpath, levels, tmp_path)
    x = images.load_tensor(images.list_images(image_sets["eval"])[0], exp["imgsz"])[None]
    out = ort.InferenceSession(str(fpath), providers=["CPUExecutionProvider"]).run(None, {exp["input_name"]: x})
    feeds = {lv["tensor"]: (delta.quantize(f, lv["scale"], lv["zero_point"]).astype(np.float32) - lv["zero_point"])
             * np.float32(lv["scale"]) for lv, f in zip(levels, out[1:])}
    (head_out,) = ort.InferenceSession(str(hpath), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(head_out, out[0], rtol=0, atol=1e-4)  # Q(DQ(q)) = q: the head sees the same INT8


def test_measure_reports_levels_phases_and_keyframe_rows(quantized_run, tmp_path, monkeypatch):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(quantized_run, run_dir)
    monkeypatch.setenv("YOLO_COMPILE_CACHE", str(tmp_path / "cache"))
    res = delta.measure(run_dir, 6, keyframes=(1, 3), deadzones=(1,), line=SMALL)
    assert [r["level"] for r in res["levels"]] == ["P3", "P4", "P5"]
    assert all(0 <= r["delta_zero_fraction"] <= 1 and r["zstd_delta_bytes"] > 0 for r in res["levels"])
    assert {r["belt"] for r in res["phases"]} == {"moving", "standing"}
    rows = {(r["keyframe_every"], r["loop"]): r for r in res["keyframes"]}
    assert set(rows) == {(1, "-"), (3, "open"), (3, "closed")}
    assert rows[(1, "-")]["drift_max_steps"] == 0 and rows[(1, "-")]["map_change_points"] == 0
    assert res["full_int8_bytes"] == 64 * 8 * 8 + 128 * 4 * 4 + 256 * 2 * 2  # P3/P4/P5 of YOLOv8n at 64 px
