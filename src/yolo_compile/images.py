"""Image discovery and the exact preprocessing Ultralytics inference applies (letterbox 114, RGB, /255, NCHW)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
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
    img, why = decode_image(Path(path).read_bytes())
    if img is None:
        raise ValueError(f"{path}: {why}; remove or replace the file (jpg, png, bmp, tif)")
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

    from yolo_compile.fileio import atomic_path
    stats = []
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(paths), 3, size, size))
        for i, path in enumerate(tqdm(paths, desc=desc, unit="img")):
            arr[i] = load_tensor(path, size)
            stats.append({"mean": round(float(arr[i].mean()), 4), "std": round(float(arr[i].std()), 4)})
        arr.flush()
        del arr
    return stats


def sample(paths: list[Path], n: int, seed: int) -> list[Path]:
    """Return n of paths chosen by a seeded permutation, in their original (sorted) order."""
    if n >= len(paths):
        return list(paths)
    pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])
    return [paths[i] for i in pick]


MIN_SIDE = 8  # smaller than this on a side is a placeholder (a 1x1 pixel), not a camera frame


def decode_image(data: bytes) -> tuple[np.ndarray | None, str]:
    """Return (HxWx3 uint8 BGR, "") for an image file's bytes decoded fully, or (None, why it is skipped).

    Every file goes the same way: Pillow decodes it completely first (a truncated JPEG or PNG fails there,
    where OpenCV would fill the missing rows with grey and say nothing), then OpenCV decodes the same bytes
    exactly as Ultralytics inference does (EXIF orientation applied; grey, 16-bit, CMYK and RGBA to 8-bit BGR).
    """
    import cv2
    from PIL import Image, UnidentifiedImageError

    if not data:
        return None, "empty file (0 bytes)"
    opener = Image.open
    if opener.__module__.startswith("ultralytics"):  # its patch would pip-check pi-heif for every non-image
        opener = getattr(sys.modules[opener.__module__], "_image_open", opener)
    try:
        with opener(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
    except UnidentifiedImageError:
        return None, "not an image (no known image format)"
    except Exception as e:  # Pillow raises OSError, SyntaxError, DecompressionBombError... for damaged files
        return None, f"damaged image ({type(e).__name__}: {e})"
    if min(w, h) < MIN_SIDE:
        return None, f"{w}x{h} pixels, smaller than {MIN_SIDE} px on a side"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        return None, "OpenCV cannot decode it"
    return img, ""


@dataclass
class ImageSet:
    """Preprocessed images held once per content in the shared tensor cache (uint8, memory-mapped)."""

    array: np.ndarray  # uint8 (N, 3, S, S) RGB letterboxed, read-only memmap; to_float() per batch for the model
    files: list  # the image paths kept, in array order
    key: str  # sha256 of the images' sha256 list and the preprocessing: the cache file's name
    path: Path  # the cache file
    stats: list = field(default_factory=list)  # [{mean, std}] of each image as the model sees it (0..1)
    reused: bool = False  # True when the cache already held it
    skipped: list = field(default_factory=list)  # [{file, reason}] of the given images that could not be used
    hashes: list = field(default_factory=list)  # sha256 of each kept file, in array order


def to_float(batch: np.ndarray) -> np.ndarray:
    """Return a uint8 batch as the float32 0..1 tensor the exported model takes (bit-identical to to_tensor)."""
    if batch.dtype == np.float32:
        return np.ascontiguousarray(batch)
    return np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255.0)


def set_key(file_hashes: list[str], size: int) -> str:
    """Return the cache key of an image list under this preprocessing at this size."""
    return hashlib.sha256(json.dumps([PREPROCESS_VERSION, size, file_hashes]).encode()).hexdigest()


def preprocessed(paths: list[Path], size: int, cache_dir: str | Path, desc: str = "images") -> ImageSet:
    """Return the images' uint8 tensors from cache_dir/tensors/<key>.npy, decoding them only on a cache miss.

    Undecodable files are skipped and named in .skipped (never rewritten); the cache entry is built under a
    lock, so concurrent runs asking for the same images wait for one decode instead of colliding.
    """
    from yolo_compile.fileio import file_lock, sha256
    paths = [Path(p) for p in paths]
    hashes = [sha256(p) for p in paths]
    key = set_key(hashes, size)
    folder = Path(cache_dir) / "tensors"
    out, meta = folder / f"{key}.npy", folder / f"{key}.json"
    with file_lock(folder / f"{key}.lock"):
        reused = out.is_file() and meta.is_file()
        if not reused:
            _build(paths, hashes, size, key, out, meta, desc)
    info = json.loads(meta.read_text())
    kept = set(info["kept"])
    return ImageSet(np.load(out, mmap_mode="r"), [p for i, p in enumerate(paths) if i in kept], key, out,
                    info["stats"], reused, info["skipped"], [hashes[i] for i in info["kept"]])


def _load_one(path: Path, sha: str, size: int) -> tuple[np.ndarray | None, str]:
    """Return one file as its (3, size, size) RGB letterboxed uint8 tensor, or (None, why it is skipped)."""
    data = path.read_bytes()
    img, why = decode_image(data)
    if img is not None and hashlib.sha256(data).hexdigest() != sha:
        return None, "changed while being read"
    if img is None:
        return None, why
    return letterbox(img, size)[:, :, ::-1].transpose(2, 0, 1), ""


def _build(paths: list[Path], hashes: list[str], size: int, key: str, out: Path, meta: Path, desc: str) -> None:
    """Decode, letterbox and store the images (uint8) at out, and their stats and skips at meta (both atomic)."""
    from tqdm.auto import tqdm

    from yolo_compile.fileio import atomic_path, check_free_space, write_json
    check_free_space(out.parent, len(paths) * 3 * size * size, "image tensor cache")
    stats, kept, skipped = [], [], []
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(max(len(paths), 1), 3, size, size))
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # decoders release the GIL
            done = pool.map(lambda i: _load_one(paths[i], hashes[i], size), range(len(paths)))
            for i, (boxed, why) in enumerate(tqdm(done, total=len(paths), desc=desc, unit="img", mininterval=2)):
                if boxed is None:
                    skipped.append({"file": str(paths[i]), "reason": why})
                    continue
                row = arr[len(kept)]
                row[...] = boxed
                x = row.astype(np.float32) / np.float32(255.0)
                stats.append({"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4)})
                kept.append(i)
        arr.flush()
        if len(kept) != arr.shape[0]:  # skips (or nothing at all): keep only the decoded rows
            with atomic_path(tmp) as compact:
                small = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=(len(kept), 3, size, size))
                small[:] = arr[:len(kept)]
                small.flush()
                del small
        del arr
    write_json(meta, {"key": key, "size": size, "preprocess": PREPROCESS_VERSION, "dtype": "uint8",
                      "files": [{"file": str(p), "sha256": h} for p, h in zip(paths, hashes)],
                      "kept": kept, "skipped": skipped, "stats": stats})


def run_onnx(onnx_path: Path, array: np.ndarray, input_name: str) -> np.ndarray:
    """Return the raw first output of an ONNX model (ONNX Runtime CPU) for every image of array, batch 1."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: np.ascontiguousarray(array[i:i + 1])})[0]
                           for i in range(len(array))])
