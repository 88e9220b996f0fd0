"""Stage 6: latency and throughput of the built engine and the FP32 baseline, side by side, on this machine.

Loops over backends (backends.py): on a CPU target OpenVINO and ONNX Runtime each run the FP32 ONNX and the
quantized model; on a GPU target TensorRT and PyTorch. Each (backend, model, batch) is timed until its p50
is stable (timing.py), within a budget the pairs share, so the stage stops when it knows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from yolo_compile import fileio, runs
from yolo_compile.runtimes.registry import CPU_BACKENDS, available, open_runner
from yolo_compile.config import check_positive, path_field
from yolo_compile.gpu.device import cuda_device, gpu_clocks
from yolo_compile.gpu.overlap import widen_hardware_queues
from yolo_compile.evaluate import speed
from yolo_compile.errors import ThroughputError
from yolo_compile.runtimes import timing
from yolo_compile.runtimes.timing import latency_stats, time_adaptive

__all__ = ["ThroughputConfig", "ThroughputResult", "latency_stats", "run"]

log = logging.getLogger(__name__)
STAGE = "throughput"


@dataclass(frozen=True)
class ThroughputConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # batch sweep on a GPU target (a static-batch model runs its own batch only)
    cpu_batch_sizes: tuple[int, ...] = (1, 8)  # batch sweep on a CPU target (a few cores gain nothing past 8)
    warmup: int = 2  # untimed iterations per backend, model and batch
    min_iterations: int = 5  # timed iterations before the p50 may count as stable
    iterations: int = 200  # timed iterations per backend, model and batch, at most
    stable_pct: float = 2.0  # stop timing a pair once the newest quarter of its samples moves the p50 less than this (%)
    max_seconds: float = 3.0  # stop timing a pair after this long even if its p50 still moves
    budget_seconds: float = 4.0  # CPU target: time for the whole sweep, shared by the pairs still to run; 0: no limit
    threads: int = 0  # CPU runtimes' intra-op threads; 0: one per core
    pytorch: bool = True  # also time PyTorch from the run's checkpoint (FP32 eager; on a GPU FP16 eager and FP16 + CUDA graph)
    eval_dir: str = path_field("")  # JPEG camera frames for the end-to-end decode comparison; empty: skip it
    streams: tuple[int, ...] = (4, 8)  # concurrent camera streams (frames per batch) for the end-to-end comparison
    e2e_batches: int = 20  # batches timed per end-to-end pipeline and mode (CPU: at most budget_seconds / 8 each)

    def __post_init__(self) -> None:
        check_positive("iterations", self.iterations)
        check_positive("min_iterations", self.min_iterations)
        check_positive("max_seconds", self.max_seconds)
        check_positive("stable_pct", self.stable_pct)
        check_positive("e2e_batches", self.e2e_batches)
        if self.budget_seconds < 0:
            raise ThroughputError(f"parameter 'budget_seconds' = {self.budget_seconds}: give seconds >= 0 (0: no limit)")
        for name in ("batch_sizes", "cpu_batch_sizes"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ThroughputError(f"parameter '{name}' = {getattr(self, name)!r}: give positive batch sizes, e.g. 1,8")
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
    verdict: str = ""  # one line: what the quantized engine buys over FP32 on each runtime, on this machine
    notes: list = field(default_factory=list)
    load: dict = field(default_factory=dict)  # what else used the CPUs while this stage timed (timing.LoadWatch)
    table: str = ""  # markdown tables of rows and end_to_end
    plot: str = ""
    seconds: float = 0.0


@dataclass
class Case:
    """One model on one backend, timed at each of its batch sizes."""

    model: str  # row label: fp32 onnx | quantized onnx | engine (<backend>) | pytorch ...
    backend: str
    path: Path
    batches: list
    options: dict = field(default_factory=dict)  # open_runner keywords (device, half, cuda_graph)
    shipped: bool = False


def batches_for(input_shape: list, requested: tuple[int, ...]) -> list[int]:
    """Return the batch sizes a model can run: all requested ones if its batch axis is symbolic."""
    return sorted(set(requested)) if not isinstance(input_shape[0], int) else [int(input_shape[0])]


def plan_cases(cfg: ThroughputConfig, run_dir: Path, exp: dict, build: dict, has_cuda: bool) -> tuple[list[Case], list[str]]:
    """Return (what to time, what is skipped and why): every backend this machine has, on FP32 and the engine."""
    cpu_target = build["backend"] in CPU_BACKENDS
    batches = batches_for(exp["input_shape"], cfg.cpu_batch_sizes if cpu_target else cfg.batch_sizes)
    fp32, engine = run_dir / exp["onnx"], run_dir / build["engine"]
    cases, skipped = [], []
    if cpu_target:
        quant = runs.read_result(run_dir, "quantize")
        for backend in CPU_BACKENDS:
            ok, why = available(backend)
            if not ok:
                skipped.append(f"{backend}: {why}")
                continue
            if backend == build["backend"]:
                cases.append(Case(f"engine ({backend})", backend, engine, batches, shipped=True))
                cases.append(Case("fp32 onnx", backend, fp32, batches))
            else:  # the runtime that does not ship: its batch-1 figures say why (larger batches change no verdict)
                cases.append(Case("fp32 onnx", backend, fp32, batches[:1]))
                cases.append(Case("quantized onnx", backend, run_dir / quant["onnx"], batches[:1]))
                if len(batches) > 1:
                    skipped.append(f"{backend} at batch {', '.join(map(str, batches[1:]))}: it does not ship; the "
                                   "CPU sweep's budget goes to the engine that does and its FP32 on the same runtime")
        skipped.append(f"TensorRT engine: build backend is {build['backend']} (CPU target)")
    else:
        cases += [Case("fp32 onnx", "onnxruntime", fp32, batches),
                  Case(f"engine ({build['backend']})", build["backend"], engine, batches, {}, shipped=True)]
    if cfg.pytorch:
        ckpt = run_dir / exp["checkpoint"]
        if has_cuda:  # the GPU sweep, whatever the target
            gb = batches_for(exp["input_shape"], cfg.batch_sizes)
            cases += [Case("pytorch fp32 eager", "pytorch", ckpt, gb, {"device": "cuda"}),
                      Case("pytorch fp16 eager", "pytorch", ckpt, gb, {"device": "cuda", "half": True}),
                      Case("pytorch fp16 + cuda graph", "pytorch", ckpt, gb,
                           {"device": "cuda", "half": True, "cuda_graph": True})]
        else:
            cases.append(Case("pytorch fp32 eager", "pytorch", ckpt, batches[:1]))
            if len(batches) > 1:
                skipped.append(f"PyTorch FP32 eager on the CPU at batch {', '.join(map(str, batches[1:]))}: "
                               "the CPU sweep's budget goes to the runtimes that would ship")
    else:
        skipped.append("PyTorch: pytorch is false")
    return cases, skipped


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
    size = int(exp["imgsz"])
    queues = widen_hardware_queues()  # before CUDA starts, or decode and inference serialise (gpu/overlap.py)
    has_cuda, cuda_why = cuda_device()
    cases, skipped = plan_cases(cfg, run_dir, exp, build, has_cuda)
    cpu_target = build["backend"] in CPU_BACKENDS
    budget = cfg.budget_seconds if cpu_target and cfg.budget_seconds else float("inf")
    gpu = {}
    with timing.exclusive("throughput") as slot, runs.Timer() as t, timing.LoadWatch() as watch:
        if has_cuda:
            gpu["before"], gpu["cuda_device_max_connections"] = gpu_clocks(), queues
        rows, spent = sweep(cases, cfg, size, budget)
        skipped += spent
        if has_cuda:
            gpu["after"] = gpu_clocks()
        elif cfg.pytorch:
            skipped.append(f"PyTorch CUDA (FP32, FP16, FP16 + CUDA graph): {cuda_why}")
        e2e = []
        if cfg.eval_dir:
            e2e, why = _end_to_end(cfg, run_dir, exp, build, has_cuda)
            skipped += why
            if not has_cuda:
                skipped.append(f"GPU decode (nvJPEG) and overlapped CUDA streams: {cuda_why}")
        else:
            skipped.append("end-to-end decode comparison: eval_dir is empty (give a folder of JPEG frames)")
    paths = {c.model + ("" if c.backend in c.model else f" ({c.backend})"): c.path for c in cases}
    verdict, notes = speed.cpu_verdict(rows) if cpu_target else ("", [])
    load = {**watch.summary(), "waited_for_slot_s": slot.waited_s}
    if load.get("under_load"):
        notes.insert(0, speed.load_note(load))
    result = ThroughputResult(
        status="passed", backend=build["backend"], rows=rows,
        models={k: {"path": str(v.relative_to(run_dir)), "bytes": _bytes(v)} for k, v in paths.items()},
        bytes_per_frame={"float32 input": 3 * size * size * 4, "uint8 input (fused preprocessing)": 3 * size * size,
                         **{r["path"]: r["bytes_per_frame"] for r in e2e if r["mode"] == "serial"}},
        skipped=skipped, end_to_end=e2e, end_to_end_summary=[speed.e2e_line(r) for r in e2e], gpu=gpu, verdict=verdict,
        notes=notes + speed.gpu_notes(rows, e2e), load=load, seconds=round(t.seconds, 2),
    )
    result.table = f"{STAGE}/{fileio.write_text(run_dir / STAGE / 'table.md', speed.markdown(result)).name}"
    result.plot = f"{STAGE}/{_plot(rows, e2e, run_dir / STAGE / 'throughput.png').name}"
    runs.write_result(run_dir, STAGE, result)
    return result


def _bytes(path: Path) -> int:
    """Return a model's size on disk (an OpenVINO IR counts its .bin)."""
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (extra.stat().st_size if extra and extra.is_file() else 0)


def sweep(cases: list[Case], cfg: ThroughputConfig, size: int, budget_s: float = float("inf")) -> tuple[list, list]:
    """Return (rows, skipped): each case at each batch, timed until its p50 is stable or a cap.

    Batch-major order, the shipped engine first within a batch, and the pairs still to run share what is left
    of the budget: every case gets its smallest batch timed; larger batches are skipped, with the reason, once
    the budget is spent.
    """
    order = [(b, i) for b, _, i in sorted((b, not c.shipped, i) for i, c in enumerate(cases) for b in c.batches)]
    deadline = time.perf_counter() + budget_s
    rows, skipped, runners = [], [], {}
    for k, (b, i) in enumerate(tqdm(order, desc="batch sweep", disable=None)):
        case, left = cases[i], deadline - time.perf_counter()
        if left <= 0 and b != order[0][0]:
            label = case.model if case.backend in case.model else f"{case.model} ({case.backend})"
            skipped.append(f"{label} at batch {b}: the sweep's budget "
                           f"(budget_seconds={cfg.budget_seconds:g}) was spent")
            continue
        share = min(cfg.max_seconds, max(left, 0.0) / (len(order) - k))
        if i not in runners:
            runners[i] = open_runner(case.backend, case.path, threads=cfg.threads, **case.options)
        runner = runners[i]
        x = np.random.default_rng(0).random((b, 3, size, size), dtype=np.float32)
        cuda = runner.device == "cuda"
        if cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        timing = time_adaptive(runner.prepare(x), warmup=cfg.warmup, min_iterations=cfg.min_iterations,
                               max_iterations=cfg.iterations, max_seconds=share, tolerance=cfg.stable_pct / 100,
                               cuda=cuda)
        extra = {"memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}
        rows.append(_row(case.model, case.backend, runner.device, b, timing.samples, stopped=timing.stopped,
                         shipped=case.shipped, **extra))
        if b == case.batches[-1]:
            runners.pop(i, None)  # release the model once its last batch is timed
    return rows, skipped


def _row(model: str, backend: str, device: str, batch: int, samples: list[float], **extra) -> dict:
    return {"model": model, "backend": backend, "device": device, "batch": batch, **latency_stats(samples, batch), **extra}


def _end_to_end(cfg: ThroughputConfig, run_dir: Path, exp: dict, build: dict, has_cuda: bool) -> tuple[list, list]:
    """Return (rows, skipped) for camera JPEGs through decode, preprocessing, inference and NMS."""
    from yolo_compile.gpu import frames
    from yolo_compile.runtimes import pytorch

    size, rows = int(exp["imgsz"]), []
    runner = None
    # On a CPU the streams of a batch run one after another on the same cores: one stream count says it all.
    for n in (cfg.streams if has_cuda else cfg.streams[:1]):
        try:
            jpegs = frames.read_jpegs(cfg.eval_dir, n * cfg.e2e_batches)
        except ValueError as e:  # PNG line-scan frames (binary-aoi): no JPEG stream to decode, nothing failed
            return rows, [f"end-to-end decode comparison: {e} (it times JPEG camera streams)"]
        batches = [jpegs[i * n:(i + 1) * n] for i in range(cfg.e2e_batches)]
        if not has_cuda:
            if runner is None:
                backend, model = build["backend"], run_dir / build["engine"]
                if backend not in CPU_BACKENDS:  # a TensorRT plan without CUDA: the quantized ONNX on ONNX Runtime
                    backend, model = "onnxruntime", run_dir / runs.read_result(run_dir, "quantize")["onnx"]
                runner = open_runner(backend, model, threads=cfg.threads)
            limit = min(cfg.max_seconds, cfg.budget_seconds / 8) if cfg.budget_seconds else cfg.max_seconds
            timing = frames.cpu_end_to_end(runner, batches, size, max_seconds=limit)
            rows.append({"path": f"cpu decode, float32 ({runner.name} cpu)", "mode": "serial", "streams": n,
                         "bytes_per_frame": 3 * size * size * 4, **timing})  # no PCIe: the tensor the runtime reads
            continue
        net = pytorch.load_torch_detector(run_dir / exp["checkpoint"], "cuda", half=True)
        for path in frames.PATHS:
            pipe = frames.GpuPipeline(net, path, n, size)
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


def _plot(rows: list[dict], e2e: list[dict], path: Path) -> Path:
    """Bar charts: images/s per backend and batch; end-to-end frames/s per path, mode and stream count."""
    from yolo_compile import plots

    fig, axes = plots.subplots(1, 2 if e2e else 1, figsize=(12 if e2e else 7, 3.8), squeeze=False)
    plots.grouped_bars(axes[0][0], rows, "model", "batch", "images_per_s", "batch", "images/s (model only)")
    if e2e:
        for r in e2e:
            r["_label"] = f"{r['path']}, {r['mode']}"
        plots.grouped_bars(axes[0][1], e2e, "_label", "streams", "frames_per_s", "streams", "frames/s (JPEG to detections)")
        for r in e2e:
            del r["_label"]
    return plots.save(fig, path)
