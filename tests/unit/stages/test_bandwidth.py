"""Bandwidth budget: graph bytes against hand-computed numbers, link arithmetic, and the stage on a real tiny run."""

import json

import numpy as np
import pytest

from yolo_compile.stages import bandwidth
from yolo_compile.bandwidth import traffic
from yolo_compile.errors import BandwidthError

from conftest import IMGSZ


def tiny_qdq_model():
    """Conv (INT8 weights behind DQ) + SiLU -> Q -> DQ -> Conv (FP32 weights): every byte countable by hand."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.integers(-127, 127, (8, 4, 3, 3)).astype(np.int8), "w1_q"),
            numpy_helper.from_array(np.array(0.01, np.float32), "w1_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w1_zp"),
            numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
            numpy_helper.from_array(np.array(0.05, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "a_zp"),
            numpy_helper.from_array(rng.random((2, 8, 1, 1), dtype=np.float32), "w2"),
            numpy_helper.from_array(np.zeros(2, np.float32), "b2")]
    nodes = [helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], name="w1_DequantizeLinear"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["s1"], name="/model.0/act/Sigmoid"),
             helper.make_node("Mul", ["c1", "s1"], ["m1"], name="/model.0/act/Mul"),
             helper.make_node("QuantizeLinear", ["m1", "a_scale", "a_zp"], ["m1_q"], name="m1_QuantizeLinear"),
             helper.make_node("DequantizeLinear", ["m1_q", "a_scale", "a_zp"], ["m1_dq"], name="m1_DequantizeLinear"),
             helper.make_node("Conv", ["m1_dq", "w2", "b2"], ["y"], name="/model.1/conv/Conv")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 8, 8])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_weight_bytes_by_precision_match_hand_count():
    w = traffic.weight_bytes(tiny_qdq_model())
    assert (w.int8_elements, w.float_elements) == (288, 8 + 16 + 2)  # 8x4x3x3 behind DQ; b1, w2, b2 float
    assert w.qparam_bytes == 4 + 1 + 4 + 1  # two FP32 scales, two INT8 zero points
    assert (w.fp32_bytes, w.fp16_bytes) == (4 * 314, 2 * 314)
    assert w.compiled_bytes == 288 + 4 * 26 + 10


def test_activation_bytes_fold_qdq_and_silu_and_price_int8_between_q_and_dq():
    model = tiny_qdq_model()
    c = traffic.activation_traffic(model, "compiled")
    # conv1+SiLU writes 8x8x8 INT8 once (Q fused), conv2 reads it once; the output and input are counted apart
    assert c.groups["model.0"] == {"read_bytes": 0, "written_bytes": 512, "int8_bytes_written": 512}
    assert c.groups["model.1"]["read_bytes"] == 512 and c.groups["model.1"]["written_bytes"] == 0
    assert (c.input_bytes, c.output_bytes) == (4 * 8 * 8 * 4, 2 * 8 * 8 * 4)
    f32, f16 = traffic.activation_traffic(model, "fp32"), traffic.activation_traffic(model, "fp16")
    assert (f32.read_bytes, f32.written_bytes, f16.read_bytes, f16.written_bytes) == (2048, 2048, 1024, 1024)
    assert traffic.activation_traffic(model, "compiled", batch=4).written_bytes == 512  # bytes a frame, any batch


def test_link_table_arithmetic_against_hand_numbers():
    paths = [{"path": "uint8 upload", "link_in_bytes": 1_000_000, "link_out_bytes": 10_000, "memory_bytes": 50_000_000}]
    rows = {r["link"]: r for r in bandwidth.link_rows(paths, (8,), 30.0)}
    gen4x8 = 8 * 16e9 * 128 / 130 / 8 * 0.86  # 13.546 GB/s
    assert rows["pcie4_x8"]["utilisation_8_streams_pct"] == round(100 * 8 * 30 * 1e6 / gen4x8, 2) == 1.77
    assert rows["pcie4_x8"]["max_streams"] == 451
    assert rows["pcie5_x16"]["gb_per_s"] == 54.19  # what pinned copies reached on the lent H100: 51-54 GB/s
    assert rows["orin_lpddr5"]["utilisation_8_streams_pct"] == 5.86 and rows["orin_lpddr5"]["max_streams"] == 136
    assert rows["10gbe"]["max_streams"] == 39  # 1.187 GB/s of TCP payload / 30 MB/s a stream
    text = bandwidth.verdict(list(rows.values()), "pcie4_x8", 8, "1920x1080", 30.0)
    assert text.startswith("8 streams of 1920x1080 at 30 fps fit a PCIe Gen4 x8 link (13.5 GB/s)") and "1.8%" in text


def test_config_rejects_bad_camera_link_and_delta_frames():
    with pytest.raises(BandwidthError, match="WIDTHxHEIGHT"):
        bandwidth.BandwidthConfig(camera="1080p")
    with pytest.raises(BandwidthError, match="pcie4_x8"):
        bandwidth.BandwidthConfig(link="pcie7_x4")
    with pytest.raises(BandwidthError, match="delta_frames"):
        bandwidth.BandwidthConfig(delta_frames=1)
    assert bandwidth.BandwidthConfig(camera="1280X720").camera_size() == (1280, 720)


@pytest.fixture(scope="module")
def budget(quantized_run, image_sets, tmp_path_factory):
    import shutil

    run_dir = tmp_path_factory.mktemp("bw") / "run"
    shutil.copytree(quantized_run, run_dir)
    cfg = bandwidth.BandwidthConfig(streams=(2, 4), camera="320x240", fps=10, eval_dir=str(image_sets["eval"]))
    return run_dir, bandwidth.run(cfg, run_dir)


def test_stage_budget_on_the_tiny_quantized_run(budget, image_sets):
    import onnx
    from onnx import TensorProto, numpy_helper

    run_dir, res = budget
    rows = {r["representation"]: r["bytes"] for r in res.inputs}
    assert rows["uint8 rgb at 320x240"] == 320 * 240 * 3 and rows[f"fp32 at {IMGSZ}x{IMGSZ}"] == 12 * IMGSZ * IMGSZ
    files = sorted(image_sets["eval"].glob("*.jpg"))
    bpp = 8 * sum(f.stat().st_size for f in files) / (len(files) * 160 * 120)
    assert res.jpeg["bits_per_pixel"] == pytest.approx(bpp) and rows["jpeg bitstream at 320x240"] == round(bpp * 320 * 240 / 8)
    assert res.output_bytes == 84 * 84 * 4  # (4 + 80 classes) x (8^2 + 4^2 + 2^2 anchors) FP32
    fp32 = onnx.load(str(run_dir / "export" / "model.onnx"))
    params = sum(numpy_helper.to_array(t).size for t in fp32.graph.initializer if t.data_type == TensorProto.FLOAT)
    w = {r["precision"]: r for r in res.weights}
    assert w["fp32"]["bytes"] == 2 * w["fp16"]["bytes"]
    assert 4 * params <= w["fp32"]["bytes"] <= 4.04 * params  # ModelOpt copies a few shared constants per consumer
    assert w["compiled"]["bytes"] < w["fp16"]["bytes"] and w["compiled"]["per_frame_batch_4"] == w["compiled"]["bytes"] / 4
    # Q/DQ folded, the quantized graph priced at FP32 moves exactly what the FP32 export moves
    ref = traffic.activation_traffic(fp32, "fp32")
    a = {r["precision"]: r for r in res.activations}
    assert (a["fp32"]["read_bytes"], a["fp32"]["written_bytes"]) == (ref.read_bytes, ref.written_bytes)
    assert a["compiled"]["total_bytes"] < a["fp32"]["total_bytes"]
    assert sum(g["written_bytes"] for g in res.layer_groups) == a["compiled"]["written_bytes"]


def test_stage_writes_verdict_links_table_and_plots(budget):
    run_dir, res = budget
    assert res.verdict.startswith("4 streams of 320x240 at 10 fps fit a PCIe Gen4 x8 link")
    assert {r["path"] for r in res.links} == set(bandwidth.PATHS) and len(res.links) == 3 * len(bandwidth.LINKS)
    assert all("utilisation_2_streams_pct" in r and r["max_streams"] > 0 for r in res.links)
    saved = json.loads((run_dir / "bandwidth" / "result.json").read_text())
    assert saved["verdict"] == res.verdict and saved["status"] == "passed"
    assert "## Links" in (run_dir / res.table).read_text()
    assert all((run_dir / p).read_bytes()[:4] == b"\x89PNG" for p in res.plots)
    assert any("delta_frames is 0" in s for s in res.skipped)


def test_gpu_crosscheck_skips_with_its_reason_without_a_gpu(budget):
    from pathlib import Path

    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        pytest.skip("an NVIDIA GPU is visible: the cross-check runs (tests/gpu)")
    _, res = budget
    assert res.gpu_check == [] and any("GPU cross-check" in s and "no NVIDIA GPU" in s for s in res.skipped)
