"""Speed targets, checked against a throughput result.json (never inside timed tests).

    python bench/run.py [path/to/throughput/result.json ...]   # default: docs/h100-throughput/*_result.json

Prints one table row per target: measured value, target, and whether it is met. Exits 1 if a target that
applies to the result's device is missed. GPU targets are for an H100 (80 GB HBM3) at 640 px; CPU targets
(issue 13) apply to any CPU-target result (e.g. artifacts/runs/<run>/throughput/result.json), at batch 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (result file stem prefix, what, selector, minimum)
TARGETS = [
    ("aoi_yolov8n", "images/s, PyTorch FP16 + CUDA graph, batch 32", ("rows", "pytorch fp16 + cuda graph", 32), 4500),
    ("aoi_yolov8n", "latency p50 ms, PyTorch FP16 + CUDA graph, batch 1 (max)", ("p50", "pytorch fp16 + cuda graph", 1), 1.5),
    ("yolov8s", "images/s, PyTorch FP16 + CUDA graph, batch 32", ("rows", "pytorch fp16 + cuda graph", 32), 2500),
    ("aoi_yolov8n", "frames/s end to end, nvJPEG overlapped, 8 streams", ("e2e", "gpu decode (nvJPEG)", 8), 1200),
    ("aoi_yolov8n", "nvJPEG / cpu float32 end to end, 8 streams overlapped", ("ratio", "gpu decode (nvJPEG)", 8), 2.0),
    ("", "shipped CPU engine / ONNX Runtime FP32, images/s, batch 1", ("cpu", "shipped", ("onnxruntime", "fp32")), 3.0),
    ("", "INT8 / FP32 on OpenVINO, images/s, batch 1", ("cpu", ("openvino", "int8"), ("openvino", "fp32")), 1.3),
]


def cpu_ips(res: dict, which) -> float | None:
    """Return batch-1 images/s of the shipped engine, or of (backend, fp32|int8) on a CPU-target result."""
    for r in res.get("rows", []):
        if r["device"] != "cpu" or r["batch"] != 1 or r["backend"] not in ("onnxruntime", "openvino"):
            continue
        kind = "fp32" if r["model"] == "fp32 onnx" else "int8"
        if (which == "shipped" and r.get("shipped")) or which == (r["backend"], kind):
            return r["images_per_s"]
    return None


def value(res: dict, sel: tuple) -> float | None:
    kind, name, n = sel
    if kind == "cpu":
        if res.get("backend") not in ("onnxruntime", "openvino"):
            return None
        top, bottom = cpu_ips(res, name), cpu_ips(res, n)
        return None if top is None or not bottom else top / bottom
    if kind in ("rows", "p50"):
        row = next((r for r in res["rows"] if r["model"] == name and r["batch"] == n and r["device"] == "cuda"), None)
        return None if row is None else row["images_per_s" if kind == "rows" else "p50_ms"]
    e2e = {(r["path"], r["mode"], r["streams"]): r["frames_per_s"] for r in res.get("end_to_end", [])}
    got = e2e.get((name, "overlapped", n))
    if kind == "ratio":
        base = e2e.get(("cpu decode, float32 upload", "overlapped", n))
        return None if got is None or not base else got / base
    return got


def main(paths: list[str]) -> int:
    files = [Path(p) for p in paths] or sorted((REPO / "docs" / "h100-throughput").glob("*_result.json"))
    files = [f / "throughput" / "result.json" if f.is_dir() else f for f in files]  # a run folder works too
    missed = 0
    print(f"{'result':<28} {'target':<62} {'measured':>10} {'wanted':>8}  ok")
    name = lambda f: f.stem if f.stem != "result" else f.parent.parent.name  # noqa: E731
    for f in files:
        res = json.loads(f.read_text())
        for stem, what, sel, want in TARGETS:
            if not f.stem.startswith(stem):
                continue
            got = value(res, sel)
            upper = "(max)" in what
            ok = got is not None and (got <= want if upper else got >= want)
            missed += got is not None and not ok
            shown = "n/a" if got is None else f"{got:,.2f}"
            print(f"{name(f)[:28]:<28} {what:<62} {shown:>10} {want:>8,}  {'yes' if ok else ('skip' if got is None else 'NO')}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
