import re
import json

import numpy as np
import pytest

from yolo_compile import fileio
from yolo_compile.stages import build
from yolo_compile.stages import throughput
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


def test_cpu_build_ships_only_a_verified_engine_and_builds_no_other(run_copy):
    """Without a compare result naming verified_backends, only ONNX Runtime may ship: OpenVINO is not even built."""
    import onnxruntime as ort

    res = build.run(build.BuildConfig(target="cpu", choice_seconds=0.3), run_copy)
    assert res.status == "passed" and res.backend == "onnxruntime" and res.choice["picked"] == "onnxruntime"
    assert res.choice["candidates"] == ["onnxruntime"]
    assert res.choice["images_per_s"] == {}  # one engine may ship: nothing to decide by timing
    assert "the only engine that may ship (not timed here" in res.choice["reason"]
    assert res.choice["verified_backends"] == ["onnxruntime"]
    assert "openvino: not built, the compare stage did not verify it" in res.choice["reason"]
    assert res.checks["passed"] and "calibration images" in res.checks["images"]
    assert not (run_copy / "build" / "model.xml").exists()  # only the shipped engine stays
    x = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(run_copy / res.engine), run(run_copy / "quantize" / "model.quant.onnx"), atol=1e-4)


def test_cpu_build_ships_the_faster_verified_engine_and_its_ir_equals_the_verified_model(run_copy, image_sets):
    from yolo_compile import images, runs
    from yolo_compile.runtimes import registry as backends

    fileio.write_json(run_copy / "compare" / "result.json",
                    {"status": "passed", "passed": True, "verified_backends": ["onnxruntime", "openvino"]})
    res = build.run(build.BuildConfig(target="cpu", choice_seconds=0.3), run_copy)
    speeds = res.choice["images_per_s"]
    assert res.choice["picked"] == max(speeds, key=speeds.get) == res.backend
    shown = re.search(rf"{res.backend}: ([\d.]+) images/s", res.choice["reason"])  # the reason gives the numbers
    assert shown and abs(float(shown.group(1)) - speeds[res.backend]) <= 0.051
    assert res.checks["passed"] and res.checks["max_abs_diff"] <= 1e-3
    # the IR itself, whichever engine shipped: built from the verified Q/DQ ONNX, same outputs on real images
    from yolo_compile.runtimes import openvino

    ir = openvino.build(run_copy / "quantize" / "model.quant.onnx", run_copy, run_copy / "build")
    assert ir.engine == "build/model.xml" and (run_copy / "build" / "model.bin").is_file()
    x = np.stack([images.load_tensor(p, IMGSZ) for p in images.list_images(image_sets["eval"])])
    got = backends.open_runner("openvino", run_copy / ir.engine).run(x)
    want = backends.open_runner("openvino", run_copy / "quantize" / "model.quant.onnx").run(x)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)


def test_cpu_build_without_openvino_falls_back_to_onnxruntime_with_the_reason(run_copy, monkeypatch):
    from yolo_compile import runs
    from yolo_compile.stages import build_cpu as cpu_engine

    fileio.write_json(run_copy / "compare" / "result.json",
                    {"status": "passed", "passed": True, "verified_backends": ["onnxruntime", "openvino"]})
    real = cpu_engine.available
    monkeypatch.setattr(cpu_engine, "available", lambda n: (False, "the Python package 'openvino' is not installed")
                        if n == "openvino" else real(n))
    res = build.run(build.BuildConfig(target="cpu", choice_seconds=0.3), run_copy)
    assert res.backend == "onnxruntime" and res.choice["candidates"] == ["onnxruntime"]
    assert "openvino: not built, the Python package 'openvino' is not installed" in res.choice["reason"]


def test_tensorrt_target_without_tensorrt_is_skipped_with_reason_and_commands(run_copy):
    ok, _ = build.tensorrt_available()
    if ok:
        pytest.skip("TensorRT is present here; the skip path cannot happen")
    res = build.run(build.BuildConfig(target="tensorrt"), run_copy)
    assert res.status == "skipped" and "tensorrt" in res.reason
    assert any(c.startswith("trtexec") for c in res.commands) and any("papermill" in c for c in res.commands)
    tp = throughput.run(throughput.ThroughputConfig(), run_copy)
    assert tp.status == "skipped" and "no engine was built" in tp.reason
