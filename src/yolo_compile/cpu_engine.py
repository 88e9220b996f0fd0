"""The CPU engine of the build stage: OpenVINO IR and ONNX Runtime, timed alike, the faster verified one ships.

Both engines are built from the quantized ONNX the gate evaluated (a ModelOpt Q/DQ or an NNCF model), timed
with the throughput stage's protocol (batch 1, until the p50 is stable), and the faster one among the
runtimes the compare stage verified ships. The shipped engine is then run beside the verified model on
real calibration images: the engine that ships must give the outputs the gate judged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import images, runs
from .backends import available, open_runner
from .errors import BuildError, RunFolderError
from .timing import exclusive, latency_stats, time_adaptive

log = logging.getLogger(__name__)
STAGE = "build"
CHECK_IMAGES = 4
# Outputs are box pixels (0..imgsz) next to scores (0..1): equal engines differ by float rounding only.
CHECK_ATOL, CHECK_RTOL = 1e-3, 1e-4


def verified_backends(run_dir: Path) -> tuple[list[str], str]:
    """Return (runtimes the compare stage verified the quantized model on, where that came from)."""
    try:
        res = runs.read_result(run_dir, "compare")
    except RunFolderError:
        return ["onnxruntime"], "no compare result in the run folder: only ONNX Runtime counts as verified"
    found = res.get("verified_backends")
    if found is None:
        return ["onnxruntime"], "the compare result names no verified_backends: it ran ONNX Runtime only"
    return list(found), f"the compare stage verified: {', '.join(found) or 'none'}"


def check_images(run_dir: Path, size: int, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """Return (float32 (n, 3, size, size) real images, where from): the run's first calibration images, or its
    held-out images where no calibrate stage ran (the fp16 workflow)."""
    try:
        cal = runs.require_passed(run_dir, "calibrate")
    except RunFolderError:
        held_out = runs.read_manifest(run_dir).get("parameters", {}).get("eval_dir", "")
        files = images.list_images(held_out)[:n] if held_out and Path(held_out).is_dir() else []
        if not files:
            raise BuildError(f"{run_dir}: no calibrate stage and no readable eval_dir images to check the engine on; "
                             "pass eval_dir=DIR with real frames") from None
        return np.stack([images.load_tensor(p, size) for p in files]), f"{len(files)} held-out images from {held_out}"
    folder = Path(cal.get("calib_dir", ""))
    files = [folder / f["file"] for f in cal.get("files", [])[:n]]
    if files and all(p.is_file() for p in files):
        return np.stack([images.load_tensor(p, size) for p in files]), f"{len(files)} calibration images from {folder}"
    array = run_dir / cal.get("array", "")
    if array.is_file():
        data = np.load(array, mmap_mode="r")
        return images.to_float(np.asarray(data[:n])), f"the first {min(n, len(data))} rows of {array.name}"
    raise BuildError(f"{run_dir}/calibrate: neither the calibration images nor the array are readable; "
                     "re-run the calibrate stage (the shipped engine is checked on real images)")


def build_openvino(src: Path, run_dir: Path):
    """Return a BuildResult for build/model.xml + .bin: src as OpenVINO reads it, saved as IR (float stays FP32)."""
    import openvino as ov

    from .build import BuildResult

    out = runs.stage_dir(run_dir, STAGE)
    xml, bins = out / "model.xml", out / "model.bin"
    tmp = Path(tempfile.mkdtemp(prefix=".ir.", dir=out))
    try:
        # The IR is what the gate evaluated: OpenVINO opens an ONNX through the same convert_model
        # (backends.load_openvino_model; read_model mis-runs Q/DQ files). Weights the quantizer stored as int8
        # (ModelOpt dq_only, NNCF) stay int8 in the IR; compress_to_fp16=False keeps FP32 FP32.
        from .backends import load_openvino_model

        model = load_openvino_model(src)
        int8 = sum(1 for op in model.get_ops() if op.get_type_name() == "Constant"
                   and op.get_output_element_type(0) == ov.Type.i8)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "model.bin").replace(bins)  # the .bin first: a model.xml never names a missing .bin
        (tmp / "model.xml").replace(xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(
        status="passed", backend="openvino", target="cpu", engine=f"{STAGE}/{xml.name}",
        engine_sha256=runs.sha256(xml), engine_bytes=xml.stat().st_size + bins.stat().st_size,
        source_onnx=str(src.relative_to(run_dir)),
        details={"openvino": ov.get_version(), "device": "CPU", "files": {"model.xml": runs.sha256(xml),
                 "model.bin": runs.sha256(bins)}, "compress_to_fp16": False, "int8_weight_constants": int8},
    )


def engine_files(result) -> list[Path]:
    """Return the files an engine consists of (an IR is its .xml and .bin)."""
    path = Path(result.engine)
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def time_engine(name: str, path: Path, x: np.ndarray, seconds: float) -> dict:
    """Return latency_stats of one engine at x's batch, timed until the p50 is stable or `seconds` pass."""
    runner = open_runner(name, path)
    with exclusive(f"build {name}"):  # the engine choice is timed alone on this machine, like the throughput stage
        timing = time_adaptive(runner.prepare(x), warmup=2, max_seconds=seconds)
    return {**latency_stats(timing.samples, len(x)), "stopped": timing.stopped}


def check_engine(name: str, engine: Path, verified_model: Path, x: np.ndarray, where: str) -> dict:
    """Return how the engine's outputs compare with the verified model's on the same backend and images."""
    got, want = open_runner(name, engine).run(x), open_runner(name, verified_model).run(x)
    diff = np.abs(got.astype(np.float64) - want)
    limit = CHECK_ATOL + CHECK_RTOL * np.abs(want)
    return {"images": where, "against": f"{name} on {verified_model.name} (the model the gate evaluated)",
            "max_abs_diff": float(diff.max()), "atol": CHECK_ATOL, "rtol": CHECK_RTOL,
            "passed": bool(np.isfinite(got).all() and (diff <= limit).all())}


def build_cpu(cfg, src: Path, run_dir: Path):
    """Build each CPU engine, time them alike, ship the fastest verified one whose outputs match; say why."""
    from .build import build_onnxruntime

    exp = runs.require_passed(run_dir, "export")
    verified, verified_why = verified_backends(run_dir)
    x, where = check_images(run_dir, int(exp["imgsz"]))
    builders = {"openvino": build_openvino, "onnxruntime": build_onnxruntime}
    built, speed, checks, notes = {}, {}, {}, []
    for name in cfg.cpu_engines:
        ok, why = available(name)
        if not ok:
            notes.append(f"{name}: not built, {why}")
            continue
        if name not in verified:  # an engine that may not ship is not worth building or timing
            notes.append(f"{name}: not built, the compare stage did not verify it ({verified_why})")
            continue
        try:
            res = builders[name](src, run_dir)
            checks[name] = check_engine(name, run_dir / res.engine, src, x, where)
        except Exception as e:  # noqa: BLE001  a runtime that cannot take the model is a candidate less
            notes.append(f"{name}: failed to build or run: {e}")
            continue
        built[name] = res
    eligible = [n for n in built if n in verified and checks[n]["passed"]]
    for n in built:
        if not checks[n]["passed"]:
            notes.append(f"{n}: not shipped, its engine differs from the verified model by up to "
                         f"{checks[n]['max_abs_diff']:.3g} (atol {CHECK_ATOL}, rtol {CHECK_RTOL})")
    if not eligible:
        raise BuildError(f"{src}: no CPU engine can ship: {'; '.join(notes) or 'none was built'}; install "
                         "onnxruntime or yolo-compile[openvino] and re-run compare so it verifies that runtime")
    if len(eligible) > 1:  # timing decides only between engines that may ship; the throughput stage times the one that does
        speed = {n: time_engine(n, run_dir / built[n].engine, x[:1], cfg.choice_seconds) for n in eligible}
    picked = max(eligible, key=lambda n: speed[n]["images_per_s"]) if speed else eligible[0]
    result = built[picked]
    keep = {run_dir / p for p in engine_files(result)}
    for n, res in built.items():  # only the shipped engine stays in the run folder (the choice keeps the numbers)
        for p in engine_files(res):
            if run_dir / p not in keep:
                (run_dir / p).unlink(missing_ok=True)
    result.choice = {
        "candidates": list(built), "images_per_s": {n: round(s["images_per_s"], 2) for n, s in speed.items()},
        "p50_ms": {n: round(s["p50_ms"], 3) for n, s in speed.items()},
        "timing": {n: {"iterations": s["iterations"], "stopped": s["stopped"]} for n, s in speed.items()},
        "protocol": f"batch 1, one calibration image, warm-up 2, until the p50 is stable within 2% or {cfg.choice_seconds} s",
        "verified_backends": verified, "picked": picked, "reason": _reason(picked, speed, eligible, notes),
    }
    result.checks = checks[picked]
    log.info("CPU engine: %s", result.choice["reason"])
    return result


def _reason(picked: str, speed: dict, eligible: list[str], notes: list[str]) -> str:
    if picked not in speed:
        return (f"{picked}: the only engine that may ship (not timed here: the throughput stage measures it)"
                + (f" ({'; '.join(notes)})" if notes else ""))
    ips = speed[picked]["images_per_s"]
    others = [f"{n} {speed[n]['images_per_s']:.1f} ({ips / speed[n]['images_per_s']:.2f}x)" for n in speed if n != picked]
    text = f"{picked}: {ips:.1f} images/s at batch 1 on the quantized model"
    text += f", vs {', '.join(others)}" if others else ""
    text += "; fastest of the verified engines" if len(eligible) > 1 else "; the only engine that may ship"
    return text + (f" ({'; '.join(notes)})" if notes else "")
