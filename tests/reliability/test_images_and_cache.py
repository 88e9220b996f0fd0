"""Bad images are skipped and named (never rewritten); stage keys, the stage cache and engine identity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from yolo_compile import images, runs
from yolo_compile.pipeline import stagecache
from yolo_compile.runtimes import tensorrt


@pytest.fixture
def odd_images(tmp_path, image_sets):
    """One good JPEG plus each odd kind: grey, CMYK, RGBA, 16-bit, EXIF-rotated, 1x1, truncated, not an image."""
    from PIL import Image

    folder = tmp_path / "odd"
    shutil.copytree(image_sets["calib"], folder)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)
    Image.fromarray(rgb[:, :, 0]).save(folder / "grey.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (48, 64)).astype(np.uint16)).save(folder / "deep16.png")
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    im.save(folder / "exif.jpg", exif=exif)
    Image.fromarray(rgb[:1, :1]).save(folder / "pixel.png")
    good = (folder / "exif.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
    (folder / "notes.jpg").write_text("not an image")
    return folder


def test_odd_images_decode_or_are_skipped_by_name_and_inputs_stay(odd_images, tmp_path):
    before = {p.name: p.read_bytes() for p in odd_images.iterdir()}
    paths = images.list_images(odd_images)
    a = images.preprocessed(paths, 64, tmp_path / "cache1")
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in a.skipped}
    assert set(skipped) == {"pixel.png", "truncated.jpg", "notes.jpg"}
    assert "smaller than" in skipped["pixel.png"] and "not an image" in skipped["notes.jpg"]
    assert "truncated" in skipped["truncated.jpg"].lower() or "damaged" in skipped["truncated.jpg"]
    kept = {p.name for p in a.files}
    assert {"grey.png", "cmyk.jpg", "rgba.png", "deep16.png", "exif.jpg"} <= kept
    assert a.array.shape == (len(paths) - 3, 3, 64, 64) and a.array.dtype == np.uint8
    exif = images.decode_image((odd_images / "exif.jpg").read_bytes())[0]
    assert exif.shape[:2] == (64, 48)  # upright, as Ultralytics sees it
    b = images.preprocessed(paths, 64, tmp_path / "cache2")  # same files, fresh cache: the same bytes every time
    assert np.array_equal(np.asarray(a.array), np.asarray(b.array)) and a.key == b.key
    assert {p.name: p.read_bytes() for p in odd_images.iterdir()} == before


def test_concurrent_cache_builds_do_not_collide(image_sets, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = images.list_images(image_sets["calib"])
    with ThreadPoolExecutor(4) as pool:
        sets = list(pool.map(lambda _: images.preprocessed(paths, 64, tmp_path), range(4)))
    assert sum(not s.reused for s in sets) == 1
    assert len({s.path for s in sets}) == 1
    assert [p.name for p in (tmp_path / "tensors").iterdir() if p.suffix != ".lock"].__len__() == 2  # .npy + .json


def test_stage_key_changes_with_inputs_params_and_upstream(image_sets, tmp_path):
    k1, _ = stagecache.stage_key("calibrate", {"calib_dir": str(image_sets["calib"]), "calib_images": 8}, {})
    k2, _ = stagecache.stage_key("calibrate", {"calib_dir": str(image_sets["calib"]), "calib_images": 9}, {})
    up = {"export": {"export/model.onnx": {"sha256": "a" * 64}}}
    k3, _ = stagecache.stage_key("calibrate", {"calib_dir": str(image_sets["calib"]), "calib_images": 8}, up)
    folder = tmp_path / "copy"
    shutil.copytree(image_sets["calib"], folder)
    k4, _ = stagecache.stage_key("calibrate", {"calib_dir": str(folder), "calib_images": 8}, {})
    (folder / "extra.jpg").write_bytes(next(folder.iterdir()).read_bytes())
    k5, parts = stagecache.stage_key("calibrate", {"calib_dir": str(folder), "calib_images": 8}, {})
    assert len({k1, k2, k3, k4, k5}) == 5
    assert parts["tools"]["onnxruntime"] and parts["preprocess"] == images.PREPROCESS_VERSION
    assert k1 == stagecache.stage_key("calibrate", {"calib_images": 8, "calib_dir": str(image_sets["calib"])}, {})[0]


def test_how_the_study_runs_is_not_part_of_the_compare_key(image_sets):
    base = {"eval_dir": str(image_sets["eval"]), "study": "full", "search_steps": 3}
    serial, parts = stagecache.stage_key("compare", {**base, "study_workers": 1}, {})
    assert stagecache.stage_key("compare", {**base, "study_workers": 4}, {})[0] == serial
    assert "study_workers" not in parts["params"]
    assert stagecache.stage_key("compare", {**base, "search_steps": 2, "study_workers": 1}, {})[0] != serial


def test_stage_cache_round_trip_and_damaged_entry(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    runs.write_result(run_a, "export", {"status": "passed"})
    (run_a / "export" / "model.onnx").write_bytes(b"onnx bytes")
    (run_a / "01_export.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    outs = stagecache.output_hashes(run_a, "export")
    cache = stagecache.StageCache(tmp_path / "cache")
    cache.store("k" * 64, run_a, "export", run_a / "01_export.ipynb", outs, {"status": "passed"})
    hit = cache.lookup("k" * 64)
    cache.restore(hit, run_b, "export", "01_export.ipynb")
    assert (run_b / "export" / "model.onnx").read_bytes() == b"onnx bytes"
    nb = json.loads((run_b / "01_export.ipynb").read_text())
    assert nb["metadata"]["yolo_compile"]["reused"] and "Reused from the stage cache" in nb["cells"][0]["source"][0]
    entry = tmp_path / "cache" / "stages" / ("k" * 64) / "files" / "export" / "model.onnx"
    entry.write_bytes(b"onnx bytez")  # a damaged entry is dropped, never restored
    assert cache.lookup("k" * 64) is None


def test_a_rewrite_with_the_same_bytes_is_seen(tmp_path):
    runs.write_result(tmp_path, "export", {"status": "passed"})
    outs = stagecache.output_hashes(tmp_path, "export")
    assert stagecache.changed_outputs(tmp_path, outs) == []
    import os
    import time

    f = tmp_path / "export" / "result.json"
    os.utime(f, ns=(time.time_ns(), f.stat().st_mtime_ns + 1000))
    assert stagecache.changed_outputs(tmp_path, outs) == ["export/result.json (rewritten)"]


def test_engine_and_timing_cache_identity(tmp_path):
    a = tensorrt.tensorrt_identity("10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
    b = tensorrt.tensorrt_identity("11.0.0", "NVIDIA H100 80GB HBM3", "9.0")
    c = tensorrt.tensorrt_identity("10.13.0", "NVIDIA L4", "8.9")
    paths = {tensorrt.timing_cache_path(tmp_path, x) for x in (a, b, c)}
    assert len(paths) == 3 and tensorrt.timing_cache_path(tmp_path, a) == tensorrt.timing_cache_path(tmp_path, dict(a))
    assert tensorrt.identity_key(a, "m1") != tensorrt.identity_key(a, "m2")


def test_code_version_covers_every_subpackage(tmp_path):
    """The cache key hashes the whole package: a changed module in any subpackage is a new key (never a stale hit)."""
    pkg = shutil.copytree(stagecache.PACKAGE, tmp_path / "yolo_compile", ignore=shutil.ignore_patterns("__pycache__"))
    notebooks = shutil.copytree(stagecache.resources.path("notebooks"), tmp_path / "notebooks")
    key = stagecache.source_digest(pkg, notebooks)
    assert key == stagecache.code_version()
    for rel in ("quant/scales.py", "runtimes/openvino.py", "stages/quantize.py", "images.py"):
        f = pkg / rel
        before = f.read_text()
        f.write_text(before + "\n# changed\n")
        assert stagecache.source_digest(pkg, notebooks) != key, f"{rel}: a change there must change the cache key"
        f.write_text(before)
    (pkg / "quant" / "new_module.py").write_text("X = 1\n")
    assert stagecache.source_digest(pkg, notebooks) != key
    (pkg / "quant" / "new_module.py").unlink()
    (pkg / "cli.py").write_text((pkg / "cli.py").read_text() + "\n# the CLI shapes no stage output\n")
    assert stagecache.source_digest(pkg, notebooks) == key
    (notebooks / "03_quantize.ipynb").write_text((notebooks / "03_quantize.ipynb").read_text() + " ")
    assert stagecache.source_digest(pkg, notebooks) != key
