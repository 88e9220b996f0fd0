"""The notebooks are thin and stay in step with the configs; papermill runs the whole chain into one run folder."""

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from yolo_compile import STAGES, fileio
from yolo_compile.pipeline.workflow import config_class, notebook_for

from conftest import IMGSZ

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "yolo_compile.cli"]


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_is_four_thin_cells_without_outputs(stage):
    nb = nbformat.read(notebook_for(stage), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 4 and code[0].metadata.get("tags") == ["parameters"]
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.Lambda)), cell.source
    assert f"{stage}.run(cfg, run_dir)" in code[2].source


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_parameters_match_the_stage_config(stage):
    declared = pm.inspect_notebook(str(notebook_for(stage)))
    fields = {f.name for f in dataclasses.fields(config_class(stage))}
    assert set(declared) == fields | {"run_dir"}
    assert all(p["help"] for p in declared.values()), "every parameter documents itself for --help-notebook"


def test_committed_notebooks_are_what_the_generator_writes():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_notebooks.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _run(tmp_path, *args):
    return subprocess.run([*CLI, "run", *args, "--artifacts", str(tmp_path / "runs")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)


def _common(tiny_checkpoint, image_sets, study=False):
    """CLI arguments for the tiny model; the accuracy study (recipes, sensitivity) only where a test asks."""
    args = ["--model", str(tiny_checkpoint), "--calib", str(image_sets["calib"]), "--eval", str(image_sets["eval"]),
            "--set", f"imgsz={IMGSZ}", "--set", "batch_sizes=1,2", "--set", "max_seconds=0.5",
            "--set", f"data={image_sets['data']}", "--set", "search_steps=1"]
    return args + ["--set", f"study={'full' if study else 'off'}"]


def _only_run(tmp_path):
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir, json.loads((run_dir / "manifest.json").read_text())


def test_default_workflow_on_cpu_passes_every_stage(tmp_path, tiny_checkpoint, image_sets):
    out = _run(tmp_path, "default", *_common(tiny_checkpoint, image_sets, study=True), "--set", "target=cpu")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    run_dir, m = _only_run(tmp_path)
    assert {s: v["status"] for s, v in m["stages"].items()} == {s: "passed" for s in STAGES}
    cmp = json.loads((run_dir / "compare" / "result.json").read_text())
    assert cmp["accuracy"]["images"] == 6 and len(cmp["recipes"]) == 4
    assert cmp["sensitivity"]["ranked"][0]["group"] and "search" in cmp["sensitivity"]
    assert m["status"] == "passed" and m["parameters"]["imgsz"] == IMGSZ and m["parameters"]["batch_sizes"] == [1, 2]
    assert m["inputs"]["model"]["sha256"] == fileio.sha256(tiny_checkpoint)
    assert m["tools"]["nvidia-modelopt"] and m["tools"]["polygraphy"] and "tensorrt" in m["tools"]
    for stage in STAGES:
        assert (run_dir / notebook_for(stage).name).is_file()
        assert m["outputs"][f"{stage}/result.json"]["sha256"] == fileio.sha256(run_dir / stage / "result.json")
    report = (run_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4 and "quant-mixed" in report and "Layer sensitivity" in report
    build = json.loads((run_dir / "build" / "result.json").read_text())
    assert build["backend"] == build["choice"]["picked"] in ("onnxruntime", "openvino") and build["checks"]["passed"]


def test_tensorrt_target_without_tensorrt_ends_with_build_and_throughput_skipped(tmp_path, tiny_checkpoint, image_sets):
    from yolo_compile.runtimes.tensorrt import tensorrt_available

    if tensorrt_available()[0]:
        pytest.skip("TensorRT and a GPU are present: the full TensorRT path runs instead (tests/gpu)")
    out = _run(tmp_path, "default", *_common(tiny_checkpoint, image_sets), "--set", "target=tensorrt")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    run_dir, m = _only_run(tmp_path)
    status = {s: v["status"] for s, v in m["stages"].items()}
    assert status == {"export": "passed", "calibrate": "passed", "quantize": "passed", "compare": "passed",
                      "build": "skipped", "throughput": "skipped", "bandwidth": "passed"}
    assert "tensorrt" in m["stages"]["build"]["reason"]
    assert json.loads((run_dir / "quantize" / "result.json").read_text())["high_precision_dtype"] == "fp16"
    assert "trtexec" in (run_dir / "report.html").read_text()


def test_gate_tightened_below_what_the_model_achieves_fails_the_run(tmp_path, tiny_checkpoint, image_sets):
    out = _run(tmp_path, "default", *_common(tiny_checkpoint, image_sets), "--set", "target=cpu",
               "--set", "score_atol=1e-12")
    assert out.returncode == 1
    run_dir, m = _only_run(tmp_path)
    assert m["status"] == "failed" and m["stages"]["compare"]["status"] == "failed"
    assert "accuracy gate failed" in m["stages"]["compare"]["error"] and "build" not in m["stages"]
    executed = nbformat.read(run_dir / "04_compare.ipynb", as_version=4)
    assert any(o.get("ename") == "CompareError" for c in executed.cells for o in c.get("outputs", []))
    assert "accuracy gate failed" in (run_dir / "report.html").read_text()
    assert "failed:" in out.stdout


def test_fp16_workflow_is_the_no_int8_baseline(tmp_path, tiny_checkpoint, image_sets):
    out = _run(tmp_path, "fp16", "--model", str(tiny_checkpoint), "--eval", str(image_sets["eval"]),
               "--set", f"imgsz={IMGSZ}", "--set", "batch_sizes=1", "--set", "max_seconds=0.3", "--set", "target=cpu",
               "--set", f"data={image_sets['data']}")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    run_dir, m = _only_run(tmp_path)
    assert list(m["stages"]) == ["export", "quantize", "compare", "build", "throughput"]
    q = json.loads((run_dir / "quantize" / "result.json").read_text())
    assert q["recipe"] == "float" and "QuantizeLinear" not in q["op_counts"]
    cmp = json.loads((run_dir / "compare" / "result.json").read_text())
    assert cmp["accuracy"]["drop_points"] == 0.0
    build = json.loads((run_dir / "build" / "result.json").read_text())
    assert build["status"] == "passed" and "held-out images" in json.dumps(build["checks"])


def test_a_user_model_must_bring_its_own_images(tmp_path, tiny_checkpoint):
    out = _run(tmp_path, "default", "--model", str(tiny_checkpoint))
    assert out.returncode == 2 and "pass --calib and --eval" in out.stderr


def test_relative_paths_are_resolved_before_kernels_start_in_the_run_folder(tmp_path, monkeypatch):
    from yolo_compile.pipeline.workflow import load_workflow, resolve_params

    recipe = tmp_path / "nodes_to_exclude.json"
    recipe.write_text('["/model\\\\.0/conv/Conv$"]')
    monkeypatch.chdir(tmp_path)
    params = resolve_params(load_workflow("default"), {"keep_float": "nodes_to_exclude.json"})
    assert params["keep_float"] == str(recipe) and Path(params["calib_dir"]).is_absolute()


def test_unknown_parameter_is_refused_before_anything_runs(tmp_path):
    out = _run(tmp_path, "default", "--set", "imgsize=320")
    assert out.returncode == 2 and "unknown parameter(s) imgsize" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_papermill_alone_runs_a_notebook_on_a_previous_stage_output(tmp_path, quantized_run, image_sets):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(quantized_run, run_dir)
    pm.execute_notebook(str(notebook_for("compare")), str(tmp_path / "out.ipynb"), progress_bar=False,
                        parameters={"run_dir": str(run_dir), "eval_dir": str(image_sets["eval"]), "eval_images": 2,
                                    "study": "off"})
    assert json.loads((run_dir / "compare" / "result.json").read_text())["images"] == 2
