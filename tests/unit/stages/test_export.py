import json

import pytest

from yolo_compile.stages import export
from yolo_compile.errors import ExportError

from conftest import IMGSZ


def test_export_result_describes_a_static_size_dynamic_batch_model(quantized_run):
    res = json.loads((quantized_run / "export" / "result.json").read_text())
    assert res["status"] == "passed"
    assert res["input_shape"] == ["batch", 3, IMGSZ, IMGSZ]
    assert res["output_shape"][1] == 4 + res["num_classes"] == 84
    assert res["head_index"] == 22 and res["head_type"] == "Detect"
    assert res["opset"] >= 17
    assert (quantized_run / res["onnx"]).stat().st_size == res["onnx_bytes"]


def test_exported_model_runs_several_batch_sizes(quantized_run):
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(quantized_run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        (out,) = sess.run(None, {"images": np.zeros((b, 3, IMGSZ, IMGSZ), np.float32)})
        assert out.shape == (b, 84, 84)  # 8x8 + 4x4 + 2x2 anchors at 64 px


def test_yolo11_head_index_is_read_from_the_model(tmp_path):
    res = export.run(export.ExportConfig(model="yolo11n.yaml", imgsz=IMGSZ, dynamic_batch=False), tmp_path)
    assert res.head_index == 23
    assert res.input_shape == [1, 3, IMGSZ, IMGSZ]


@pytest.mark.parametrize("name,match", [("weights.onnx", "expected an Ultralytics .pt"), ("missing.pt", "no such checkpoint")])
def test_bad_model_paths_give_one_line_errors(tmp_path, name, match):
    path = tmp_path / name
    if name.endswith(".onnx"):
        path.write_bytes(b"x")
    with pytest.raises(ExportError, match=match):
        export.run(export.ExportConfig(model=str(path), imgsz=IMGSZ), tmp_path / "run")


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ExportError, match="corrupt.pt.*could not be loaded"):
        export.run(export.ExportConfig(model=str(bad), imgsz=IMGSZ), tmp_path / "run")
