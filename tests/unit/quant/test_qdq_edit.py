"""The speed space's graph edit: the stem (exact 1/255 input grid) and the head's output convs turned INT8."""

import json

import numpy as np

from yolo_compile import images
from yolo_compile.quant import graph as qgraph
from yolo_compile.quant.qdq_edit import SILU_MIN, asymmetric_proxy, int8_convs, uint8_qparams
from yolo_compile.runtimes.registry import open_runner


def test_stem_and_output_convs_become_int8_and_the_model_still_agrees(quantized_run, tmp_path):
    res = json.loads((quantized_run / "quantize" / "result.json").read_text())
    src = quantized_run / res["onnx"]
    head = qgraph.find_head(__import__("onnx").load(str(quantized_run / "export" / "model.onnx")).graph, 22)
    convs = {"/model.0/conv/Conv": (0.0, 1.0), **{n: (SILU_MIN, 4.0) for n in head.output_convs}}
    done = int8_convs(src, tmp_path / "edit.onnx", convs, seven_bit=("/model.0/conv/Conv",))
    assert set(done) == set(convs)
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "edit.onnx")).graph.initializer}
    assert np.abs(w["/model.0/conv/Conv/w_int8"]).max() == 64  # the image-reading conv: 7-bit weights (AVX2 overflow)
    assert max(np.abs(w[f"{n}/w_int8"]).max() for n in head.output_convs) == 127
    _, quantized = qgraph.inspect_qdq(tmp_path / "edit.onnx")
    assert set(convs) <= set(quantized) and not set(quantized) & set(head.dfl + head.decode)
    assert uint8_qparams(0.0, 1.0) == (1 / 255, 0)  # pixels k/255 sit exactly on the grid
    cal = json.loads((quantized_run / "calibrate" / "result.json").read_text())
    x = images.to_float(np.asarray(np.load(quantized_run / cal["array"], mmap_mode="r")[:2]))
    for backend in ("onnxruntime", "openvino"):
        a, b = open_runner(backend, src).run(x), open_runner(backend, tmp_path / "edit.onnx").run(x)
        assert np.isfinite(b).all() and np.abs(a[:, :4] - b[:, :4]).max() < 8.0  # boxes in pixels at 64 px


def test_the_speed_proxy_has_asymmetric_activations_and_computes_nearly_the_same(quantized_run, tmp_path):
    """The mixed preset's speed is timed on the performance preset with its activation zero points moved off 0."""
    import onnx
    from onnx import numpy_helper

    res = json.loads((quantized_run / "quantize" / "result.json").read_text())
    src = quantized_run / res["onnx"]
    sym = tmp_path / "sym.onnx"  # make every activation zero point 0 first (the performance preset's kind)
    m = onnx.load(str(src))
    acts = {n.input[2] for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) == 3}
    for i in m.graph.initializer:
        if i.name in acts and numpy_helper.to_array(i).ndim == 0:
            i.CopyFrom(numpy_helper.from_array(np.zeros((), numpy_helper.to_array(i).dtype), i.name))
    onnx.save(m, str(sym))
    n = asymmetric_proxy(sym, tmp_path / "proxy.onnx")
    assert n >= len(acts) - 1 > 0
    zps = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "proxy.onnx")).graph.initializer if i.name in acts]
    assert all(int(z) != 0 for z in zps if z.ndim == 0)
    cal = json.loads((quantized_run / "calibrate" / "result.json").read_text())
    x = images.to_float(np.asarray(np.load(quantized_run / cal["array"], mmap_mode="r")[:2]))
    a, b = open_runner("openvino", sym).run(x), open_runner("openvino", tmp_path / "proxy.onnx").run(x)
    assert np.isfinite(b).all() and np.abs(a[:, :4] - b[:, :4]).max() < 8.0
