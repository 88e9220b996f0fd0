"""Stage 6: latency and throughput of the built engine and the FP32 baseline, side by side, on this machine."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import runs
from .config import check_positive

log = logging.getLogger(__name__)
STAGE = "throughput"


@dataclass(frozen=True)
class ThroughputConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # batch sweep (a static-batch model runs its own batch only)
    warmup: int = 3  # untimed iterations per model and batch
    iterations: int = 50  # timed iterations per model and batch, at most
    max_seconds: float = 5.0  # stop timing a model/batch pair after this long (keeps CPU runs short)
    threads: int = 0  # ONNX Runtime intra-op threads; 0: one per core

    def __post_init__(self) -> None:
        check_positive("iterations", self.iterations)
        check_positive("max_seconds", self.max_seconds)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"parameter 'batch_sizes' = {self.batch_sizes!r}: give positive batch sizes")


@dataclass
class ThroughputResult:
    status: str
    backend: str
    reason: str = ""
    rows: list = field(default_factory=list)  # one per model and batch
    models: dict = field(default_factory=dict)  # name -> {path, bytes}
    bytes_per_frame: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    plot: str = ""
    seconds: float = 0.0


def latency_stats(samples_s: list[float], batch: int) -> dict:
    """Return p50/p90/p99/mean latency in ms and images/s for per-call latencies in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"iterations": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "images_per_s": float(batch * a.size / (a.sum() / 1e3))}


def time_calls(call, warmup: int, iterations: int, max_seconds: float) -> list[float]:
    """Return per-call wall latencies (s) of call() after warmup, stopping at iterations or max_seconds."""
    for _ in range(warmup):
        call()
    samples, start = [], time.perf_counter()
    while len(samples) < iterations and (time.perf_counter() - start) < max_seconds:
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def batches_for(input_shape: list, requested: tuple[int, ...]) -> list[int]:
    """Return the batch sizes a model can run: all requested ones if its batch axis is symbolic."""
    return sorted(set(requested)) if not isinstance(input_shape[0], int) else [int(input_shape[0])]


def run(cfg: ThroughputConfig, run_dir: str | Path) -> ThroughputResult:
    """Time the engine and the FP32 baseline over the batch sweep; skip with a reason where no engine was built."""
    run_dir = Path(run_dir)
    exp = runs.require_passed(run_dir, "export")
    build = runs.read_result(run_dir, "build")
    if build.get("status") != "passed":
        result = ThroughputResult(status="skipped", backend="none",
                                  reason=f"no engine was built: {build.get('reason', build.get('status'))}")
        runs.write_result(run_dir, STAGE, result)
        return result
    size = int(exp["imgsz"])
    batches = batches_for(exp["input_shape"], cfg.batch_sizes)
    models = {"fp32 onnx (baseline)": run_dir / exp["onnx"], f"engine ({build['backend']})": run_dir / build["engine"]}
    rows, notes = [], []
    with runs.Timer() as t:
        for name, path in models.items():
            for b in batches:
                x = np.random.default_rng(0).random((b, 3, size, size), dtype=np.float32)
                call = _make_call(path, exp["input_name"], x, cfg.threads, build["backend"] if "engine" in name else "onnxruntime")
                samples = time_calls(call, cfg.warmup, cfg.iterations, cfg.max_seconds)
                rows.append({"model": name, "batch": b, **latency_stats(samples, b)})
                log.info("%s batch %d: %.1f img/s", name, b, rows[-1]["images_per_s"])
    notes += _cpu_notes(rows, build["backend"])
    result = ThroughputResult(
        status="passed", backend=build["backend"], rows=rows,
        models={k: {"path": str(v.relative_to(run_dir)), "bytes": v.stat().st_size} for k, v in models.items()},
        bytes_per_frame={"float32 input": 3 * size * size * 4, "uint8 input (fused preprocessing)": 3 * size * size},
        notes=notes, seconds=round(t.seconds, 2),
    )
    result.plot = f"{STAGE}/{_plot(rows, run_dir / STAGE / 'throughput.png').name}"
    runs.write_result(run_dir, STAGE, result)
    return result


def _make_call(path: Path, input_name: str, x: np.ndarray, threads: int, backend: str):
    if backend == "tensorrt":
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        runner.activate()
        return lambda: runner.infer({input_name: x})
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {input_name: x})


def _cpu_notes(rows: list[dict], backend: str) -> list[str]:
    if backend != "onnxruntime":
        return []
    notes = []
    flags = runs.cpu_flags()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    base = {r["batch"]: r["images_per_s"] for r in rows if r["model"].startswith("fp32")}
    eng = {r["batch"]: r["images_per_s"] for r in rows if r["model"].startswith("engine")}
    for b in sorted(base):
        if b in eng and eng[b] < base[b]:
            notes.append(f"batch {b}: the quantized engine is {base[b] / eng[b]:.2f}x slower than FP32 on this CPU")
    if not vnni:
        notes.append("this CPU has no VNNI/AMX INT8 instructions: INT8 Q/DQ is not a speed win here; "
                     "the CPU run proves accuracy, the speed-up belongs to the TensorRT target")
    return notes


def _plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [next((r["images_per_s"] for r in rows if r["model"] == m and r["batch"] == b), 0) for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], vals, width, label=m)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("images/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with runs.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
