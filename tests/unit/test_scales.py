"""One-pass activation statistics -> scales for every calibration method, written into a ModelOpt Q/DQ template."""

import json

import numpy as np
import pytest

from conftest import activation_scales
from yolo_compile import quantize, scales


@pytest.fixture(scope="module")
def setup(quantized_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scales")
    exp = json.loads((quantized_run / "export" / "result.json").read_text())
    fp32 = quantized_run / "export" / "model.onnx"
    cal = json.loads((quantized_run / "calibrate" / "result.json").read_text())
    data = np.load(quantized_run / cal["array"], mmap_mode="r")  # uint8 in the shared cache
    ref = tmp / "modelopt_max.onnx"  # ModelOpt's own max calibration over all images (FP32 weights on disk)
    quantize.modelopt_quantize(fp32, ref, data, exp, "max", "fp32")
    template = tmp / "template.onnx"  # placement only: one image
    quantize.modelopt_quantize(fp32, template, data[:1], exp, "max", "fp32")
    stats = scales.collect(fp32, list(scales.activation_qdq(template)), data, batch=3)
    stats = scales.merged(stats, scales.shared_groups(fp32, template))
    return {"exp": exp, "fp32": fp32, "data": data, "ref": ref, "template": template, "stats": stats, "tmp": tmp}


def test_one_pass_max_scales_equal_modelopt_max_calibration(setup):
    ours = setup["tmp"] / "ours_max.onnx"
    n = scales.apply(setup["template"], scales.thresholds(setup["stats"], "max"), ours)
    ref = activation_scales(setup["ref"])
    assert n > 50 and activation_scales(ours) == pytest.approx(ref, rel=1e-5)


def test_clipping_methods_never_exceed_max_and_stats_round_trip(setup, tmp_path):
    st = setup["stats"]
    hi = scales.thresholds(st, "max")
    for method in ("entropy", "percentile-99.99", "percentile-99.999"):
        th = scales.thresholds(st, method)
        assert all(0 <= th[t] <= hi[t] * (1 + 1e-6) for t in hi)
    st.save(tmp_path / "a.npz")
    back = scales.ActivationStats.load(tmp_path / "a.npz")
    assert back.amax == st.amax and all((back.hist[t] == st.hist[t]).all() for t in st.hist)


def test_entropy_clips_a_rare_far_outlier():
    hist = np.zeros(scales.BINS, np.int64)
    hist[:200] = np.linspace(10_000, 10, 200).astype(np.int64)
    hist[-1] = 1  # one value 10x beyond the rest
    assert scales.entropy_bin(hist) < 400


def test_int8_weights_keep_outputs_and_shrink_the_file(setup, tmp_path):
    import onnxruntime as ort

    src, dst = setup["ref"], tmp_path / "w8.onnx"
    info = scales.int8_weights(src, dst)
    assert info["weights_int8"] > 50
    assert dst.stat().st_size <= 0.35 * setup["fp32"].stat().st_size < src.stat().st_size
    from yolo_compile import images

    x = images.to_float(setup["data"][:2])
    name = setup["exp"]["input_name"]
    a = ort.InferenceSession(str(src)).run(None, {name: x})[0]
    b = ort.InferenceSession(str(dst)).run(None, {name: x})[0]
    assert np.array_equal(a, b)


def test_fp16_template_scales_reach_quantize_and_dequantize_alike(setup, tmp_path):
    """ModelOpt's FP16 graphs (TensorRT target) give Q and DQ separate scale initializers: both must be set.

    Setting only the QuantizeLinear scale left DequantizeLinear on the one-image template's scale, and the model
    lost nearly all its mAP; with both set, our max scales reproduce ModelOpt's own max calibration.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    exp, fp32, data = setup["exp"], setup["fp32"], setup["data"]
    ref, template, ours = tmp_path / "ref16.onnx", tmp_path / "tpl16.onnx", tmp_path / "ours16.onnx"
    quantize.modelopt_quantize(fp32, ref, data, exp, "max", "fp16")
    quantize.modelopt_quantize(fp32, template, data[:1], exp, "max", "fp16")
    stats = scales.collect(fp32, list(scales.activation_qdq(template)), data, batch=3)
    stats = scales.merged(stats, scales.shared_groups(fp32, template))
    scales.apply(template, scales.thresholds(stats, "max"), ours)
    g = onnx.load(str(ours)).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    q_of = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in init}
    pairs = [(q_of[d.input[0]].input[1], d.input[1]) for d in g.node if d.op_type == "DequantizeLinear" and d.input[0] in q_of]
    assert pairs and any(a != b for a, b in pairs)  # the FP16 layout this test is about
    assert all(np.array_equal(init[a], init[b]) for a, b in pairs)
    from yolo_compile import images

    x = images.to_float(data[:2])
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {exp["input_name"]: x})[0]  # noqa: E731
    got, want = run(ours), run(ref)
    scores = slice(4, None)
    assert np.abs(got[:, scores] - want[:, scores]).max() < 0.02  # scores 0..1: same calibration, FP16 rounding apart


def test_overflow_fix_puts_the_first_convs_weights_in_7_bits(setup, tmp_path):
    """A CPU target's ModelOpt file: the conv reading the image has weights in [-64, 64] (no u8 x s8 pair overflows
    16 bits on AVX2), every other conv keeps the full INT8 range."""
    import onnx
    from onnx import numpy_helper

    dst = tmp_path / "w8.onnx"
    scales.int8_weights(setup["ref"], dst)  # setup["ref"] is all-INT8 (stem too), written by modelopt_quantize, fp32
    g = onnx.load(str(dst)).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    ranges = {}
    for n in g.node:
        if n.op_type == "Conv" and n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear":
            w = init[producer[n.input[1]].input[0]]
            ranges[n.name] = int(np.abs(w.astype(np.int32)).max())
    first = [n for n in ranges if "/model.0/" in n]
    assert first and all(ranges[n] <= 64 for n in first)
    assert max(v for n, v in ranges.items() if n not in first) == 127
    assert scales.overflow_fix(dst, setup["exp"]["input_name"]) == []  # already folded to INT8: nothing to redo
