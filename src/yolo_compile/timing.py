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


class LoadWatch:
    """Watch the machine while a section is timed: what other processes used of the CPUs, and the load average.

    A figure timed while something else computes (a kernel importing, a parallel run, another job) is low; the
    section's result records `summary()` and says so instead of publishing it as the engine's speed. Linux only
    (/proc); elsewhere the summary says it could not watch.
    """

    UNDER_LOAD_CORES = 0.25  # others' average use, in cores, above which a figure is marked as taken under load

    def __enter__(self) -> "LoadWatch":
        self.t0, self.busy0, self.own0, self.procs0 = time.perf_counter(), _busy_ticks(), _proc_ticks("self"), _all_procs()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.busy1, self.own1, self.procs1 = _busy_ticks(), _proc_ticks("self"), _all_procs()

    def summary(self) -> dict:
        """Return {others_cores, loadavg_1m, busy: [name pid cores], under_load} for the watched section."""
        import os

        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        if self.busy0 is None or self.busy1 is None or self.seconds <= 0:
            return {"watched": False, "under_load": False}
        others = max(0.0, (self.busy1 - self.busy0) - (self.own1 - self.own0)) / tick / self.seconds
        me = os.getpid()
        busy = []
        for pid, (name, ticks) in self.procs1.items():
            if pid == me or pid not in self.procs0:
                continue
            cores = (ticks - self.procs0[pid][1]) / tick / self.seconds
            if cores >= 0.05:
                busy.append({"process": name, "pid": pid, "cores": round(cores, 2)})
        busy.sort(key=lambda b: -b["cores"])
        return {"watched": True, "seconds": round(self.seconds, 2), "others_cores": round(others, 2),
                "loadavg_1m": round(os.getloadavg()[0], 2), "busy": busy[:8],
                "under_load": others > self.UNDER_LOAD_CORES}


def _busy_ticks() -> int | None:
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest time is inside user)


def _proc_ticks(pid) -> int:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return 0
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime, this process's threads included


def _all_procs() -> dict:
    import os

    out = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        rest = stat.rsplit(")", 1)[1].split()
        out[pid] = (name, int(rest[11]) + int(rest[12]))
    return out


class exclusive:
    """Hold this machine's timing slot for the block: one timed section at a time, across processes and runs.

    Parallel compiles (a Ray matrix on one node, two CLIs) would otherwise time their engines while the others
    compute: 2.9-6.6 images/s published for engines that run 7.1 alone. The slot is an advisory lock on a file of
    the machine's temporary folder (per node, also under Ray); `waited_s` says how long the block queued for it.
    """

    def __init__(self, what: str = ""):
        import tempfile
        from pathlib import Path

        self.what, self.path = what, Path(tempfile.gettempdir()) / "yolo-compile-timing.lock"
        self.waited_s = 0.0

    def __enter__(self) -> "exclusive":
        import fcntl

        t = time.perf_counter()
        self.file = open(self.path, "a+")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        self.waited_s = round(time.perf_counter() - t, 2)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
