import json

import pytest

from yolo_compile import runs
from yolo_compile.errors import RunFolderError


def test_atomic_write_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "result.json"
    runs.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert runs.sha256(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_run_dir_name_has_time_and_config_hash(tmp_path):
    a = runs.new_run_dir(tmp_path, {"p": 1})
    b = runs.new_run_dir(tmp_path, {"p": 1})
    c = runs.new_run_dir(tmp_path, {"p": 2})
    assert a != b and a.name.split("-")[1] == b.name.split("-")[1] != c.name.split("-")[1]


def test_require_passed_says_which_stage_to_run(tmp_path):
    with pytest.raises(RunFolderError, match="run the 'export' stage"):
        runs.require_passed(tmp_path, "export")
    runs.write_result(tmp_path, "build", {"status": "skipped", "reason": "no tensorrt"})
    with pytest.raises(RunFolderError, match="'skipped'.*no tensorrt"):
        runs.require_passed(tmp_path, "build")


def test_manifest_records_stages_and_output_hashes(tmp_path):
    runs.init_manifest(tmp_path, "default", {"imgsz": 64}, {})
    runs.record_stage(tmp_path, "export", status="passed", seconds=1.5)
    (tmp_path / "export").mkdir(exist_ok=True)
    (tmp_path / "export" / "model.onnx").write_bytes(b"onnx")
    m = runs.finish_manifest(tmp_path, "passed")
    assert m["stages"]["export"] == {"status": "passed", "seconds": 1.5}
    assert m["outputs"]["export/model.onnx"]["sha256"] == runs.sha256(tmp_path / "export" / "model.onnx")
    assert m["tools"]["onnxruntime"] and m["tools"]["python"]
    assert m["device"]["cores"] >= 1


def test_int8_isa_names_the_instruction_set_and_honours_the_onednn_cap(monkeypatch):
    flags = runs.cpu_flags()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    isa = runs.int8_isa()
    expected = ("AMX" if "amx_int8" in flags else "AVX512-VNNI" if "avx512_vnni" in flags else
                "AVX-VNNI" if "avx_vnni" in flags else "AVX2" if "avx2" in flags else None)
    if expected:
        assert isa == expected
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = runs.int8_isa()
    assert capped.startswith("AVX2") and ("capped" in capped) == (isa != "AVX2")
    assert runs.device_info()["int8_isa"] == capped
