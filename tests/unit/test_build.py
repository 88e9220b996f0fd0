import json

import numpy as np
import pytest

from yolo_compile import build, throughput
from yolo_compile.errors import BuildError

from conftest import IMGSZ

# Shape of TensorRT's engine inspector output (LayerInformationFormat.JSON, ProfilingVerbosity.DETAILED).
INSPECTOR = {
    "Layers": [
        {"Name": "/model.0/conv/Conv + /model.0/act/Sigmoid", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "images_q", "Format/Datatype": "Channel major INT8 format where channel % 32 == 0"}],
         "Outputs": [{"Name": "x", "Format/Datatype": "Channel major INT8 format where channel % 32 == 0"}]},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /model.22/cv2.0/cv2.0.2/Conv", "LayerType": "Reformat",
         "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}], "Outputs": []},
        {"Name": "/model.22/cv2.0/cv2.0.2/Conv", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "y", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}], "Outputs": []},
        {"Name": "/model.22/dfl/Softmax", "LayerType": "Softmax",
         "Inputs": [{"Name": "z", "Format/Datatype": "Row major linear FP32"}], "Outputs": []},
    ],
    "Bindings": ["images", "output0"],
}


def test_layer_precision_table_from_inspector_json():
    table = build.layer_precisions(json.dumps(INSPECTOR), "/model.22/")
    assert table["counts"] == {"INT8": 1, "FP16": 2, "FP32": 1}
    assert table["reformat_layers"] == 1 and table["head_int8_layers"] == []
    build.check_precisions(table, "mixed")


def test_guards_fail_on_int8_head_or_no_int8_at_all():
    leaked = json.loads(json.dumps(INSPECTOR))
    leaked["Layers"][2]["Inputs"][0]["Format/Datatype"] = "Channel major INT8 format where channel % 32 == 0"
    with pytest.raises(BuildError, match="head layers run INT8"):
        build.check_precisions(build.layer_precisions(leaked, "/model.22/"), "mixed")
    build.check_precisions(build.layer_precisions(leaked, "/model.22/"), "int8")  # head INT8 is that recipe's point
    none = {"Layers": INSPECTOR["Layers"][1:]}
    with pytest.raises(BuildError, match="no layer runs INT8"):
        build.check_precisions(build.layer_precisions(none, "/model.22/"), "mixed")
    with pytest.raises(BuildError, match="names only"):
        build.layer_precisions({"Layers": ["a", "b"]}, "/model.22/")


def test_profile_and_equivalent_commands():
    assert build.profile_batches((32, 1, 8)) == (1, 8, 32)
    trtexec, poly = build.tensorrt_commands("q.onnx", "e.plan", "images", 640, (1, 8, 32), "t.cache")
    assert "--stronglyTyped" in trtexec and "--minShapes=images:1x3x640x640" in trtexec
    assert "--maxShapes=images:32x3x640x640" in trtexec and "--int8" not in trtexec and "--fp16" not in trtexec
    assert poly.startswith("polygraphy convert q.onnx --strongly-typed")


def test_cpu_build_saves_an_optimized_onnxruntime_model_that_matches(run_copy):
    import onnxruntime as ort

    res = build.run(build.BuildConfig(target="cpu"), run_copy)
    assert res.status == "passed" and res.backend == "onnxruntime"
    x = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(run_copy / res.engine), run(run_copy / "quantize" / "model.quant.onnx"), atol=1e-4)


def test_tensorrt_target_without_tensorrt_is_skipped_with_reason_and_commands(run_copy):
    ok, _ = build.tensorrt_available()
    if ok:
        pytest.skip("TensorRT is present here; the skip path cannot happen")
    res = build.run(build.BuildConfig(target="tensorrt"), run_copy)
    assert res.status == "skipped" and "tensorrt" in res.reason
    assert any(c.startswith("trtexec") for c in res.commands) and any("papermill" in c for c in res.commands)
    tp = throughput.run(throughput.ThroughputConfig(), run_copy)
    assert tp.status == "skipped" and "no engine was built" in tp.reason
