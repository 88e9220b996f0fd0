"""Accuracy of INT8 recipes side by side, one table per reference domain.

    YOLO_OFFLINE=1 python bench/accuracy.py [--calib-images 128] [--score-images 0] [--skip-ultralytics]

Rows: ours (calibration_method=auto, CPU target, and the TensorRT-ready Q/DQ model), ModelOpt defaults (entropy,
all INT8), ONNX Runtime quantize_static (QDQ, per-channel, MinMax), Ultralytics' own export(format="openvino",
int8=True). Each scored by our evaluator (ONNX Runtime and OpenVINO) and by Ultralytics' validator (rect=False,
on a copy of the split so its label cache and runs/ folder never land in the inputs), with file size and the
time each took. References are a list; one whose files are absent is skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCES = [  # (name, checkpoint, calibration folder, labeled data.yaml)
    ("aoi", "models/aoi_yolov8n.pt", "calib_data/aoi", "data/aoi/data.yaml"),
    ("binary_aoi", "models/binary_aoi_yolov8n.pt", "calib_data/binary_aoi", "data/binary_aoi/data.yaml"),
]


def split_copy(data_yaml: Path, dst: Path) -> Path:
    """Copy a data.yaml's val split into dst (images + labels) and return a data.yaml pointing at the copy."""
    import yaml

    from yolo_compile.evaluate import accuracy

    cfg = yaml.safe_load(data_yaml.read_text())
    split = accuracy.read_split(data_yaml)
    for img in split.images:
        for src, sub in ((img, "images"), (accuracy.label_path(img), "labels")):
            if src.is_file():
                (dst / "val" / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst / "val" / sub / src.name)
    out = dst / "data.yaml"
    out.write_text(yaml.safe_dump({"path": str(dst), "train": "val/images", "val": "val/images", "names": cfg["names"]}))
    return out


def ultralytics_map(model: Path, data_yaml: Path, imgsz: int, work: Path) -> float | None:
    """Return Ultralytics' validator mAP50-95 of a model file (ONNX or OpenVINO folder), runs kept in work."""
    from ultralytics import YOLO

    try:
        m = YOLO(str(model), task="detect").val(data=str(data_yaml), imgsz=imgsz, batch=1, rect=False, plots=False,
                                                project=str(work / "runs"), name="val", exist_ok=True, verbose=False)
        return float(m.box.map)
    except Exception as e:  # a peer that cannot run here is reported, not fatal
        print(f"  ultralytics val failed on {model.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def ort_quantize_static(fp32: Path, dst: Path, array: Path, input_name: str) -> None:
    """ONNX Runtime's quantize_static (QDQ, per-channel, MinMax) on the calibration array, in a fresh interpreter.

    ModelOpt patches onnxruntime.quantization inside the process that ran it: measured here, quantize_static after
    a ModelOpt quantize fails with "Quantization parameters are not specified for param images", and alone it works.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        pool.submit(_ort_quantize_static, str(fp32), str(dst), str(array), input_name).result()


def _ort_quantize_static(fp32: str, dst: str, array: str, input_name: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from yolo_compile import images

    data = np.load(array, mmap_mode="r")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(data):
                return None
            self.i += 1
            return {input_name: images.to_float(data[self.i - 1:self.i])}

    quantize_static(fp32, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True)


def bench_reference(name: str, ckpt: Path, calib: Path, data_yaml: Path, args, work: Path) -> list[dict]:
    from yolo_compile import images, runs
    from yolo_compile.evaluate import accuracy
    from yolo_compile.stages import calibrate
    from yolo_compile.stages import export
    from yolo_compile.stages import quantize
    from yolo_compile.quant import modelopt

    run_dir = work / "run"
    export.run(export.ExportConfig(model=str(ckpt)), run_dir)
    cal = calibrate.run(calibrate.CalibrateConfig(calib_dir=str(calib), calib_images=args.calib_images), run_dir)
    exp = runs.read_result(run_dir, "export")
    fp32, size = run_dir / exp["onnx"], int(exp["imgsz"])
    names = {int(k): v for k, v in exp["class_names"].items()}
    data = np.load(run_dir / cal.array, mmap_mode="r")
    split = accuracy.read_split(data_yaml)
    arr = images.preprocessed(split.images, size, runs.cache_root(run_dir), desc="labeled images").array
    copy_yaml = split_copy(data_yaml, work / "split")
    rows: list[dict] = [{"recipe": "fp32", "file": fp32, "seconds": 0.0}]
    only = [w for w in args.only.split(",") if w]

    def timed(label, fn, path):
        if only and not any(w in label for w in only):
            return
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001  a tool that cannot quantize this model is a row with its reason
            rows.append({"recipe": label, "file": path, "seconds": round(time.perf_counter() - t, 1),
                         "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"})
            print(f"  {label} failed: {rows[-1]['error']}", file=sys.stderr)
            return
        rows.append({"recipe": label, "file": path, "seconds": round(time.perf_counter() - t, 1)})

    for target in ("cpu", "tensorrt"):
        def ours(target=target):
            q = quantize.run(quantize.QuantizeConfig(target=target, data=str(data_yaml), score_images=args.score_images),
                             run_dir)
            shutil.copy(run_dir / q.onnx, work / f"ours-{target}.onnx")
            print(f"  ours ({target}): {q.quantizer} {q.calibration_method}; candidates:",
                  json.dumps([{k: r.get(k, 'not tried') for k in ('quantizer', 'calibration', 'drop_points')} for r in q.candidates]))
        timed(f"ours auto ({target})", ours, work / f"ours-{target}.onnx")
    timed("modelopt defaults (entropy, all INT8)",
          lambda: modelopt.modelopt_quantize(fp32, work / "modelopt.onnx", data, exp, "entropy", "fp32"), work / "modelopt.onnx")
    timed("onnxruntime quantize_static (QDQ, per-channel, MinMax)",
          lambda: ort_quantize_static(fp32, work / "ort.onnx", run_dir / cal.array, exp["input_name"]), work / "ort.onnx")
    if not args.skip_ultralytics:
        def peer():
            from ultralytics import YOLO

            shutil.copy(ckpt, work / "peer.pt")
            YOLO(str(work / "peer.pt")).export(format="openvino", int8=True, data=str(copy_yaml), imgsz=size,
                                               fraction=1.0, batch=1)
        timed("ultralytics export(openvino, int8) (NNCF)", peer, work / "peer_int8_openvino_model")
    base = {}
    for row in rows:
        path = row["file"]
        if row.get("error") or not path.exists():
            row.setdefault("error", "not produced")
            continue
        for backend in ("onnxruntime", "openvino"):
            if path.is_dir() and backend == "onnxruntime":
                continue
            model = next(path.glob("*.xml")) if path.is_dir() else path
            m = accuracy.evaluate(accuracy.predict(model, arr, desc=f"{row['recipe']} {backend}", backend=backend),
                                  split, size, names)["map50_95"]
            row[f"ours_{backend}"] = round(100 * m, 2)
            base.setdefault(f"ours_{backend}", row[f"ours_{backend}"])
        row["ultralytics_val"] = (round(100 * v, 2) if (v := ultralytics_map(path, copy_yaml, size, work)) is not None
                                  else None)
        base.setdefault("ultralytics_val", row["ultralytics_val"])
        row["MB"] = round(sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path])) / 1e6, 2)
    for row in rows:
        for key in ("ours_onnxruntime", "ours_openvino", "ultralytics_val"):
            if row.get(key) is not None and base.get(key) is not None:
                row[f"drop_{key}"] = round(base[key] - row[key], 2)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--score-images", type=int, default=0, help="labeled images scoring our candidates (0: all)")
    ap.add_argument("--skip-ultralytics", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated words: only the rows whose recipe names one (fp32 always)")
    args = ap.parse_args()
    cols = ["recipe", "ours_onnxruntime", "drop_ours_onnxruntime", "ours_openvino", "drop_ours_openvino",
            "ultralytics_val", "drop_ultralytics_val", "MB", "seconds", "error"]
    for name, ckpt, calib, data_yaml in REFERENCES:
        paths = [REPO / ckpt, REPO / calib, REPO / data_yaml]
        missing = [str(p.relative_to(REPO)) for p in paths if not p.exists()]
        print(f"\n## {name}")
        if missing:
            print(f"skipped: {', '.join(missing)} not present")
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-accuracy-{name}-") as tmp:
            rows = bench_reference(name, *paths, args, Path(tmp))
        print("mAP50-95 x100; drop in points from FP32 on the same scorer")
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(str(r.get(c, "-")) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
