"""Every backend behind one interface, on the tiny real model: same outputs, described, skipped with a reason."""

import numpy as np
import pytest

from yolo_compile.runtimes import registry as backends
from yolo_compile.runtimes import openvino
from yolo_compile.errors import CompileError

from conftest import IMGSZ


@pytest.fixture(scope="module")
def batch(image_sets):
    from yolo_compile import images

    files = images.list_images(image_sets["eval"])[:2]
    return np.stack([images.load_tensor(p, IMGSZ) for p in files])


@pytest.mark.parametrize("model", ["export/model.onnx", "quantize/model.quant.onnx"])
def test_openvino_and_onnxruntime_agree_on_the_same_onnx(quantized_run, batch, model):
    ort = backends.open_runner("onnxruntime", quantized_run / model)
    ov = backends.open_runner("openvino", quantized_run / model)
    assert ort.input_name == ov.input_name == "images" and ort.static_batch is ov.static_batch is None
    want, got = ort.run(batch), ov.run(batch)
    assert got.shape == want.shape == (2, 4 + 80, 84)
    if model.startswith("export"):
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)
    else:  # INT8 kernels round differently per runtime: scores stay close, boxes (random-model pixels) within ~2%
        np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=1e-2)
        box_err = np.median(np.abs(got[:, :4] - want[:, :4])) / np.median(np.abs(want[:, :4]))
        assert box_err < 0.05
    for runner in (ort, ov):
        runner.warm_up(batch, n=1)
        call = runner.prepare(batch)
        call()
        desc = runner.describe()
        assert desc["backend"] == runner.name and desc["device"] == "cpu" and desc["version"]


def test_pytorch_eager_matches_the_exported_onnx(quantized_run, batch):
    torch_runner = backends.open_runner("pytorch", quantized_run / "export" / "model.pt")
    ort = backends.open_runner("onnxruntime", quantized_run / "export" / "model.onnx")
    np.testing.assert_allclose(torch_runner.run(batch), ort.run(batch), atol=1e-2, rtol=1e-3)
    assert torch_runner.describe()["variant"] == "fp32 eager" and torch_runner.device == "cpu"
    with pytest.raises(CompileError, match="need device='cuda'"):
        backends.open_runner("pytorch", quantized_run / "export" / "model.pt", half=True)


def test_missing_or_unknown_backends_say_why(quantized_run):
    ok, why = backends.available("tensorrt")
    if ok:
        pytest.skip("TensorRT and a GPU are present here")
    assert "tensorrt" in why.lower() or "gpu" in why.lower()
    with pytest.raises(CompileError, match="backend tensorrt"):
        backends.open_runner("tensorrt", quantized_run / "export" / "model.onnx")
    assert backends.available("tflite") == (False, backends.available("tflite")[1])
    assert "expected one of onnxruntime, openvino, pytorch, tensorrt" in backends.available("tflite")[1]
    with pytest.raises(CompileError, match="not found"):
        backends.open_runner("onnxruntime", quantized_run / "missing.onnx")


@pytest.mark.parametrize("model", ["export/model.onnx", "quantize/model.quant.onnx"])
def test_openvino_cache_gives_the_converted_model_back_with_identical_outputs(quantized_run, batch, model, tmp_path):
    fresh = backends.open_runner("openvino", quantized_run / model).run(batch)  # no cache: convert_model itself
    try:
        openvino.use_openvino_cache(tmp_path / "ov")
        first = backends.open_runner("openvino", quantized_run / model).run(batch)  # converts, then keeps the IR
        entries = list((tmp_path / "ov").iterdir())
        assert len(entries) == 1 and (entries[0] / "model.xml").is_file() and (entries[0] / "model.bin").is_file()
        (entries[0] / "model.bin").touch()
        mtime = (entries[0] / "model.bin").stat().st_mtime_ns
        again = backends.open_runner("openvino", quantized_run / model).run(batch)  # read back: nothing rewritten
        assert (entries[0] / "model.bin").stat().st_mtime_ns == mtime and len(list((tmp_path / "ov").iterdir())) == 1
        (entries[0] / "model.xml").write_text("<damaged/>")
        repaired = backends.open_runner("openvino", quantized_run / model).run(batch)  # a damaged entry is replaced
        assert "damaged" not in (entries[0] / "model.xml").read_text()
    finally:
        openvino.use_openvino_cache(None)
    for got in (first, again, repaired):
        np.testing.assert_array_equal(got, fresh)
