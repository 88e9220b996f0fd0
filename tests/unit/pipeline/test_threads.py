"""A matrix run's thread share: scoped variables, ONNX Runtime sessions defaulting to the share."""

import os

import pytest

from yolo_compile.pipeline import threads
from yolo_compile.errors import CompileError


def _identity_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_scoped_sets_the_share_and_restores_what_was_there(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in a worker
    monkeypatch.delenv(threads.ENV, raising=False)
    with threads.scoped(4):
        assert threads.share() == 4 and os.environ["OMP_NUM_THREADS"] == "4" and os.environ["OPENBLAS_NUM_THREADS"] == "4"
    assert os.environ["OMP_NUM_THREADS"] == "1" and threads.ENV not in os.environ
    with threads.scoped(0):
        assert threads.share() == 0 and os.environ["OMP_NUM_THREADS"] == "1"


def test_apply_gives_sessions_the_share_unless_they_name_a_count(monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort.InferenceSession, "__init__", ort.InferenceSession.__init__)  # undone after the test
    model = str(_identity_onnx(tmp_path / "m.onnx"))
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.apply() == 0
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.apply() == 2 and threads.apply() == 2  # applied twice: still one wrapper
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert sess.get_session_options().intra_op_num_threads == 2
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 3
    assert ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).get_session_options().intra_op_num_threads == 3
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(CompileError, match="whole number"):
        threads.share()
