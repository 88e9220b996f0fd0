"""Stage 6: latency and throughput of the built engine and the FP32 baseline, side by side, on this machine.

Loops over backends (backends.py): on a CPU target OpenVINO and ONNX Runtime each run the FP32 ONNX and the
quantized model; on a GPU target TensorRT and PyTorch. Each (backend, model, batch) is timed until its p50
is stable (timing.py), within a budget the pairs share, so the stage stops when it knows.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import runs, timing
from .backends import CPU_BACKENDS, available, open_runner
from .config import check_positive
from .errors import ThroughputError
from .timing import latency_stats, time_adaptive

__all__ = ["ThroughputConfig", "ThroughputResult", "latency_stats", "run", "time_calls"]

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
    eval_dir: str = ""  # JPEG camera frames for the end-to-end decode comparison; empty: skip it
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


def time_calls(call, warmup: int, iterations: int, max_seconds: float, cuda: bool = False) -> list[float]:
    """Return per-call latencies (s) of call() after warmup: at most `iterations`, stopping early once stable."""
    return time_adaptive(call, warmup=warmup, max_iterations=iterations, max_seconds=max_seconds, cuda=cuda).samples


def batches_for(input_shape: list, requested: tuple[int, ...]) -> list[int]:
    """Return the batch sizes a model can run: all requested ones if its batch axis is symbolic."""
    return sorted(set(requested)) if not isinstance(input_shape[0], int) else [int(input_shape[0])]


def cuda_device() -> tuple[bool, str]:
    """Return (usable, reason) for PyTorch CUDA on this machine."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia")):
        return False, "no NVIDIA driver (/dev/nvidiactl absent)"  # and no 2-3 s torch import to learn it
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
    has_cuda, cuda_why = cuda_device()
    cases, skipped = plan_cases(cfg, run_dir, exp, build, has_cuda)
    cpu_target = build["backend"] in CPU_BACKENDS
    budget = cfg.budget_seconds if cpu_target and cfg.budget_seconds else float("inf")
    gpu = {}
    with timing.exclusive("throughput") as slot, runs.Timer() as t, timing.LoadWatch() as watch:
        if has_cuda:
            gpu["before"] = gpu_clocks()
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
    verdict, notes = cpu_verdict(rows) if cpu_target else ("", [])
    load = {**watch.summary(), "waited_for_slot_s": slot.waited_s}
    if load.get("under_load"):
        top = ", ".join(f"{b['process']} ({b['cores']:.2f} cores)" for b in load["busy"][:3]) or "unnamed processes"
        notes.insert(0, f"taken under load: other processes used {load['others_cores']:.2f} cores on average while "
                        f"this stage timed (load average {load['loadavg_1m']}; {top}); these figures are low, re-time on "
                        "an idle machine")
    result = ThroughputResult(
        status="passed", backend=build["backend"], rows=rows,
        models={k: {"path": str(v.relative_to(run_dir)), "bytes": _bytes(v)} for k, v in paths.items()},
        bytes_per_frame={"float32 input": 3 * size * size * 4, "uint8 input (fused preprocessing)": 3 * size * size,
                         **{r["path"]: r["bytes_per_frame"] for r in e2e if r["mode"] == "serial"}},
        skipped=skipped, end_to_end=e2e, end_to_end_summary=[_e2e_line(r) for r in e2e], gpu=gpu, verdict=verdict,
        notes=notes + _gpu_notes(rows, e2e), load=load, seconds=round(t.seconds, 2),
    )
    result.table = f"{STAGE}/{runs.write_text(run_dir / STAGE / 'table.md', markdown(result)).name}"
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
    from . import frames

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
        net = frames.load_torch_detector(run_dir / exp["checkpoint"], "cuda", half=True)
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

    parts = (["## Verdict", result.verdict] if result.verdict else []) + [
        "## Batch sweep", table(result.rows, ["model", "backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms",
                                              "images_per_s", "iterations", "stopped", "memory_mib"])]
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


def cpu_verdict(rows: list[dict]) -> tuple[str, list[str]]:
    """Return (one line at batch 1, notes per batch): INT8 over FP32 on each CPU runtime, and the CPU's INT8 support."""
    isa = runs.int8_isa()
    vnni = not isa.startswith(("AVX2", "SSE"))
    isa = f"INT8 instructions: {isa}" if vnni else f"INT8 instructions: {isa}, no VNNI"
    ips = {(r["backend"], "fp32" if r["model"] == "fp32 onnx" else "int8", r["batch"]): r["images_per_s"]
           for r in rows if r["device"] == "cpu" and r["backend"] in CPU_BACKENDS}
    lines = []
    for b in sorted({k[2] for k in ips}):
        ov8, ov32 = ips.get(("openvino", "int8", b)), ips.get(("openvino", "fp32", b))
        ort8, ort32 = ips.get(("onnxruntime", "int8", b)), ips.get(("onnxruntime", "fp32", b))
        parts = []
        if ov8 and ov32:
            parts.append(f"INT8 on OpenVINO {ov8 / ov32:.2f}x its FP32" + (f" and {ov8 / ort32:.2f}x ONNX Runtime FP32"
                                                                          if ort32 else ""))
        if ort8 and ort32:
            parts.append(f"ONNX Runtime INT8 is {ort8 / ort32:.2f}x its FP32")
        if parts:
            lines.append(f"batch {b}: {'; '.join(parts)} on this CPU ({isa})")
    if not vnni:
        lines.append("this CPU has no VNNI/AMX INT8 instructions: INT8 gains here come from the runtime's kernels "
                     "(OpenVINO), not from the CPU")
    return (lines[0] if lines else ""), lines


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
