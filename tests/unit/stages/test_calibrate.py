import json

import numpy as np
import pytest

from yolo_compile import fileio, images
from yolo_compile.stages import calibrate
from yolo_compile.errors import CalibrationError

from conftest import IMGSZ


def test_calibration_array_is_memory_mapped_and_matches_preprocessing(quantized_run, image_sets):
    res = json.loads((quantized_run / "calibrate" / "result.json").read_text())
    arr = np.load(res["array"], mmap_mode="r")
    assert isinstance(arr, np.memmap)
    assert arr.shape == (8, 3, IMGSZ, IMGSZ) and arr.dtype == np.uint8 and res["dtype"] == "uint8"
    assert res["array"].endswith(f"tensors/{res['key']}.npy") and not list(quantized_run.rglob("*.npy"))
    first = image_sets["calib"] / res["files"][0]["file"]
    assert np.array_equal(images.to_float(arr[:1])[0], images.load_tensor(first, IMGSZ))
    assert res["files"][0]["sha256"] == fileio.sha256(first)
    assert res["available"] == 10


def test_sampling_is_deterministic_and_seeded():
    paths = [f"p{i}" for i in range(50)]
    assert images.sample(paths, 10, 0) == images.sample(paths, 10, 0)
    assert images.sample(paths, 10, 0) != images.sample(paths, 10, 1)
    assert images.sample(paths, 10, 0) == sorted(images.sample(paths, 10, 0), key=paths.index)
    assert images.sample(paths, 80, 0) == paths


def test_empty_folder_is_refused(run_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="empty.*holds no images"):
        calibrate.run(calibrate.CalibrateConfig(calib_dir=str(tmp_path / "empty")), run_copy)


def test_bad_image_is_skipped_and_named_and_left_unchanged(run_copy, tmp_path, image_sets):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(image_sets["calib"], folder)
    (folder / "zzz_broken.jpg").write_bytes(b"truncated")
    res = calibrate.run(calibrate.CalibrateConfig(calib_dir=str(folder), calib_images=50), run_copy)
    assert res.skipped == [{"file": "zzz_broken.jpg", "reason": "not an image (no known image format)"}]
    assert res.shape[0] == 10 and len(res.files) == 10
    assert (folder / "zzz_broken.jpg").read_bytes() == b"truncated"


def test_too_many_bad_images_fail_naming_one(run_copy, tmp_path, image_sets):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(4):
        (folder / f"b{i}.jpg").write_bytes(b"")
    with pytest.raises(CalibrationError, match="only 0 decodable image.*b0.jpg.*min_images=8"):
        calibrate.run(calibrate.CalibrateConfig(calib_dir=str(folder)), run_copy)
