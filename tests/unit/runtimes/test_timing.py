"""The adaptive timer on real callables: it stops early on a steady call and caps a drifting one."""

import os
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


def test_load_watch_sees_another_process_compute_and_marks_the_figure():
    import subprocess
    import sys
    import time as _time

    from yolo_compile.runtimes.timing import LoadWatch

    with LoadWatch() as quiet:
        _time.sleep(0.5)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _time.sleep(0.3)
        with LoadWatch() as loaded:
            _time.sleep(1.5)
    finally:
        busy.kill()
    s = loaded.summary()
    assert s["watched"] and s["under_load"] and s["others_cores"] > 0.5
    assert loaded.procs1[busy.pid][1] > loaded.procs0[busy.pid][1]  # its CPU time was seen growing
    assert all(b["pid"] != os.getpid() for b in s["busy"])  # the timing process itself is never "other load"
    assert quiet.summary()["watched"] and quiet.summary()["seconds"] >= 0.5


def test_timed_sections_of_two_processes_never_overlap(tmp_path):
    """Two processes that time at once (a Ray matrix on one node) take the machine's timing slot in turn."""
    import subprocess
    import sys

    code = ("import time, sys\nfrom yolo_compile.runtimes.timing import exclusive\n"
            "with exclusive('t') as s:\n    a = time.time(); time.sleep(1.0); b = time.time()\n"
            "print(a, b, s.waited_s)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs)
    (a0, b0, w0), (a1, b1, w1) = spans
    assert a1 >= b0 - 0.01, spans  # the second began after the first ended
    assert max(w0, w1) >= 0.8
