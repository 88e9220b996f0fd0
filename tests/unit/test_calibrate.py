import json

import numpy as np
import pytest

from yolo_compile import calibrate, images, runs
from yolo_compile.errors import CalibrationError

from conftest import IMGSZ


def test_calibration_array_is_memory_mapped_and_matches_preprocessing(quantized_run, image_sets):
    res = json.loads((quantized_run / "calibrate" / "result.json").read_text())
    arr = np.load(quantized_run / res["array"], mmap_mode="r")
    assert isinstance(arr, np.memmap)
    assert arr.shape == (8, 3, IMGSZ, IMGSZ) and arr.dtype == np.float32
    first = image_sets["calib"] / res["files"][0]["file"]
    assert np.array_equal(arr[0], images.load_tensor(first, IMGSZ))
    assert res["files"][0]["sha256"] == runs.sha256(first)
    assert res["available"] == 10


def test_sampling_is_deterministic_and_seeded():
    paths = [f"p{i}" for i in range(50)]
    assert calibrate.sample(paths, 10, 0) == calibrate.sample(paths, 10, 0)
    assert calibrate.sample(paths, 10, 0) != calibrate.sample(paths, 10, 1)
    assert calibrate.sample(paths, 10, 0) == sorted(calibrate.sample(paths, 10, 0), key=paths.index)
    assert calibrate.sample(paths, 80, 0) == paths


def test_empty_folder_is_refused(run_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="empty.*holds no images"):
        calibrate.run(calibrate.CalibrateConfig(calib_dir=str(tmp_path / "empty")), run_copy)


def test_bad_image_names_the_file_and_leaves_no_partial_array(run_copy, tmp_path, image_sets):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(image_sets["calib"], folder)
    (folder / "zzz_broken.jpg").write_bytes(b"truncated")
    before = (run_copy / "calibrate" / "calib.npy").read_bytes()
    with pytest.raises(CalibrationError, match="zzz_broken.jpg"):
        calibrate.run(calibrate.CalibrateConfig(calib_dir=str(folder), calib_images=50), run_copy)
    assert (run_copy / "calibrate" / "calib.npy").read_bytes() == before
    assert sorted(p.name for p in (run_copy / "calibrate").iterdir()) == ["calib.npy", "result.json"]
