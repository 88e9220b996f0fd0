"""The accuracy study on Ray (study_workers=2) gives exactly the serial study's ranking, search and variant files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import IMGSZ, activation_scales, make_confident_run
from yolo_compile import fileio, images, runs
from yolo_compile.stages import compare
from yolo_compile.quant import study
from yolo_compile.quant import study_ray as study_parallel
from yolo_compile.errors import CompareError


@pytest.fixture(scope="module")
def confident_run(tmp_path_factory, tiny_checkpoint, image_sets) -> tuple[Path, Path]:
    """The tiny model with confident scores, quantized, and a labeled split it labeled itself (see conftest)."""
    return make_confident_run(tiny_checkpoint, image_sets["calib"], tmp_path_factory.mktemp("confident"))


def _compare(run: Path, image_sets, data: Path, workers: int) -> tuple[dict, float]:
    cfg = compare.CompareConfig(eval_dir=str(image_sets["eval"]), eval_images=4, box_atol=1e3, score_atol=1.0,
                                data=str(data), study="full", map_drop_max=0.05, search_steps=3, study_workers=workers)
    t0 = time.perf_counter()
    try:
        compare.run(cfg, run)
    except CompareError:  # the gate at 0.05 points may fail: the study still ran and the result is written
        pass
    return json.loads((run / "compare" / "result.json").read_text()), time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.cluster
def test_study_on_two_ray_workers_equals_the_serial_study(confident_run, image_sets, tmp_path):
    import ray

    run, data = confident_run
    a, b = tmp_path / "serial", tmp_path / "ray"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    serial, t_serial = _compare(a, image_sets, data, 1)
    parallel, t_ray = _compare(b, image_sets, data, 2)
    assert not ray.is_initialized(), "the study stops the Ray it started"
    s, p = serial["sensitivity"], dict(parallel["sensitivity"])
    ran = p.pop("ray")
    assert "ray" not in s and ran["workers"] == 2 and ran["variants"] >= 2 * s["groups"]
    # the scores mean something: the variants differ, and the search took steps beyond all-INT8
    assert len({r["loss_if_only_int8"] for r in s["ranked"]}) > 3 and len(s["search"]["steps"]) > 1
    assert p["ranked"] == s["ranked"] and p["top5"] == s["top5"]
    # apply and next_step (the qat command) name the run folder
    here = lambda search: {k: v for k, v in search.items() if k not in ("apply", "next_step")}  # noqa: E731
    assert here(p["search"]) == here(s["search"])
    assert parallel["recipes"] == serial["recipes"] and parallel["accuracy"] == serial["accuracy"]
    print(f"\nstudy: serial {t_serial:.1f} s, 2 Ray workers {t_ray:.1f} s; {ran}")


@pytest.mark.cluster
def test_a_variant_built_on_a_ray_worker_is_the_file_the_serial_study_builds(quantized_run, image_sets, tmp_path):
    import ray

    run = tmp_path / "run"
    shutil.copytree(quantized_run, run)
    cfg = compare.CompareConfig(eval_dir=str(image_sets["eval"]), study="full", study_workers=2, conf=1e-4)
    exp, quant = runs.read_result(run, "export"), runs.read_result(run, "quantize")
    arr = np.stack([images.load_tensor(p, IMGSZ) for p in sorted(image_sets["eval"].glob("*.jpg"))])
    st = study.Study(cfg, run, exp, quant, arr, images.run_onnx(run / exp["onnx"], arr, exp["input_name"]), set())
    with st:
        st.quantize(st.dir / "model.int8_all.onnx")
        exclude = [r"/model\.0/conv/Conv$"]
        with study_parallel.fan_out(st) as fan:
            key = fan.submit("judge", exclude, [])
            verdict = fan.result(key)
            on_worker = fan.hashes[key]
        assert not ray.is_initialized()
        local = st.quantize(tmp_path / "variant.onnx", exclude=exclude)
    assert fileio.sha256(local) == on_worker, "the same Q/DQ graph and the same scales, byte for byte"
    assert activation_scales(local) and verdict == st.judge.judge(images.run_onnx(local, arr, exp["input_name"]))
