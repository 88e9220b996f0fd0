"""Compile matrices on Ray: the file format, shipping run folders back, and a multi-node cluster simulated here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from yolo_compile import runs
from yolo_compile.pipeline import matrix
from yolo_compile.errors import CompileError

from conftest import IMGSZ

REPO = Path(__file__).resolve().parents[2]
FAST = {"imgsz": IMGSZ, "batch_sizes": "1", "max_seconds": 0.3, "study": "off", "pytorch": False}
# two recipes that pass the gate on the tiny model (all-INT8 does not: its gate failure is a real, unretried result)
RECIPES = ({"name": "max", "params": {"recipe": "mixed", "calibration_method": "max"}},
           {"name": "entropy", "params": {"recipe": "mixed", "calibration_method": "entropy"}})


def _write(path: Path, spec: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_matrix_expands_to_every_model_target_recipe_with_overrides(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"a")
    (tmp_path / "b.pt").write_bytes(b"b")
    f = _write(tmp_path / "m.yaml", {
        "name": "nightly", "models": ["a.pt", {"path": "b.pt", "calib": "b_frames"}], "targets": ["cpu", "tensorrt"],
        "recipes": ["mixed", {"name": "max", "params": {"recipe": "mixed", "calibration_method": "max"}}],
        "calib": "frames", "eval": "held", "params": {"imgsz": 320},
        "overrides": [{"match": {"target": "tensorrt"}, "params": {"batch_sizes": "1,8"}}]})
    name, entries = matrix.load(f)
    assert name == "nightly" and len(entries) == 8
    by = {(Path(e.model).name, e.target, e.recipe): e for e in entries}
    e = by[("b.pt", "tensorrt", "max")]
    assert e.overrides["calib_dir"] == str(tmp_path / "b_frames") and e.overrides["eval_dir"] == str(tmp_path / "held")
    assert e.overrides["calibration_method"] == "max" and e.overrides["batch_sizes"] == "1,8" and e.overrides["imgsz"] == 320
    assert "batch_sizes" not in by[("a.pt", "cpu", "mixed")].overrides
    assert len({x.key for x in entries}) == 8, "each entry has its own identity"
    assert e.key == matrix.load(f)[1][entries.index(e)].key, "keys are stable across loads"


@pytest.mark.parametrize("spec, words", [
    ({"models": []}, "'models' is empty"),
    ({"models": ["a.pt"], "targets": ["tpu"]}, "target(s) tpu unknown"),
    ({"models": ["a.pt"], "modles": 1}, "unknown key(s) modles"),
    ({"models": ["a.pt"], "recipes": [{"params": {}}]}, "needs a 'name'"),
])
def test_a_bad_matrix_file_is_refused_naming_the_fix(tmp_path, spec, words):
    with pytest.raises(CompileError) as err:
        matrix.load(_write(tmp_path / "m.yaml", spec))
    assert words in str(err.value) and "m.yaml" in str(err.value)


def test_a_run_folder_survives_the_trip_through_the_object_store(tmp_path):
    src = tmp_path / "w" / "20261125T000000Z-abc"
    (src / "export").mkdir(parents=True)
    (src / "export" / "result.json").write_text("{}")
    (src / "report.html").write_text("<html></html>")
    out = matrix.unpack(matrix.pack(src), tmp_path / "runs")
    assert out == tmp_path / "runs" / src.name
    assert (out / "export" / "result.json").read_text() == "{}" and (out / "report.html").is_file()
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".incoming")]


def test_an_archive_with_a_link_out_of_the_run_folder_is_refused(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("run/evil")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(tarfile.TarError):
        matrix.unpack(buf.getvalue(), tmp_path / "runs")
    assert not (tmp_path / "runs" / "run").exists()


# -- a real Ray cluster, simulated on this machine -------------------------------------------------------

@pytest.fixture(scope="module")
def second_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """Another real checkpoint (the tiny one with a class conv of the float head scaled), so a matrix has two models.

    Not the stem: scaling its weights without re-estimating the BatchNorm statistics after it made a model no
    INT8 recipe can follow (measured: p99 box error 250-380 px on ONNX Runtime and OpenVINO alike).
    """
    import torch
    from ultralytics import YOLO

    model = YOLO(str(tiny_checkpoint))
    with torch.no_grad():
        model.model.model[-1].cv3[0][-1].weight.mul_(1.05)
    path = tmp_path_factory.mktemp("model2") / "tiny_b.pt"
    model.save(str(path))
    return path


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    yield c
    ray.shutdown()
    c.shutdown()


def _matrix_file(tmp_path, models, image_sets, targets=("cpu",), recipes=RECIPES) -> Path:
    return _write(tmp_path / "matrix.yaml", {
        "name": "ci", "models": [str(m) for m in models], "targets": list(targets), "recipes": list(recipes),
        "calib": str(image_sets["calib"]), "eval": str(image_sets["eval"]), "data": str(image_sets["data"]),
        "params": {**FAST, "target": "cpu"} if "tensorrt" not in targets else FAST})


@pytest.mark.slow
@pytest.mark.cluster
def test_a_matrix_on_a_three_node_cluster_equals_serial_runs_and_survives_a_lost_node(
        tmp_path, cluster, tiny_checkpoint, second_checkpoint, image_sets):
    import ray

    from yolo_compile.pipeline.workflow import run_workflow

    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1, resources={"spare": 1})
    ray.init(address=cluster.address)
    f = _matrix_file(tmp_path, [tiny_checkpoint, second_checkpoint], image_sets)
    killer = threading.Timer(20.0, lambda: cluster.remove_node(doomed, allow_graceful=False))
    killer.start()  # mid-matrix: the runs on that node are retried elsewhere
    folder, result = matrix.run_matrix(f, artifacts=tmp_path / "runs")
    killer.join()
    assert [r["status"] for r in result["runs"]] == ["passed"] * 4, json.dumps(result, indent=1)[:3000]
    page = (folder / "matrix.html").read_text()
    assert page.count("report.html") == 4 and "http" not in page.replace("http-equiv", "")
    # the same code path as `yolo-compile run`: serial runs give the same quantized models, byte for byte
    _, entries = matrix.load(f)
    for e, row in zip(entries, result["runs"]):
        serial_dir, _ = run_workflow(e.workflow, dict(e.overrides), tmp_path / "serial")
        serial = json.loads((serial_dir / "quantize" / "result.json").read_text())["onnx_sha256"]
        assert row["summary"]["quantized_sha256"] == serial, e.label
        m = runs.read_manifest(tmp_path / "runs" / row["run"])
        assert m["matrix"]["key"] == e.key
    # re-running the same matrix verifies and reuses every run instead of compiling again
    t0 = time.perf_counter()
    _, again = matrix.run_matrix(f, artifacts=tmp_path / "runs")
    assert [r["status"] for r in again["runs"]] == ["reused"] * 4 and time.perf_counter() - t0 < 30


@pytest.mark.slow
@pytest.mark.cluster
def test_tensorrt_entries_are_refused_clearly_on_a_cluster_without_a_gpu_node(tmp_path, cluster, tiny_checkpoint,
                                                                            image_sets):
    import ray

    ray.init(address=cluster.address)
    f = _matrix_file(tmp_path, [tiny_checkpoint], image_sets, targets=("tensorrt",), recipes=RECIPES[:1])
    t0 = time.perf_counter()
    _, result = matrix.run_matrix(f, artifacts=tmp_path / "runs")
    (row,) = result["runs"]
    assert row["status"] == "refused" and "needs a node with a GPU" in row["error"] and "--wait-for-gpu" in row["error"]
    assert time.perf_counter() - t0 < 30 and not list((tmp_path / "runs").glob("2*"))


@pytest.mark.slow
@pytest.mark.cluster
def test_the_cli_joins_a_running_cluster_and_ships_runs_back(tmp_path, tiny_checkpoint, image_sets):
    import os

    ray_bin = Path(sys.executable).parent / "ray"
    # Ray 2.60's `ray start` turns token authentication on where ~/.ray/auth_token exists while a client defaults
    # to none (measured here: InvalidAuthToken); a test cluster names its mode for head and driver alike.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.run([str(ray_bin), "start", "--head", "--num-cpus", "2", "--port", "6391",
                           "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        f = _matrix_file(tmp_path, [tiny_checkpoint], image_sets, recipes=RECIPES[:1])
        out = subprocess.run([sys.executable, "-m", "yolo_compile.cli", "matrix", str(f), "--address", "127.0.0.1:6391",
                              "--artifacts", str(tmp_path / "runs")], capture_output=True, text=True, timeout=900,
                             cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        assert "passed" in out.stdout and "matrix.html" in out.stdout
        (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
        assert (run_dir / "report.html").is_file() and runs.read_manifest(run_dir)["status"] == "passed"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_embedded_ray_starts_its_own_instance_despite_a_leftover_cluster_file(monkeypatch):
    """A killed run leaves /tmp/ray/ray_current_cluster behind: the embedded start must not try to join it."""
    import ray
    from ray._common.utils import get_ray_address_file

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    marker = Path(get_ray_address_file(None))
    marker.parent.mkdir(parents=True, exist_ok=True)
    saved = marker.read_text() if marker.is_file() else None
    marker.write_text("192.0.2.2:39503")  # TEST-NET: no cluster is there
    try:
        got = matrix.connect(None, 1)
        assert got.is_initialized() and got.cluster_resources().get("CPU") == 1.0
    finally:
        ray.shutdown()
        if saved is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(saved)
