"""Latency of quantize candidates on the runtime that ships: at one batch, paired and interleaved with the current best.

Every candidate is timed in rounds alternating with the fastest model timed so far (FP32 first), each round with
`timing.time_adaptive` inside the machine's timing slot (`timing.exclusive`). Pairing makes the ratio robust to a
neighbour's load that slows both alike; the spread of the per-round ratios is the speed noise the choice rule
uses (never below MIN_NOISE: on a shared CPU two files closer than that are a tie).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from yolo_compile.runtimes.registry import available, open_runner
from yolo_compile.runtimes.timing import LoadWatch, exclusive, time_adaptive

log = logging.getLogger(__name__)
ROUNDS = 4  # interleaved rounds per candidate (ABBA order)
ROUND_SECONDS = 0.15  # cap of one adaptive timing of one model in one round
MIN_NOISE = 0.03  # relative speed difference below which two candidates are a tie
RETIME_NOISE = 0.10  # a first (unpaired) model timed noisier than this gets more rounds
MAX_BLOCKS = 4  # at most this many blocks of ROUNDS rounds per model (sequential: until the ratio is decisive)


def shipping_runtime(target: str, batch: int = 1) -> tuple[str | None, str]:
    """Return (the runtime a target's engine ships on and is timed on, or None; why)."""
    if target == "tensorrt":
        return None, ("latency not measured: the TensorRT target ships a TensorRT engine and TensorRT is not here "
                      "to time it (candidates are scored on ONNX Runtime, its reference arithmetic): chosen by accuracy")
    if available("openvino")[0]:
        return "openvino", f"OpenVINO on this CPU, {_batches(batch)} (the CPU target's engine)"
    return "onnxruntime", f"ONNX Runtime on this CPU, {_batches(batch)} (OpenVINO is not installed)"


def _batches(batch: int) -> str:
    return "batch 1" if batch == 1 else f"batch {batch} (deploy_batch: the choice's figure) and batch 1"


class Bench:
    """Times models on one runtime at one batch, each paired with the fastest model timed before it."""

    def __init__(self, runtime: str, x: np.ndarray, rounds: int = ROUNDS, seconds: float = ROUND_SECONDS,
                 batch: int = 1):
        self.runtime, self.rounds, self.round_seconds, self.batch = runtime, rounds, seconds, batch
        self.x = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])), dtype=np.float32)  # x's images, repeated
        self.calls: dict[str, object] = {}
        self.ips: dict[str, float] = {}
        self.best: str | None = None
        self.seconds = self.waited_s = 0.0
        self.others_core_s = self.watched_s = 0.0  # others' CPU use while timing: cores x seconds, and seconds

    def _call(self, label: str, path: Path):
        if label not in self.calls:
            self.calls[label] = open_runner(self.runtime, path).prepare(self.x)
        return self.calls[label]

    def measure(self, label: str, path: Path) -> dict:
        """Return {images_per_s, p50_ms, speed_noise, paired_with, speedup_vs_paired} of one model, timed paired.

        Sequential: blocks of `rounds` paired rounds are pooled until the ratio to the reference is decisive (its
        distance from 1 beyond the noise) or a tie within MIN_NOISE, at most MAX_BLOCKS blocks; an unpaired first
        model until its spread is under RETIME_NOISE. A neighbour's load widens the noise and so buys more rounds,
        not a tie that hands the choice to the smaller drop by default.
        """
        ref, p50 = self.best, None
        for _ in range(MAX_BLOCKS):
            row, p50 = self._measure(label, path, ref, p50)
            r = row.get("speedup_vs_paired")
            if r is None:
                if row["speed_noise"] <= RETIME_NOISE:
                    break
            elif abs(r - 1) <= MIN_NOISE or abs(r - 1) > row["speed_noise"]:
                break
        self.ips[label] = row["images_per_s"]
        if row["faster"]:
            self.best = label
        del row["faster"]
        log.info("latency %s: %.1f images/s (%s)", label, row["images_per_s"],
                 f"{row.get('speedup_vs_paired', 1):.3f}x {row['paired_with']}" if "paired_with" in row else "first")
        return row

    def _measure(self, label: str, path: Path, ref: str | None, p50: dict | None) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        self._call(label, path)
        p50 = p50 or {label: [], **({ref: []} if ref else {})}
        first = not p50[label]
        with exclusive(f"quantize latency {label}") as slot, LoadWatch() as watch:
            for i in range(self.rounds):
                order = [label, ref] if ref else [label]
                for lab in (order if i % 2 == 0 else order[::-1]):
                    t = time_adaptive(self.calls[lab], warmup=1 if first and i == 0 else 0, min_iterations=5,
                                      max_iterations=60, max_seconds=self.round_seconds)
                    p50[lab].append(float(np.median(t.samples)))
        self.waited_s += slot.waited_s
        seen = watch.summary()
        if seen.get("watched"):
            self.others_core_s += seen["others_cores"] * seen["seconds"]
            self.watched_s += seen["seconds"]
        mine = np.asarray(p50[label])
        row = {"images_per_s": round(self.batch / float(np.median(mine)), 2),
               "p50_ms": round(float(np.median(mine)) * 1e3, 3), "batch": self.batch, "timing_rounds": len(mine)}
        if ref:
            ratio = np.asarray(p50[ref]) / mine  # > 1: this model is faster than the one it was paired with
            spread = float(np.std(ratio, ddof=1) / np.sqrt(len(ratio))) if len(ratio) > 1 else 0.0
            row.update(paired_with=ref, speedup_vs_paired=round(float(np.median(ratio)), 3),
                       speed_noise=round(max(MIN_NOISE, 2 * spread), 3))
            # the paired estimate: the reference's own figure times the ratio measured beside it
            row["images_per_s"] = round(self.ips[ref] * row["speedup_vs_paired"], 2)
            row["faster"] = row["speedup_vs_paired"] > 1 + row["speed_noise"]
        else:
            rel = float(np.std(mine, ddof=1) / np.median(mine)) if len(mine) > 1 else 0.0
            row["speed_noise"] = round(max(MIN_NOISE, rel), 3)
            row["faster"] = True
        self.seconds += time.perf_counter() - t0
        return row, p50


def tied(a: dict, b: dict) -> bool:
    """Return True when two timed rows are within noise of each other in speed.

    Where one was timed beside the other, their own paired ratio and its noise decide; otherwise the figures (each
    a ratio to its own partner) are compared with the larger of their noises.
    """
    for x, y in ((a, b), (b, a)):
        if x.get("paired_with") and x.get("paired_with") == y.get("file") and "speedup_vs_paired" in x:
            return abs(x["speedup_vs_paired"] - 1.0) <= max(x.get("speed_noise", MIN_NOISE), MIN_NOISE)
    noise = max(a.get("speed_noise", MIN_NOISE), b.get("speed_noise", MIN_NOISE), MIN_NOISE)
    return abs(a["images_per_s"] / b["images_per_s"] - 1.0) <= noise


def load_summary(bench: Bench) -> dict:
    """Return {others_cores, under_load} over every timed section of a bench (others' average CPU use, in cores)."""
    if not bench.watched_s:
        return {"watched": False, "under_load": False}
    others = bench.others_core_s / bench.watched_s
    return {"watched": True, "others_cores": round(others, 2), "under_load": others > LoadWatch.UNDER_LOAD_CORES}
