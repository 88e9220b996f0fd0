"""A conveyor sequence: AOI boards moving through a fixed camera's view, for frame-to-frame measurements.

The still reference frames (`reference.py`) are independent boards; a video stream is not. Here boards of
the same scene generator (`aoi_scene`) ride a belt through a static camera in a step-and-inspect cycle
(the belt moves a fixed distance, then dwells while the board is inspected). Each frame adds what a real
line adds: the camera's fixed lighting field, a lamp flicker (a mains-driven beat plus jitter), and fresh
sensor noise (read + shot). Frames are a pure function of (seed, index) and the motion parameters, so a
sequence is generated on the fly into a cache folder instead of being committed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SEQUENCE_VERSION = 1
BELT_BGR = (52, 50, 48)  # dark rubber belt between boards


@dataclass(frozen=True)
class Conveyor:
    """The line: frame size, belt motion and the camera's lighting and noise."""

    seed: int = 20261125
    frame_size: tuple[int, int] = (960, 720)  # width, height (the reference camera)
    speed_px: int = 32  # belt travel per frame while moving, in pixels
    move_frames: int = 12  # frames of motion per step (12 x 32 px = 384 px, 0.4 of a frame)
    dwell_frames: int = 8  # frames the belt stands still for inspection
    gap_px: int = 96  # belt between two boards
    flicker: float = 0.03  # peak relative gain swing of the lamps (mains beat at 100 Hz seen at 30 fps)
    fps: float = 30.0
    jpeg_quality: int = 90

    def key(self, frames: int) -> str:
        """Return the sequence's cache key (its parameters, version and length)."""
        blob = json.dumps({"v": SEQUENCE_VERSION, "frames": frames, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def offset(self, index: int) -> int:
        """Return the belt position (pixels travelled) at frame index."""
        cycle = self.move_frames + self.dwell_frames
        full, part = divmod(index, cycle)
        return self.speed_px * (full * self.move_frames + min(part, self.move_frames))

    def moving(self, index: int) -> bool:
        """Return True when the belt moved between frame index - 1 and frame index."""
        return index > 0 and self.offset(index) != self.offset(index - 1)


def _board(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, list]:
    """Return (clean BGR board image with shine and shadow composited, boxes) of one board: no lighting or noise."""
    import cv2

    from yolo_compile.reference import aoi_scene as scene
    from yolo_compile.reference.tasks import _exact_opencv

    with _exact_opencv():
        cv = scene.Canvas(size, scale=rng.uniform(30.0, 40.0) * size[0] / 1280,
                          angle=math.radians(rng.uniform(-4.0, 4.0)))
        weights = np.array([b[3] for b in scene.BOARDS], np.float64)
        board = scene.BOARDS[int(rng.choice(len(scene.BOARDS), p=weights / weights.sum()))]
        finish = scene._jit(rng, scene.FINISHES[int(rng.integers(len(scene.FINISHES)))], 12)
        solder = scene._solder_color(rng)
        bias = {scene.INSUFFICIENT: rng.uniform(0.05, 0.25), scene.OFFSET: rng.uniform(0.05, 0.3),
                scene.BRIDGE: rng.uniform(0.04, 0.2)}
        parts = scene._plan(rng, cv)
        scene._background(rng, cv, board)
        scene._traces(rng, cv, parts, board)
        scene._vias_and_fiducials(rng, cv, parts, board, finish)
        scene._silk(rng, cv, parts, board)
        draw = {"chip": scene._chip, "soic": scene._soic, "header": scene._header}
        boxes = []
        for part in parts:
            boxes += draw[part.kind](rng, cv, part, finish, solder, bias)
        boxes += scene._particles(rng, cv, parts, solder)
        sig = round(0.05 * cv.s, 1)
        hi = cv2.GaussianBlur(cv.hi, (0, 0), sig).astype(np.int32)
        sh = cv2.GaussianBlur(cv.sh, (0, 0), sig).astype(np.int32)
    img = cv.img.astype(np.int32) * (255 - sh[..., None]) // 255
    img = img + hi[..., None] * (290 - img) // 290
    return np.clip(img, 0, 255).astype(np.uint8), boxes


class Sequence:
    """Renders frames of a Conveyor: the belt strip is built once, each frame is a window plus camera effects."""

    def __init__(self, line: Conveyor, frames: int):
        w, h = line.frame_size
        self.line, self.frames = line, frames
        travel = line.offset(max(frames - 1, 0))
        pitch = w + line.gap_px
        n_boards = travel // pitch + 2
        rng = np.random.default_rng([SEQUENCE_VERSION, line.seed, 0])
        strip = np.empty((h, w + n_boards * pitch, 3), np.uint8)
        strip[:] = BELT_BGR
        strip += rng.integers(0, 6, strip.shape[:2], dtype=np.uint8)[..., None]  # belt texture
        self.boxes = []  # (class, x0, y0, x1, y1) in strip pixels
        for b in range(n_boards):
            img, boxes = _board(np.random.default_rng([SEQUENCE_VERSION, line.seed, 1, b]), (w, h))
            x = b * pitch  # the first board fills the first frame; the next ones follow on the belt
            strip[:, x:x + w] = img
            self.boxes += [(c, x0 + x, y0, x1 + x, y1) for c, x0, y0, x1, y1 in boxes]
        self.strip = strip
        cam = np.random.default_rng([SEQUENCE_VERSION, line.seed, 2])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        xx, yy = xx / w - 0.5, yy / h - 0.5
        gx, gy = cam.uniform(-0.25, 0.25, 2)
        field = cam.uniform(0.9, 1.15) * (1 + gx * xx + gy * yy - cam.uniform(0, 0.4) * (xx * xx + yy * yy))
        self.field = field  # the lamps' fixed light field, relative gain per pixel
        self.read_noise, self.shot_noise = cam.uniform(1.0, 2.0), cam.uniform(0.02, 0.08)
        self.phase = cam.uniform(0, 2 * math.pi)

    def gain(self, index: int) -> float:
        """Return the lamps' relative gain at frame index: a 100 Hz flicker sampled at fps, plus jitter."""
        line = self.line
        rng = np.random.default_rng([SEQUENCE_VERSION, line.seed, 3, index])
        beat = math.sin(2 * math.pi * 100.0 * index / line.fps + self.phase)
        return 1.0 + line.flicker * (0.8 * beat + 0.2 * rng.uniform(-1, 1))

    def frame(self, index: int) -> tuple[np.ndarray, list]:
        """Return (BGR uint8 frame, labels as (class, x0, y0, x1, y1) pixels) of frame index."""
        w, h = self.line.frame_size
        x = self.line.offset(index)
        window = self.strip[:, x:x + w].astype(np.int32)
        g = np.rint(np.clip(self.field * self.gain(index), 0.2, 2.0) * 256).astype(np.int32)
        img = np.clip(window * g[..., None] // 256, 0, 255)
        rng = np.random.default_rng([SEQUENCE_VERSION, self.line.seed, 4, index])
        sigma = np.sqrt(self.read_noise ** 2 + self.shot_noise * img)
        noise = np.rint(rng.standard_normal(img.shape) * sigma).astype(np.int32)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
        labels = []
        for c, x0, y0, x1, y1 in self.boxes:
            cx0, cx1 = max(x0 - x, 0.0), min(x1 - x, float(w))
            if cx1 - cx0 >= 0.6 * (x1 - x0) and cx1 > cx0:  # mostly inside the view
                labels.append((c, round(cx0, 2), y0, round(cx1, 2), y1))
        return img, labels


def generate(out_dir: str | Path, frames: int, line: Conveyor = Conveyor()) -> list[Path]:
    """Write frames JPEGs (+ YOLO labels and a manifest) of a conveyor sequence into out_dir/<key>/; reuse them if there.

    Returns the JPEG paths in frame order. out_dir is a cache: the folder name is the sequence's key.
    """
    import cv2

    from yolo_compile.fileio import atomic_path, write_json
    if frames < 2:
        raise ValueError(f"a conveyor sequence needs at least 2 frames, got {frames}")
    folder = Path(out_dir) / line.key(frames)
    names = [folder / "images" / f"conveyor_{i:05d}.jpg" for i in range(frames)]
    if (folder / "manifest.json").is_file() and all(p.is_file() for p in names):
        return names
    seq = Sequence(line, frames)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    w, h = line.frame_size
    for i, path in enumerate(names):
        img, labels = seq.frame(i)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, line.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0])
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a JPEG")
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.tobytes())
        text = "".join(f"{c} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
                       for c, x0, y0, x1, y1 in labels)
        with atomic_path(folder / "labels" / f"{path.stem}.txt") as tmp:
            tmp.write_text(text)
    write_json(folder / "manifest.json", {"generator": "yolo_compile.reference.conveyor", "version": SEQUENCE_VERSION,
                                          "frames": frames, "line": asdict(line),
                                          "moving": [line.moving(i) for i in range(frames)],
                                          "files": [p.name for p in names]})
    return names
