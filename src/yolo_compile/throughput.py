"""Stage 6: latency and throughput of the built engine and the FP32 baseline, side by side, on this machine."""

from __future__ import annotations

import logging
import subprocess
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import runs
from .config import check_positive
from .errors import ThroughputError

log = logging.getLogger(__name__)
STAGE = "throughput"


@dataclass(frozen=True)
class ThroughputConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # batch sweep (a static-batch model runs its own batch only)
    warmup: int = 3  # untimed iterations per model and batch
    iterations: int = 50  # timed iterations per model and batch, at most
    max_seconds: float = 5.0  # stop timing a model/batch pair after this long (keeps CPU runs short)
    threads: int = 0  # ONNX Runtime intra-op threads; 0: one per core
    pytorch: bool = True  # also time PyTorch from the run's checkpoint (FP32 eager; on a GPU FP16 eager and FP16 + CUDA graph)
    eval_dir: str = ""  # JPEG camera frames for the end-to-end decode comparison; empty: skip it
    streams: tuple[int, ...] = (4, 8)  # concurrent camera streams (frames per batch) for the end-to-end comparison
    e2e_batches: int = 20  # batches timed per end-to-end pipeline and mode

    def __post_init__(self) -> None:
        check_positive("iterations", self.iterations)
        check_positive("max_seconds", self.max_seconds)
        check_positive("e2e_batches", self.e2e_batches)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ThroughputError(f"parameter 'batch_sizes' = {self.batch_sizes!r}: give positive batch sizes, e.g. 1,8,32")
        if not self.streams or min(self.streams) < 1:
            raise ThroughputError(f"parameter 'streams' = {self.streams!r}: give positive stream counts, e.g. 4,8")


@dataclass
class ThroughputResult:
    status: str
    backend: str
    reason: str = ""
    rows: list = field(default_factory=list)  # one per backend, model and batch
    models: dict = field(default_factory=dict)  # name -> {path, bytes}
    bytes_per_frame: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # "backend: why" for each backend this machine cannot run
    end_to_end: list = field(default_factory=list)  # one per preprocessing path, mode and stream count
    end_to_end_summary: list = field(default_factory=list)  # the same, one line each
    gpu: dict = field(default_factory=dict)  # nvidia-smi clocks before and after the GPU rows
    notes: list = field(default_factory=list)
    table: str = ""  # markdown tables of rows and end_to_end
    plot: str = ""
    seconds: float = 0.0


def latency_stats(samples_s: list[float], batch: int) -> dict:
    """Return p50/p90/p99/mean latency in ms and images/s for per-call latencies in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"iterations": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "images_per_s": float(batch * a.size / (a.sum() / 1e3))}


def time_calls(call, warmup: int, iterations: int, max_seconds: float, cuda: bool = False) -> list[float]:
    """Return per-call latencies (s) of call() after warmup, stopping at iterations or max_seconds.

    With cuda=True each call is bracketed by CUDA events on the current stream and synchronized, so the
    latency is device-side time (host launch gaps included only where they starve the GPU).
    """
    for _ in range(warmup):
        call()
    sync = start_ev = end_ev = None
    if cuda:
        import torch

        sync = torch.cuda.synchronize
        start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync()
    samples, start = [], time.perf_counter()
    while len(samples) < iterations and (time.perf_counter() - start) < max_seconds:
        if cuda:
            start_ev.record()
            call()
            end_ev.record()
            end_ev.synchronize()
            samples.append(start_ev.elapsed_time(end_ev) / 1e3)
        else:
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
    return samples


def batches_for(input_shape: list, requested: tuple[int, ...]) -> list[int]:
    """Return the batch sizes a model can run: all requested ones if its batch axis is symbolic."""
    return sorted(set(requested)) if not isinstance(input_shape[0], int) else [int(input_shape[0])]


def cuda_device() -> tuple[bool, str]:
    """Return (usable, reason) for PyTorch CUDA on this machine."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, torch.cuda.get_device_name(0)


def gpu_clocks() -> dict:
    """Return nvidia-smi's clocks, temperature, power and performance state of GPU 0 (empty without one)."""
    fields = ("name", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "temperature.gpu", "power.draw",
              "pstate")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode or not lines:
        return {}
    return dict(zip(fields, (v.strip() for v in lines[0].split(","))))


def run(cfg: ThroughputConfig, run_dir: str | Path) -> ThroughputResult:
    """Time every backend this machine has over the batch sweep, then camera frames end to end; say what was skipped."""
    run_dir = Path(run_dir)
    exp = runs.require_passed(run_dir, "export")
    build = runs.read_result(run_dir, "build")
    if build.get("status") != "passed":
        result = ThroughputResult(status="skipped", backend="none",
                                  reason=f"no engine was built: {build.get('reason', build.get('status'))}")
        runs.write_result(run_dir, STAGE, result)
        return result
    size, name = int(exp["imgsz"]), exp["input_name"]
    batches = batches_for(exp["input_shape"], cfg.batch_sizes)
    has_cuda, cuda_why = cuda_device()
    models = {"fp32 onnx": run_dir / exp["onnx"], f"engine ({build['backend']})": run_dir / build["engine"]}
    rows, skipped, gpu = [], [], {}
    with runs.Timer() as t:
        for label, path in models.items():
            backend = build["backend"] if label.startswith("engine") else "onnxruntime"
            device = "cuda" if backend == "tensorrt" else "cpu"
            for b in tqdm(batches, desc=label, disable=None):
                call = _make_call(path, name, b, size, cfg.threads, backend)
                samples = time_calls(call, cfg.warmup, cfg.iterations, cfg.max_seconds, cuda=device == "cuda")
                rows.append(_row(label, backend, device, b, samples))
        if build["backend"] != "tensorrt":
            skipped.append(f"TensorRT engine: build backend is {build['backend']} "
                           f"({'no TensorRT on this machine' if build['target'] == 'cpu' else build.get('reason', '')})")
        if cfg.pytorch:
            gpu["before"] = gpu_clocks()
            rows += _torch_rows(cfg, run_dir / exp["checkpoint"], size, batches, has_cuda)
            gpu["after"] = gpu_clocks()
            if not has_cuda:
                skipped.append(f"PyTorch CUDA (FP32, FP16, FP16 + CUDA graph): {cuda_why}")
        else:
            skipped.append("PyTorch: pytorch is false")
        e2e = []
        if cfg.eval_dir:
            e2e, why = _end_to_end(cfg, run_dir, exp, build, has_cuda)
            skipped += why
            if not has_cuda:
                skipped.append(f"GPU decode (nvJPEG) and overlapped CUDA streams: {cuda_why}")
        else:
            skipped.append("end-to-end decode comparison: eval_dir is empty (give a folder of JPEG frames)")
    result = ThroughputResult(
        status="passed", backend=build["backend"], rows=rows,
        models={k: {"path": str(v.relative_to(run_dir)), "bytes": v.stat().st_size} for k, v in models.items()},
        bytes_per_frame={"float32 input": 3 * size * size * 4, "uint8 input (fused preprocessing)": 3 * size * size,
                         **{r["path"]: r["bytes_per_frame"] for r in e2e if r["mode"] == "serial"}},
        skipped=skipped, end_to_end=e2e, end_to_end_summary=[_e2e_line(r) for r in e2e], gpu=gpu,
        notes=_cpu_notes(rows, build["backend"]) + _gpu_notes(rows, e2e), seconds=round(t.seconds, 2),
    )
    result.table = f"{STAGE}/{runs.write_text(run_dir / STAGE / 'table.md', markdown(result)).name}"
    result.plot = f"{STAGE}/{_plot(rows, e2e, run_dir / STAGE / 'throughput.png').name}"
    runs.write_result(run_dir, STAGE, result)
    return result


def _row(model: str, backend: str, device: str, batch: int, samples: list[float], **extra) -> dict:
    return {"model": model, "backend": backend, "device": device, "batch": batch, **latency_stats(samples, batch), **extra}


def _make_call(path: Path, input_name: str, batch: int, size: int, threads: int, backend: str):
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    if backend == "tensorrt":
        import torch
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        runner.activate()
        xd = torch.from_numpy(x).cuda()  # device input and output: time the engine, not PCIe
        return lambda: runner.infer({input_name: xd}, copy_outputs_to_host=False)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {input_name: x})


def _torch_rows(cfg: ThroughputConfig, checkpoint: Path, size: int, batches: list[int], has_cuda: bool) -> list[dict]:
    """Time the PyTorch deployment a user would otherwise ship: FP32 eager, FP16 eager, FP16 + CUDA graph."""
    import torch

    from .pipeline import cuda_graph, load_torch_detector

    variants = [("pytorch fp32 eager", False, False)]
    if has_cuda:
        variants += [("pytorch fp16 eager", True, False), ("pytorch fp16 + cuda graph", True, True)]
        torch.backends.cudnn.benchmark = True
    device = "cuda" if has_cuda else "cpu"
    rows = []
    for label, half, graphed in variants:
        net = load_torch_detector(checkpoint, device, half)
        for b in tqdm(batches, desc=label, disable=None):
            x = torch.rand((b, 3, size, size), device=device, dtype=torch.float16 if half else torch.float32)
            if has_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if graphed:
                call, _ = cuda_graph(net, x)
            else:
                call = partial(net, x)
            with torch.inference_mode():
                samples = time_calls(call, cfg.warmup, cfg.iterations, cfg.max_seconds, cuda=has_cuda)
            extra = {"memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if has_cuda else {}
            rows.append(_row(label, "pytorch", device, b, samples, **extra))
            del call
        del net
    return rows


def _end_to_end(cfg: ThroughputConfig, run_dir: Path, exp: dict, build: dict, has_cuda: bool) -> tuple[list, list]:
    """Return (rows, skipped) for camera JPEGs through decode, preprocessing, inference and NMS."""
    from . import pipeline

    size, rows = int(exp["imgsz"]), []
    for n in cfg.streams:
        jpegs = pipeline.read_jpegs(cfg.eval_dir, n * cfg.e2e_batches)
        batches = [jpegs[i * n:(i + 1) * n] for i in range(cfg.e2e_batches)]
        if not has_cuda:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(run_dir / build["engine"]), providers=["CPUExecutionProvider"])
            timing = pipeline.cpu_end_to_end(sess, exp["input_name"], batches, size)
            rows.append({"path": "cpu decode, float32 (onnxruntime cpu)", "mode": "serial", "streams": n,
                         "bytes_per_frame": 3 * size * size * 4, **timing})  # no PCIe: the tensor ONNX Runtime reads
            continue
        net = pipeline.load_torch_detector(run_dir / exp["checkpoint"], "cuda", half=True)
        for path in pipeline.PATHS:
            pipe = pipeline.GpuPipeline(net, path, n, size)
            try:
                pipe.run_serial(batches[:2])  # warm-up: nvJPEG handles, cuDNN, pinned pages
                for mode, fn in (("serial", pipe.run_serial), ("overlapped", pipe.run_overlapped)):
                    rows.append({"path": path, "mode": mode, "streams": n, "bytes_per_frame": pipe.bytes_per_frame(jpegs),
                                 **fn(batches)})
            finally:
                pipe.close()
    skipped = []
    if has_cuda:
        skipped.append("end to end with a TensorRT engine: the pipelines use PyTorch FP16 + CUDA graph as the model "
                       "(swap in TrtRunner where TensorRT is installed)")
    return rows, skipped


def _e2e_line(r: dict) -> str:
    return (f"{r['path']}, {r['mode']}, {r['streams']} streams: {r['frames_per_s']:,.0f} frames/s, "
            f"p50 {r['batch_latency_p50_ms']:.2f} ms a batch, {r['bytes_per_frame'] / 1e3:,.1f} kB a frame over PCIe")


def markdown(result: ThroughputResult) -> str:
    """Return the result's batch sweep and end-to-end rows as markdown tables."""
    def table(rows: list[dict], keys: list[str]) -> str:
        fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
        return "\n".join(lines)

    parts = ["## Batch sweep", table(result.rows, ["model", "backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms",
                                                   "images_per_s", "memory_mib"])]
    if result.end_to_end:
        keys = [k for k in ("path", "mode", "streams", "frames_per_s", "batch_latency_p50_ms", "batch_latency_p99_ms",
                            "bytes_per_frame", "host_decode_ms", "upload_or_gpu_decode_ms", "inference_ms", "nms_ms")
                if any(k in r for r in result.end_to_end)]
        parts += ["## End to end (JPEG frames to detections)", table(result.end_to_end, keys)]
    parts += ["## Skipped", *[f"- {s}" for s in result.skipped], "## Notes", *[f"- {n}" for n in result.notes]]
    if result.gpu:
        parts += ["## GPU clocks", f"- before: {result.gpu.get('before')}", f"- after: {result.gpu.get('after')}"]
    return "\n\n".join(parts) + "\n"


def _gpu_notes(rows: list[dict], e2e: list[dict]) -> list[str]:
    notes = []
    by = {(r["model"], r["batch"]): r["images_per_s"] for r in rows}
    for b in sorted({r["batch"] for r in rows}):
        base, best = by.get(("pytorch fp32 eager", b)), by.get(("pytorch fp16 + cuda graph", b))
        if base and best and any(r["device"] == "cuda" for r in rows):
            notes.append(f"batch {b}: PyTorch FP16 + CUDA graph is {best / base:.2f}x PyTorch FP32 eager")
    fps = {(r["path"], r["mode"], r["streams"]): r["frames_per_s"] for r in e2e}
    for (path, mode, n), v in fps.items():
        serial = fps.get((path, "serial", n))
        if mode == "overlapped" and serial:
            notes.append(f"{path}, {n} streams: overlapped {v / serial:.2f}x serial")
    return notes


def _cpu_notes(rows: list[dict], backend: str) -> list[str]:
    if backend != "onnxruntime":
        return []
    notes = []
    flags = runs.cpu_flags()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    base = {r["batch"]: r["images_per_s"] for r in rows if r["model"] == "fp32 onnx"}
    eng = {r["batch"]: r["images_per_s"] for r in rows if r["model"].startswith("engine")}
    for b in sorted(base):
        if b in eng and eng[b] < base[b]:
            notes.append(f"batch {b}: the quantized engine is {base[b] / eng[b]:.2f}x slower than FP32 on this CPU")
    if not vnni:
        notes.append("this CPU has no VNNI/AMX INT8 instructions: INT8 Q/DQ is not a speed win here; "
                     "the CPU run proves accuracy, the speed-up belongs to the TensorRT target")
    return notes


def _plot(rows: list[dict], e2e: list[dict], path: Path) -> Path:
    """Bar charts: images/s per backend and batch; end-to-end frames/s per path, mode and stream count."""
    from . import plots

    fig, axes = plots.subplots(1, 2 if e2e else 1, figsize=(12 if e2e else 7, 3.8), squeeze=False)
    _bars(axes[0][0], rows, "model", "batch", "images_per_s", "batch", "images/s (model only)")
    if e2e:
        for r in e2e:
            r["_label"] = f"{r['path']}, {r['mode']}"
        _bars(axes[0][1], e2e, "_label", "streams", "frames_per_s", "streams", "frames/s (JPEG to detections)")
        for r in e2e:
            del r["_label"]
    return plots.save(fig, path)


def _bars(ax, rows: list[dict], series: str, group: str, value: str, group_label: str, ylabel: str) -> None:
    names = list(dict.fromkeys(r[series] for r in rows))
    groups = sorted({r[group] for r in rows})
    width = 0.8 / len(names)
    for i, m in enumerate(names):
        vals = [next((r[value] for r in rows if r[series] == m and r[group] == g), 0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=m)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))], [f"{group_label} {g}" for g in groups])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
