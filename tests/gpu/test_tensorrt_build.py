"""TensorRT through Polygraphy on a real GPU: strongly typed plan, timing cache, profile, layer precisions, TrtRunner.

Skipped with the reason where `tensorrt` does not import or no NVIDIA GPU is visible (TensorRT is never faked).
"""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: pip install 'yolo-compile[tensorrt]' on an NVIDIA host")

from yolo_compile.stages import build
from yolo_compile.stages import throughput  # noqa: E402
from yolo_compile.runtimes.tensorrt import tensorrt_available  # noqa: E402
from yolo_compile.errors import BuildError  # noqa: E402

from conftest import IMGSZ  # noqa: E402


@pytest.fixture
def trt_run(tmp_path_factory, image_sets, tiny_checkpoint):
    from yolo_compile.stages import calibrate
    from yolo_compile.stages import export
    from yolo_compile.stages import quantize

    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(why)
    run_dir = tmp_path_factory.mktemp("trt") / "run"
    export.run(export.ExportConfig(model=str(tiny_checkpoint), imgsz=IMGSZ), run_dir)
    calibrate.run(calibrate.CalibrateConfig(calib_dir=str(image_sets["calib"]), calib_images=8), run_dir)
    quantize.run(quantize.QuantizeConfig(target="tensorrt", recipe="mixed", calibration_method="max", quantizer="modelopt"), run_dir)
    return run_dir


def test_strongly_typed_build_saves_plan_cache_and_precision_table(trt_run):
    cache = trt_run.parent / "timing.cache"
    res = build.run(build.BuildConfig(target="tensorrt", batch_sizes=(1, 2, 4), timing_cache=str(cache)), trt_run)
    assert res.status == "passed" and res.backend == "tensorrt"
    assert (trt_run / res.engine).stat().st_size == res.engine_bytes and cache.stat().st_size > 0
    assert res.details["profile"] == {"min": 1, "opt": 2, "max": 4}
    table = json.loads((trt_run / "build" / "model.layers.json").read_text())
    assert table["counts"].get("INT8", 0) > 0 and table["head_int8_layers"] == []
    assert any(c.startswith("trtexec") and "--stronglyTyped" in c for c in res.commands)
    again = build.run(build.BuildConfig(target="tensorrt", batch_sizes=(1, 2, 4), timing_cache=str(cache)), trt_run)
    assert again.seconds <= res.seconds * 1.5  # the cache was loaded, not rebuilt from nothing


def test_engine_runs_in_polygraphy_trtrunner_and_matches_onnxruntime(trt_run):
    import onnxruntime as ort
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    res = build.run(build.BuildConfig(target="tensorrt", batch_sizes=(1, 2, 4)), trt_run)
    x = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with TrtRunner(EngineFromBytes(BytesFromPath(str(trt_run / res.engine)))) as runner:
        got = runner.infer({"images": x})["output0"]
    want = ort.InferenceSession(str(trt_run / "export" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    scores = slice(4, None)
    np.testing.assert_allclose(got[:, scores], want[:, scores], atol=0.05)


def test_throughput_times_the_engine_on_the_device(trt_run):
    build.run(build.BuildConfig(target="tensorrt", batch_sizes=(1, 2)), trt_run)
    res = throughput.run(throughput.ThroughputConfig(batch_sizes=(1, 2), warmup=1, iterations=5, max_seconds=1,
                                                     pytorch=False), trt_run)
    assert {r["batch"] for r in res.rows if r["backend"] == "tensorrt" and r["device"] == "cuda"} == {1, 2}


def test_missing_hardware_level_is_an_error_not_a_silent_fallback(trt_run):
    if hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY"):
        pytest.skip(f"TensorRT {trt.__version__} has SAME_COMPUTE_CAPABILITY")
    with pytest.raises(BuildError, match="hardware_compatibility"):
        build.run(build.BuildConfig(target="tensorrt", hardware_compatibility="same_compute_capability"), trt_run)
