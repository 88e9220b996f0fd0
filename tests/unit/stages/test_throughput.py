"""Throughput on CPU: the backends this machine has, what it skipped and why, camera frames end to end, uint8 input."""

import json

import numpy as np
import pytest

from yolo_compile import images
from yolo_compile.stages import build
from yolo_compile.stages import export
from yolo_compile.gpu import frames
from yolo_compile.stages import throughput
from yolo_compile.errors import ExportError, ThroughputError

from conftest import IMGSZ


@pytest.fixture(scope="module")
def timed_run(quantized_run, image_sets, tmp_path_factory):
    """A copy of quantized_run with a CPU engine built and the throughput stage run (short timings)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("tp") / "run"
    shutil.copytree(quantized_run, run_dir)
    build.run(build.BuildConfig(target="cpu"), run_dir)
    cfg = throughput.ThroughputConfig(cpu_batch_sizes=(1, 2), warmup=1, iterations=20, max_seconds=0.5,
                                      budget_seconds=4, eval_dir=str(image_sets["eval"]), streams=(2,), e2e_batches=3)
    return run_dir, throughput.run(cfg, run_dir)


def test_sweep_times_fp32_and_quantized_on_both_cpu_runtimes_within_the_budget(timed_run):
    _, res = timed_run
    pairs = (("fp32 onnx", "onnxruntime"), ("engine (onnxruntime)", "onnxruntime"), ("fp32 onnx", "openvino"),
             ("quantized onnx", "openvino"))
    timed = {(r["model"], r["backend"], r["batch"]) for r in res.rows}
    assert timed >= {(m, be, 1) for m, be in pairs} | {("pytorch fp32 eager", "pytorch", 1)}  # batch 1 always
    for m, be in pairs[:2]:  # the shipped runtime: batch 2 is timed, or skipped because the budget was spent, saying so
        label = m if be in m else f"{m} ({be})"
        assert (m, be, 2) in timed or f"{label} at batch 2: the sweep's budget (budget_seconds=4) was spent" in res.skipped
    assert not {(m, be, 2) for m, be in pairs[2:]} & timed  # the runtime that does not ship: batch 1 only, said so
    assert any(s.startswith("openvino at batch 2: it does not ship") for s in res.skipped)
    assert all(r["images_per_s"] > 0 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in res.rows)
    assert all(r["stopped"] in ("stable", "iterations", "seconds") for r in res.rows)
    assert [(r["batch"], r["model"]) for r in res.rows if r["shipped"]][0] == (1, "engine (onnxruntime)")
    assert res.verdict.startswith("batch 1: INT8 on OpenVINO") and "ONNX Runtime INT8 is" in res.verdict


def test_cpu_run_says_what_it_skipped_and_why(timed_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: nothing GPU-related is skipped")
    _, res = timed_run
    text = "\n".join(res.skipped)
    assert "PyTorch CUDA" in text and "no CUDA device" in text
    assert "TensorRT engine" in text and "GPU decode (nvJPEG)" in text and "PyTorch FP32 eager on the CPU at batch 2" in text


def test_cpu_end_to_end_decodes_jpegs_and_writes_table_and_plot(timed_run):
    run_dir, res = timed_run
    (row,) = res.end_to_end
    assert row["mode"] == "serial" and row["streams"] == 2 and row["frames_per_s"] > 0
    assert row["host_decode_ms"] > 0 and row["inference_ms"] > 0 and row["path"] == "cpu decode, float32 (onnxruntime cpu)"
    table = (run_dir / res.table).read_text()
    assert "## Batch sweep" in table and "## End to end" in table and "pytorch fp32 eager" in table and "## Verdict" in table
    assert (run_dir / res.plot).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run_dir / "throughput" / "result.json").read_text())["end_to_end_summary"]


@pytest.mark.parametrize("layout", ["nhwc_bgr", "nchw_rgb"])
def test_uint8_input_model_equals_float_model_on_the_same_image(quantized_run, image_sets, tmp_path, layout):
    import onnxruntime as ort

    src = quantized_run / "export" / "model.onnx"
    fused = export.fuse_uint8_input(src, tmp_path / "model.uint8.onnx", layout)
    img = images.read_bgr(images.list_images(image_sets["eval"])[0])
    boxed = images.letterbox(img, IMGSZ)[None]  # 1 x H x W x 3 uint8 BGR, as cv2 leaves it
    frame = boxed if layout == "nhwc_bgr" else np.ascontiguousarray(boxed[..., ::-1].transpose(0, 3, 1, 2))
    sess_u8 = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    sess_f = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    assert sess_u8.get_inputs()[0].type == "tensor(uint8)"
    (got,) = sess_u8.run(None, {sess_u8.get_inputs()[0].name: frame})
    (want,) = sess_f.run(None, {"images": images.to_tensor(img, IMGSZ)[None]})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_export_option_writes_the_uint8_model_and_rejects_unknown_layouts(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="uint8_input"):
        export.ExportConfig(model=str(tiny_checkpoint), uint8_input="rgb")
    res = export.run(export.ExportConfig(model=str(tiny_checkpoint), imgsz=IMGSZ, uint8_input="nchw_rgb"), tmp_path)
    assert res.uint8_onnx == "export/model.uint8.onnx" and (tmp_path / res.uint8_onnx).is_file()
    assert res.onnx == "export/model.onnx"  # the float model stays what the other stages use


def test_letterbox_geometry_matches_images_letterbox():
    for h, w in ((720, 960), (960, 1280), (120, 160), (500, 333)):
        nh, nw, top, left = frames.letterbox_geometry(h, w, 64)
        boxed = images.letterbox(np.full((h, w, 3), 7, np.uint8), 64)
        rows, cols = np.nonzero(boxed[..., 0] == 7)
        assert (rows.min(), cols.min(), rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()) == (top, left, nh, nw)


def test_nms_keeps_the_best_of_overlapping_boxes_per_image():
    import torch

    pred = torch.zeros(2, 4 + 3, 4)
    pred[0, :4, 0] = torch.tensor([50, 50, 20, 20])
    pred[0, :4, 1] = torch.tensor([51, 50, 20, 20])  # overlaps anchor 0, lower score
    pred[0, 4, 0], pred[0, 4, 1] = 0.9, 0.8
    pred[0, :4, 2] = torch.tensor([10, 10, 8, 8])
    pred[0, 6, 2] = 0.5  # another class, elsewhere
    dets = frames.torch_nms(pred)
    assert len(dets) == 2 and dets[1].shape == (0, 6)
    assert dets[0].shape == (2, 6) and dets[0][0, 4] == pytest.approx(0.9)
    assert dets[0][0, :4].tolist() == [40, 40, 60, 60] and dets[0][1, 5] == 2


def test_latency_stats_and_config_checks():
    s = throughput.latency_stats([0.01, 0.02, 0.03, 0.04], batch=4)  # re-exported from timing
    assert s["p50_ms"] == pytest.approx(25.0) and s["images_per_s"] == pytest.approx(16 / 0.1)
    assert throughput.batches_for(["batch", 3, 64, 64], (8, 1)) == [1, 8]
    assert throughput.batches_for([1, 3, 64, 64], (8, 1)) == [1]
    with pytest.raises(ThroughputError, match="streams"):
        throughput.ThroughputConfig(streams=())


def test_png_frames_skip_the_end_to_end_check_with_the_reason(timed_run, tmp_path):
    """Line-scan PNG frames (binary-aoi) have no JPEG stream to decode: the stage passes and says why it skipped."""
    import shutil

    run_dir, _ = timed_run
    pngs = tmp_path / "png"
    pngs.mkdir()
    import cv2

    cv2.imwrite(str(pngs / "a.png"), np.full((64, 64, 3), 255, np.uint8))
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for p in copy.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(copy / "throughput")
    cfg = throughput.ThroughputConfig(cpu_batch_sizes=(1,), warmup=1, iterations=5, max_seconds=0.2, budget_seconds=1,
                                      eval_dir=str(pngs), streams=(2,), e2e_batches=2, pytorch=False)
    res = throughput.run(cfg, copy)
    assert res.status == "passed" and res.end_to_end == []
    assert any("no .jpg/.jpeg frames" in s and "JPEG camera streams" in s for s in res.skipped)
