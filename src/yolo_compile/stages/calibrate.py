"""Stage 2: the calibration set, preprocessed exactly as inference does, streamed to a memory-mapped array."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path


from yolo_compile import images, runs
from yolo_compile.config import check_positive, path_field
from yolo_compile.errors import CalibrationError

log = logging.getLogger(__name__)
STAGE = "calibrate"


@dataclass(frozen=True)
class CalibrateConfig:
    calib_dir: str = path_field()  # folder of calibration images (jpg, png, bmp, tif), searched recursively
    calib_images: int = 128  # how many to sample; all of them if the folder holds fewer
    calib_seed: int = 0  # sampling seed: the same folder and seed give the same set
    min_images: int = 8  # fail when fewer decodable images than this remain after skipping bad files
    max_skipped: float = 0.25  # fail when more than this fraction of the sampled files cannot be decoded

    def __post_init__(self) -> None:
        check_positive("calib_images", self.calib_images)
        check_positive("min_images", self.min_images)
        if not 0 <= self.max_skipped <= 1:
            raise CalibrationError(f"parameter 'max_skipped' = {self.max_skipped}: expected a fraction from 0 to 1")


@dataclass
class CalibrateResult:
    status: str
    array: str  # the uint8 (N, 3, H, W) tensor file in the shared cache (absolute); open with mmap_mode="r"
    shape: list
    dtype: str  # uint8: images.to_float(batch) gives the model's float32 0..1 input
    bytes: int
    calib_dir: str
    available: int
    files: list = field(default_factory=list)  # [{file, sha256}] in array order
    brightness: list = field(default_factory=list)  # mean of each preprocessed image, for the coverage plot
    contrast: list = field(default_factory=list)  # standard deviation of each preprocessed image
    seconds: float = 0.0
    key: str = ""  # the cache key of the tensor file (sha256 of the image hashes + preprocessing + size)
    cache_reused: bool = False  # True when an earlier run had already decoded this exact image set
    skipped: list = field(default_factory=list)  # [{file, reason}]: sampled files that could not be decoded


def run(cfg: CalibrateConfig, run_dir: str | Path) -> CalibrateResult:
    """Preprocess the sampled images into the shared uint8 tensor cache; record where, which, and what was skipped."""
    exp = runs.require_passed(run_dir, "export")
    size = int(exp["imgsz"])
    folder = Path(cfg.calib_dir)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: calibration folder not found; pass --calib DIR with images like the deployment line's")
    found = images.list_images(folder)
    if not found:
        raise CalibrationError(f"{folder}: holds no images ({', '.join(images.IMAGE_SUFFIXES)}); add real frames from the target line")
    chosen = images.sample(found, cfg.calib_images, cfg.calib_seed)
    if len(chosen) < cfg.calib_images:
        log.warning("%s holds %d images, fewer than calib_images=%d: using all", folder, len(found), cfg.calib_images)
    with runs.Timer() as t:
        cached = images.preprocessed(chosen, size, runs.cache_root(run_dir), desc="calibration images")
    skipped = [{"file": _rel(s["file"], folder), "reason": s["reason"]} for s in cached.skipped]
    for s in skipped:
        log.warning("skipped %s: %s (the file is left as it is)", s["file"], s["reason"])
    if skipped:
        log.warning("%d of %d calibration files skipped", len(skipped), len(chosen))
    kept = len(cached.files)
    if kept < cfg.min_images:
        raise CalibrationError(f"{folder}: only {kept} decodable image(s) of {len(chosen)} sampled ({len(skipped)} skipped, "
                               f"e.g. {skipped[0]['file'] if skipped else '-'}); min_images={cfg.min_images}: add images")
    if len(chosen) and len(skipped) / len(chosen) > cfg.max_skipped:
        raise CalibrationError(f"{folder}: {len(skipped)} of {len(chosen)} sampled files could not be decoded "
                               f"(e.g. {skipped[0]['file']}: {skipped[0]['reason']}), more than max_skipped={cfg.max_skipped}; "
                               "fix or remove them")
    files = [{"file": _rel(p, folder), "sha256": h} for p, h in zip(cached.files, cached.hashes)]
    result = CalibrateResult(
        status="passed", array=str(cached.path), shape=list(cached.array.shape), dtype=str(cached.array.dtype),
        bytes=cached.path.stat().st_size, calib_dir=str(folder), available=len(found), files=files,
        brightness=[x["mean"] for x in cached.stats], contrast=[x["std"] for x in cached.stats],
        seconds=round(t.seconds, 2), key=cached.key, cache_reused=cached.reused, skipped=skipped,
    )
    runs.write_result(run_dir, STAGE, result)
    return result


def _rel(path: str | Path, folder: Path) -> str:
    """Return path relative to folder (posix), or as given where it lies elsewhere."""
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)
