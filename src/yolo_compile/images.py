"""Image discovery and the exact preprocessing Ultralytics inference applies (letterbox 114, RGB, /255, NCHW)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def run_onnx(onnx_path: Path, array: np.ndarray, input_name: str) -> np.ndarray:
    """Return the raw first output of an ONNX model (ONNX Runtime CPU) for every image of array, batch 1."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: np.ascontiguousarray(array[i:i + 1])})[0]
                           for i in range(len(array))])
