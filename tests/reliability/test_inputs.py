"""Bad input is refused before anything runs: exit 2, one line naming the parameter or file and the fix,
no run folder, inputs unchanged, in under 10 seconds."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest

from yolo_compile import cli
from yolo_compile.pipeline import validate
from yolo_compile.errors import InputError

from conftest import IMGSZ


def _tree_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file():
                h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def compile_cli(tmp_path, image_sets, tiny_checkpoint, capsys):
    """Run `yolo-compile run default` in-process on the tiny model; return (exit code, stderr, seconds)."""

    def run(*extra: str, model: Path | None = None, calib: Path | None = None, workflow: str = "default"):
        args = ["run", workflow, "--model", str(model or tiny_checkpoint), "--calib", str(calib or image_sets["calib"]),
                "--eval", str(image_sets["eval"]), "--set", f"imgsz={IMGSZ}", "--set", f"data={image_sets['data']}",
                "--artifacts", str(tmp_path / "runs"), *extra]
        before = _tree_hash(image_sets["calib"], image_sets["eval"], image_sets["data"].parent)
        t0 = time.perf_counter()
        code = cli.main(args)
        seconds = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "no run folder on bad input"
        assert _tree_hash(image_sets["calib"], image_sets["eval"], image_sets["data"].parent) == before
        return code, err, seconds

    return run


def _refused(result, *fragments: str) -> None:
    code, err, seconds = result
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for frag in fragments:
        assert frag in err, err
    assert seconds < 10, f"refusal took {seconds:.1f} s"


def test_unknown_parameter(compile_cli):
    _refused(compile_cli("--set", "calib_imagez=64"), "unknown parameter(s) calib_imagez")


def test_parameter_name_that_is_not_an_identifier(compile_cli):
    _refused(compile_cli("--set", "os.system('id') #=1"), "unknown parameter(s) os.system('id') #")


def test_nan_threshold_is_refused(compile_cli):
    _refused(compile_cli("--set", "map_drop_max=nan"), "map_drop_max", "NaN")


def test_number_for_a_string_parameter_is_refused_not_coerced(tmp_path, compile_cli):
    wf = tmp_path / "wf.yaml"
    wf.write_text("stages: [export, calibrate, quantize]\nparams:\n  calibration_method: 1.10\n")
    _refused(compile_cli(workflow=str(wf)), "'calibration_method': expected a string, got 1.1")


def test_missing_calibration_folder(compile_cli, tmp_path):
    _refused(compile_cli(calib=tmp_path / "nowhere"), "calib_dir", "no such folder", "--calib")


def test_empty_calibration_folder(compile_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(compile_cli(calib=tmp_path / "empty"), "calib_dir", "holds 0 image file(s)")


def test_folder_of_undecodable_images(compile_cli, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(10):
        (bad / f"f{i}.jpg").write_text("not an image")
    _refused(compile_cli(calib=bad), "calib_dir", "decodable", "f0.jpg")


def test_symlink_out_of_the_image_folder(compile_cli, tmp_path, image_sets):
    import shutil

    folder = tmp_path / "linked"
    shutil.copytree(image_sets["calib"], folder)
    secret = tmp_path / "elsewhere.jpg"
    secret.write_bytes(next(image_sets["calib"].iterdir()).read_bytes())
    (folder / "zz_link.jpg").symlink_to(secret)
    _refused(compile_cli(calib=folder), "zz_link.jpg", "symlink", "outside")


def test_zero_byte_model(compile_cli, tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    _refused(compile_cli(model=tmp_path / "m.pt"), "m.pt", "empty file")


def test_git_lfs_pointer_model(compile_cli, tmp_path):
    (tmp_path / "m.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 6000000\n")
    _refused(compile_cli(model=tmp_path / "m.pt"), "Git LFS pointer", "git lfs pull")


def test_truncated_model(compile_cli, tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    _refused(compile_cli(model=tmp_path / "m.pt"), "m.pt", "truncated")


def test_pickle_that_runs_code_is_never_loaded(compile_cli, tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    _refused(compile_cli(model=tmp_path / "evil.pt"), "evil.pt", "system", "refusing to load")
    assert not marker.exists()


def test_segmentation_model_is_refused(compile_cli, tmp_path):
    from ultralytics import YOLO

    YOLO("yolov8n-seg.yaml").save(str(tmp_path / "seg.pt"))
    _refused(compile_cli(model=tmp_path / "seg.pt"), "seg.pt", "segment model", "detection models")


def test_untrusted_model_hash_is_refused(compile_cli):
    _refused(compile_cli("--set", "trusted_models=" + "0" * 64), "not in trusted_models")


def test_broken_data_yaml(compile_cli, tmp_path):
    (tmp_path / "data.yaml").write_text("val: [unclosed\n")
    _refused(compile_cli("--set", f"data={tmp_path / 'data.yaml'}"), "data.yaml", "not valid YAML")


def test_data_yaml_split_missing(compile_cli, tmp_path):
    (tmp_path / "data.yaml").write_text("val: gone/images\nnames: {0: a}\n")
    _refused(compile_cli("--set", f"data={tmp_path / 'data.yaml'}"), "split gone/images not found")


def test_nul_byte_in_a_parameter_is_refused():
    with pytest.raises(InputError, match="'calib_dir': contains a NUL byte"):
        validate.check({"stages": ["calibrate"]}, {"calib_dir": "a\0b"})


def test_a_parameter_value_cannot_become_code():
    # papermill quotes values; the check proves the injected cell is `name = literal` lines only
    validate.injected_cell_is_literal({"calib_dir": 'x"; import os; os.system("id") #\\', "calib_images": 3})
    validate.injected_cell_is_literal({"calib_dir": _Code()})  # papermill stringifies and quotes any object
    with pytest.raises(InputError, match="would become code"):  # names are pasted unescaped: the check catches it
        validate.injected_cell_is_literal({"x; import os; y": 1})
    with pytest.raises(InputError, match="not a Python identifier"):  # what validation runs, without papermill
        validate.plain_parameters({"x; import os; y": 1})
    with pytest.raises(InputError, match="not allowed"):
        validate.plain_parameters({"calib_dir": _Code()})


class _Code:
    """A value whose repr is code: what an unescaped translator would paste into the notebook."""

    def __repr__(self) -> str:
        return "__import__('os').system('id')"


@pytest.fixture
def small_onnx(tmp_path) -> Path:
    """A one-conv ONNX model (opset 19) with real weights."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    path = tmp_path / "src" / "m.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def test_corrupt_and_truncated_onnx(tmp_path, small_onnx):
    src = small_onnx.read_bytes()
    (tmp_path / "t.onnx").write_bytes(src[: len(src) // 3])
    with pytest.raises(InputError, match="t.onnx"):
        validate.onnx_file(tmp_path / "t.onnx")
    (tmp_path / "z.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="missing or empty"):
        validate.onnx_file(tmp_path / "z.onnx")
    validate.onnx_file(small_onnx)


def test_onnx_with_unsupported_opset(tmp_path, small_onnx):
    import onnx

    model = onnx.load(str(small_onnx))
    model.opset_import[0].version = 11
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(InputError, match="opset 11 is unsupported"):
        validate.onnx_file(tmp_path / "old.onnx")


def test_onnx_with_missing_external_data(tmp_path, small_onnx):
    import onnx

    model = onnx.load(str(small_onnx))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(InputError, match="external data file ext.data is missing"):
        validate.onnx_file(tmp_path / "ext.onnx")


def test_pickle_globals_are_read_without_unpickling(tiny_checkpoint):
    with zipfile.ZipFile(tiny_checkpoint) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    names = validate.pickle_globals(data, tiny_checkpoint)
    assert "ultralytics.nn.tasks.DetectionModel" in names and all(validate._safe_global(n) for n in names)
    assert not validate._safe_global("builtins.eval") and not validate._safe_global("posix.system")
    assert pickle  # the stdlib module is only read through pickletools here
