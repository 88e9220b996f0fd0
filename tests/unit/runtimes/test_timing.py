"""The adaptive timer on real callables: it stops early on a steady call and caps a drifting one."""

import time

from yolo_compile.runtimes import timing


def busy(seconds: float) -> None:
    """Spin for `seconds` of wall time (steadier than sleep on a loaded machine)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_steady_call_stops_once_its_p50_is_stable():
    t = timing.time_adaptive(lambda: busy(0.002), warmup=1, min_iterations=5, max_iterations=500, max_seconds=10)
    assert t.stopped == "stable" and t.stable
    assert 6 <= len(t.samples) < 500  # stopped long before the iteration cap
    stats = timing.latency_stats(t.samples, batch=4)
    assert stats["p50_ms"] >= 1.9 and stats["images_per_s"] > 0


def test_drifting_call_runs_to_a_cap_and_says_which():
    calls = []

    def slower_each_time():  # 50% slower every call: far beyond the noise of a loaded machine
        calls.append(1)
        time.sleep(0.005 * 1.5 ** len(calls))

    t = timing.time_adaptive(slower_each_time, warmup=0, min_iterations=5, max_iterations=8, max_seconds=20)
    assert t.stopped == "iterations" and len(t.samples) == 8 and not t.stable
    calls.clear()
    t = timing.time_adaptive(slower_each_time, warmup=0, min_iterations=5, max_iterations=10_000, max_seconds=0.3)
    assert t.stopped == "seconds" and len(t.samples) >= 2


def test_a_slow_call_is_timed_at_least_twice_and_stability_needs_enough_samples():
    t = timing.time_adaptive(lambda: busy(0.03), warmup=0, max_seconds=0.001)
    assert t.stopped == "seconds" and len(t.samples) == 2
    assert not timing.is_stable([0.01] * 5, min_iterations=6)
    assert timing.is_stable([0.01] * 6, min_iterations=5)
    assert not timing.is_stable([0.01, 0.01, 0.01, 0.02, 0.02, 0.02], tolerance=0.02, min_iterations=5)
