"""Shared fixtures: small real models and images the tests build themselves (no network, no downloads)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "false"
os.environ.setdefault("MPLBACKEND", "Agg")

IMGSZ = 64


def make_images(folder: Path, n: int, seed: int, size=(120, 160)) -> Path:
    """Write n small camera-like JPEGs (textured background, coloured parts) into folder."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((*size, 3), rng.integers(60, 180), np.uint8)
        for _ in range(6):
            x, y = int(rng.integers(0, size[1] - 24)), int(rng.integers(0, size[0] - 18))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(img, (x, y), (x + int(rng.integers(6, 24)), y + int(rng.integers(6, 18))), colour, -1)
        cv2.imwrite(str(folder / f"img_{seed}_{i:03d}.jpg"), img)
    return folder


def make_labeled_split(root: Path, n: int, seed: int) -> Path:
    """Write an Ultralytics-style split (images/ + labels/ + data.yaml) of drawn rectangles; return data.yaml."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    for i in range(n):
        img = np.full((96, 128, 3), 90, np.uint8)
        rows = []
        for _ in range(3):
            w, h = int(rng.integers(12, 30)), int(rng.integers(12, 30))
            x, y = int(rng.integers(0, 128 - w)), int(rng.integers(0, 96 - h))
            cls = int(rng.integers(0, 3))
            cv2.rectangle(img, (x, y), (x + w, y + h), [(255, 0, 0), (0, 255, 0), (0, 0, 255)][cls], -1)
            rows.append(f"{cls} {(x + w / 2) / 128:.6f} {(y + h / 2) / 96:.6f} {w / 128:.6f} {h / 96:.6f}")
        cv2.imwrite(str(root / "val" / "images" / f"v{seed}_{i:03d}.jpg"), img)
        (root / "val" / "labels" / f"v{seed}_{i:03d}.txt").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text("val: val/images\ntrain: val/images\nnames: {0: a, 1: b, 2: c}\n")
    return root / "data.yaml"


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory) -> dict[str, Path]:
    """Disjoint calibration and held-out image folders, and a small labeled split (data.yaml)."""
    root = tmp_path_factory.mktemp("images")
    return {"calib": make_images(root / "calib", 10, seed=1), "eval": make_images(root / "eval", 4, seed=2),
            "data": make_labeled_split(root / "labeled", 6, seed=3)}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A YOLOv8n .pt whose BatchNorm statistics were re-estimated on noise and whose class convs were widened."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny_yolov8n.pt")


def make_tiny_checkpoint(path: Path) -> Path:
    """Write the tiny checkpoint to path (also used by bench/ scripts) and return path.

    A freshly initialised YOLO gives near-constant scores (~1e-5) that survive INT8 exactly, so no gate
    could ever fail on it; re-estimated statistics make activations O(1) and quantization error visible.
    """
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml")
    net = model.model
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the passes below
            mod.reset_running_stats()
    for seq in net.model[-1].cv3:
        torch.nn.init.normal_(seq[-1].weight, std=0.1)
    net.train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.rand(8, 3, IMGSZ, IMGSZ))
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def quantized_run(tmp_path_factory, image_sets, tiny_checkpoint) -> Path:
    """A run folder where export, calibrate and quantize (mixed, CPU target) ran on the tiny checkpoint at 64 px."""
    from yolo_compile.stages import calibrate
    from yolo_compile.stages import export
    from yolo_compile.stages import quantize

    run_dir = tmp_path_factory.mktemp("run")
    export.run(export.ExportConfig(model=str(tiny_checkpoint), imgsz=IMGSZ), run_dir)
    calibrate.run(calibrate.CalibrateConfig(calib_dir=str(image_sets["calib"]), calib_images=8), run_dir)
    quantize.run(quantize.QuantizeConfig(target="cpu", recipe="mixed", calibration_method="max", quantizer="modelopt"), run_dir)
    return run_dir


@pytest.fixture
def run_copy(quantized_run, tmp_path) -> Path:
    """A private copy of quantized_run that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(quantized_run, dst)
    return dst


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, quantized_run, image_sets) -> Path:
    """A finished run folder: quantized_run's stages, the calibrate notebook executed by papermill, report, hashes."""
    import papermill as pm

    from yolo_compile import runs
    from yolo_compile.pipeline import notebook
    from yolo_compile.report.html import write_report
    from yolo_compile.pipeline.workflow import notebook_for

    run = tmp_path_factory.mktemp("finished") / "20260101T000000Z-0000test"
    shutil.copytree(quantized_run, run)
    params = {"recipe": "mixed", "target": "cpu", "imgsz": IMGSZ, "calib_dir": str(image_sets["calib"]), "calib_images": 8}
    runs.init_manifest(run, "default", params, {"calib_dir": str(image_sets["calib"])})
    nb = notebook_for("calibrate").name
    pm.execute_notebook(str(notebook_for("calibrate")), str(run / nb), cwd=str(run), progress_bar=False,
                        kernel_name="python3", parameters={"run_dir": str(run), "calib_dir": str(image_sets["calib"]),
                                                           "calib_images": 8})
    for stage in ("export", "calibrate", "quantize"):
        runs.record_stage(run, stage, status="passed", seconds=1.0, notebook=nb if stage == "calibrate" else None)
    notebook.clean_run_notebooks(run)
    write_report(run, "passed")
    runs.finish_manifest(run, "passed")
    return run


def activation_scales(path) -> dict[str, float]:
    """Return {tensor: scale} of every activation QuantizeLinear in a Q/DQ ONNX file (weights excluded)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    return {n.input[0]: float(numpy_helper.to_array(init[n.input[1]]).reshape(-1)[0])
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init}


def make_confident_run(checkpoint: Path, calib: Path, root: Path) -> tuple[Path, Path]:
    """Return (run folder, data.yaml): the tiny model with class biases raised, quantized, and a split it labeled.

    The tiny model's scores (~1e-4) make every study score 0 and end the recipe search at its first step; with
    scores ~0.5 and labels from FP32's own confident detections, the judge and the mAP see real quantization
    error (used by the parallel-study test and bench/matrix.py).
    """
    import json

    import torch
    from ultralytics import YOLO

    from yolo_compile import images, runs
    from yolo_compile.stages import calibrate
    from yolo_compile.evaluate import detections
    from yolo_compile.stages import export
    from yolo_compile.stages import quantize

    root.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(checkpoint))
    with torch.no_grad():
        for seq in model.model.model[-1].cv3:
            seq[-1].bias.add_(10.0)
    model.save(str(root / "confident.pt"))
    run = root / "run"
    export.run(export.ExportConfig(model=str(root / "confident.pt"), imgsz=IMGSZ), run)
    calibrate.run(calibrate.CalibrateConfig(calib_dir=str(calib), calib_images=8), run)
    quantize.run(quantize.QuantizeConfig(target="cpu", recipe="mixed", calibration_method="max", quantizer="modelopt"), run)
    split = root / "labeled"  # square images: no letterbox, so FP32's boxes are the labels as they are
    make_images(split / "val" / "images", 6, seed=7, size=(IMGSZ, IMGSZ))
    (split / "val" / "labels").mkdir(parents=True)
    exp = runs.read_result(run, "export")
    for p in sorted((split / "val" / "images").glob("*.jpg")):
        d = detections.decode(images.run_onnx(run / exp["onnx"], images.load_tensor(p, IMGSZ)[None], exp["input_name"])[0],
                              conf=0.5)
        xyxy = np.clip(d.boxes / IMGSZ, 0, 1)
        (split / "val" / "labels" / f"{p.stem}.txt").write_text("".join(
            f"{int(c)} {(b[0] + b[2]) / 2:.6f} {(b[1] + b[3]) / 2:.6f} {b[2] - b[0]:.6f} {b[3] - b[1]:.6f}\n"
            for b, c in zip(xyxy, d.classes) if b[2] > b[0] and b[3] > b[1]))
    names = {int(k): v for k, v in exp["class_names"].items()}
    (split / "data.yaml").write_text(json.dumps({"val": "val/images", "train": "val/images", "names": names}))
    return run, split / "data.yaml"
