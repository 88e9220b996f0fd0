"""Timing that stops when it knows: per-call latencies until the median is stable, within caps.

The build stage (picking the faster CPU engine) and the throughput stage (the batch sweep) share this
protocol, so the numbers that choose an engine and the numbers that report it are measured the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    """Per-call latencies (s) and why timing stopped: 'stable', 'iterations' or 'seconds'."""

    samples: list = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0  # wall time spent timing, warm-up included

    @property
    def stable(self) -> bool:
        return self.stopped == "stable"


def latency_stats(samples_s: list[float], batch: int) -> dict:
    """Return p50/p90/p99/mean latency in ms and images/s for per-call latencies in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"iterations": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "images_per_s": float(batch * a.size / (a.sum() / 1e3))}


def is_stable(samples: list[float], tolerance: float = 0.02, min_iterations: int = 5) -> bool:
    """Return True when the p50 of the newest window and of the window before it agree within `tolerance`.

    Rolling windows of a third of the samples (at least 3 each): a drifting or bimodal call keeps the two
    medians apart and is timed until a cap instead.
    """
    n = len(samples)
    window = max(3, n // 3)
    if n < max(min_iterations, 2 * window):
        return False
    newest, before = float(np.median(samples[-window:])), float(np.median(samples[-2 * window:-window]))
    return abs(newest - before) <= tolerance * float(np.median(samples))


def time_adaptive(call, *, warmup: int = 2, min_iterations: int = 5, max_iterations: int = 200,
                  max_seconds: float = 3.0, tolerance: float = 0.02, cuda: bool = False) -> Timing:
    """Return a Timing of call(): warm up, then time until the p50 is stable within `tolerance`, or a cap.

    At least 2 calls are timed even past max_seconds (one slow call says little); warm-up stops after one
    call once it alone took max_seconds. With cuda=True each call
    is bracketed by CUDA events on the current stream, so the latency is device-side time.
    """
    t_start = time.perf_counter()
    for _ in range(warmup):
        call()
        if time.perf_counter() - t_start > max_seconds:  # one slow warm-up call is warm-up enough
            break
    sync = start_ev = end_ev = None
    if cuda:
        import torch

        sync = torch.cuda.synchronize
        start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync()
    out, start = Timing(), time.perf_counter()
    while True:
        if cuda:
            start_ev.record()
            call()
            end_ev.record()
            end_ev.synchronize()
            out.samples.append(start_ev.elapsed_time(end_ev) / 1e3)
        else:
            t0 = time.perf_counter()
            call()
            out.samples.append(time.perf_counter() - t0)
        if is_stable(out.samples, tolerance, min_iterations):
            out.stopped = "stable"
        elif len(out.samples) >= max_iterations:
            out.stopped = "iterations"
        elif time.perf_counter() - start >= max_seconds and len(out.samples) >= 2:
            out.stopped = "seconds"
        if out.stopped:
            out.seconds = time.perf_counter() - t_start
            return out
