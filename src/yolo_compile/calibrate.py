"""Stage 2: the calibration set, preprocessed exactly as inference does, streamed to a memory-mapped array."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images, runs
from .config import check_positive
from .errors import CalibrationError

log = logging.getLogger(__name__)
STAGE = "calibrate"


@dataclass(frozen=True)
class CalibrateConfig:
    calib_dir: str  # folder of calibration images (jpg, png, bmp, tif), searched recursively
    calib_images: int = 128  # how many to sample; all of them if the folder holds fewer
    calib_seed: int = 0  # sampling seed: the same folder and seed give the same set

    def __post_init__(self) -> None:
        check_positive("calib_images", self.calib_images)


@dataclass
class CalibrateResult:
    status: str
    array: str  # relative to the run folder: float32 (N, 3, H, W) .npy, open with mmap_mode="r"
    shape: list
    dtype: str
    bytes: int
    calib_dir: str
    available: int
    files: list = field(default_factory=list)  # [{file, sha256}] in array order
    brightness: list = field(default_factory=list)  # mean of each preprocessed image, for the coverage plot
    contrast: list = field(default_factory=list)  # standard deviation of each preprocessed image
    seconds: float = 0.0


def sample(paths: list[Path], n: int, seed: int) -> list[Path]:
    """Return n of paths chosen by a seeded permutation, in their original (sorted) order."""
    if n >= len(paths):
        return list(paths)
    pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])
    return [paths[i] for i in pick]


def run(cfg: CalibrateConfig, run_dir: str | Path) -> CalibrateResult:
    """Write run_dir/calibrate/calib.npy (memory-mapped, never all in RAM) and its file manifest."""
    exp = runs.require_passed(run_dir, "export")
    size = int(exp["imgsz"])
    folder = Path(cfg.calib_dir)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: calibration folder not found; pass --calib DIR with images like the deployment line's")
    found = images.list_images(folder)
    if not found:
        raise CalibrationError(f"{folder}: holds no images ({', '.join(images.IMAGE_SUFFIXES)}); add real frames from the target line")
    chosen = sample(found, cfg.calib_images, cfg.calib_seed)
    if len(chosen) < cfg.calib_images:
        log.warning("%s holds %d images, fewer than calib_images=%d: using all", folder, len(found), cfg.calib_images)
    out = runs.stage_dir(run_dir, STAGE) / "calib.npy"
    shape = (len(chosen), 3, size, size)
    with runs.Timer() as t:
        try:
            stats = images.write_array(chosen, size, out, desc="calibration images")
        except ValueError as e:
            raise CalibrationError(str(e)) from None
        files = [{"file": p.relative_to(folder).as_posix(), "sha256": runs.sha256(p)} for p in chosen]
    result = CalibrateResult(
        status="passed", array=f"{STAGE}/calib.npy", shape=list(shape), dtype="float32", bytes=out.stat().st_size,
        calib_dir=str(folder), available=len(found), files=files, brightness=[x["mean"] for x in stats],
        contrast=[x["std"] for x in stats], seconds=round(t.seconds, 2),
    )
    runs.write_result(run_dir, STAGE, result)
    return result
