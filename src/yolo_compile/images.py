"""Image discovery and the exact preprocessing Ultralytics inference applies (letterbox 114, RGB, /255, NCHW)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PREPROCESS_VERSION = "letterbox114-rgb-nchw-uint8-v1"  # part of every cache key: change it when preprocessing changes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
PAD_VALUE = 114


def list_images(folder: str | Path) -> list[Path]:
    """Return the image files under folder (recursively), sorted by relative path."""
    folder = Path(folder)
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def read_bgr(path: str | Path) -> np.ndarray:
    """Return an image as HxWx3 uint8 BGR; raise ValueError naming the file if it cannot be decoded."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image (jpg, png, bmp, tif); remove or replace the file")
    return img


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Return img resized to fit size x size keeping aspect ratio, centred on pad 114 (Ultralytics' LetterBox)."""
    import cv2

    h, w = img.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    if (w, h) != (new_w, new_h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def to_tensor(img_bgr: np.ndarray, size: int) -> np.ndarray:
    """Return the 3 x size x size float32 RGB tensor in 0..1 that the exported model expects."""
    boxed = letterbox(img_bgr, size)
    return np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def load_tensor(path: str | Path, size: int) -> np.ndarray:
    """Return the preprocessed tensor of one image file (see to_tensor)."""
    return to_tensor(read_bgr(path), size)


def write_array(paths: list[Path], size: int, out: Path, desc: str = "images") -> list[dict]:
    """Stream preprocessed images into a float32 (N, 3, size, size) .npy at out (atomically); return per-image mean/std.

    Raises ValueError naming the first unreadable file; nothing is left at out then.
    """
    from tqdm.auto import tqdm

    from .runs import atomic_path

    stats = []
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(paths), 3, size, size))
        for i, path in enumerate(tqdm(paths, desc=desc, unit="img")):
            arr[i] = load_tensor(path, size)
            stats.append({"mean": round(float(arr[i].mean()), 4), "std": round(float(arr[i].std()), 4)})
        arr.flush()
        del arr
    return stats


@dataclass
class ImageSet:
    """Preprocessed images held once per content in the shared tensor cache (uint8, memory-mapped)."""

    array: np.ndarray  # uint8 (N, 3, S, S) RGB letterboxed, read-only memmap; to_float() per batch for the model
    files: list  # the image paths, in array order
    key: str  # sha256 of the images' sha256 list and the preprocessing: the cache file's name
    path: Path  # the cache file
    stats: list = field(default_factory=list)  # [{mean, std}] of each image as the model sees it (0..1)
    reused: bool = False  # True when the cache already held it


def to_float(batch: np.ndarray) -> np.ndarray:
    """Return a uint8 batch as the float32 0..1 tensor the exported model takes (bit-identical to to_tensor)."""
    if batch.dtype == np.float32:
        return np.ascontiguousarray(batch)
    return np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255.0)


def set_key(file_hashes: list[str], size: int) -> str:
    """Return the cache key of an image list under this preprocessing at this size."""
    return hashlib.sha256(json.dumps([PREPROCESS_VERSION, size, file_hashes]).encode()).hexdigest()


def preprocessed(paths: list[Path], size: int, cache_dir: str | Path, desc: str = "images") -> ImageSet:
    """Return the images' uint8 tensors from cache_dir/tensors/<key>.npy, decoding them only on a cache miss."""
    from tqdm.auto import tqdm

    from .runs import atomic_path, sha256, write_json

    hashes = [sha256(p) for p in paths]
    key = set_key(hashes, size)
    folder = Path(cache_dir) / "tensors"
    out, meta = folder / f"{key}.npy", folder / f"{key}.json"
    reused = out.is_file() and meta.is_file()
    if not reused:
        stats = []
        with atomic_path(out) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
            for i, path in enumerate(tqdm(paths, desc=desc, unit="img")):
                arr[i] = letterbox(read_bgr(path), size)[:, :, ::-1].transpose(2, 0, 1)
                x = arr[i].astype(np.float32) / np.float32(255.0)
                stats.append({"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4)})
            arr.flush()
            del arr
        write_json(meta, {"key": key, "size": size, "preprocess": PREPROCESS_VERSION,
                          "files": [{"file": str(p), "sha256": h} for p, h in zip(paths, hashes)], "stats": stats})
    stats = json.loads(meta.read_text())["stats"]
    return ImageSet(np.load(out, mmap_mode="r"), list(paths), key, out, stats, reused)


def run_onnx(onnx_path: Path, array: np.ndarray, input_name: str) -> np.ndarray:
    """Return the raw first output of an ONNX model (ONNX Runtime CPU) for every image of array, batch 1."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: np.ascontiguousarray(array[i:i + 1])})[0]
                           for i in range(len(array))])
