"""Kernels started ahead: the next stage's kernel boots, and imports its libraries, while this stage runs.

Each stage still gets a fresh kernel of its own (no state crosses stages: they read each other's files only);
it is only started earlier. The imports start as IPython `exec_lines` at kernel start-up (`warm`): outside the
notebook's history (execution counts still start at 1), leaving no name in the user namespace, and an import that
fails (an optional backend not installed) is ignored there and fails, or not, where the notebook itself imports it.
Measured on a 2-core machine: kernel start 0.6 s, torch 1.5 s, ModelOpt 2.4 s, NNCF 0.6 s per stage.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

COMMON = ("numpy", "IPython.display", "yolo_compile.notebook", "yolo_compile.report")
# What each stage's run() imports first; a library missing here is simply not preloaded. Only what the stage really
# imports on its usual path: a preload it never uses still costs its seconds on one of the two cores (torchvision
# 2 s, matplotlib 0.7 s). NNCF and Polygraphy import torch themselves; the CPU throughput times the PyTorch checkpoint.
WARM = {
    "export": ("torch", "onnx", "ultralytics", "onnxslim"),
    "calibrate": ("cv2",),
    "quantize": ("onnx", "onnxruntime", "openvino", "nncf"),
    "compare": ("onnxruntime", "openvino", "torch", "polygraphy.comparator", "polygraphy.backend.onnxrt",
                "matplotlib.pyplot"),
    "build": ("onnxruntime", "openvino"),
    "throughput": ("onnxruntime", "openvino", "torch", "ultralytics", "matplotlib.pyplot"),
    "bandwidth": ("onnx", "matplotlib.pyplot"),
}


def warm_lines(stage: str) -> str:
    """Return the start-up code that imports a stage's modules (`warm`) and leaves no name behind."""
    mods = COMMON + (f"yolo_compile.{stage}",) + WARM.get(stage, ())
    return f"import yolo_compile.kernels as _yc_warm\n_yc_warm.warm({mods!r})\ndel _yc_warm"


def warm(modules: tuple[str, ...]) -> None:
    """Import modules in a thread at the lowest CPU priority; in a kernel, the first cell waits for that thread.

    Nice 19 for that thread only: a kernel started ahead uses what the running stage leaves idle instead of slowing
    it down. Waiting before the first cell means no cell imports a module the thread is still importing; then every
    thread is put back to nice 0 where allowed (root; otherwise the pools the thread started stay at nice 19,
    yielding only to other processes). An import that fails is ignored here.
    """
    def imports() -> None:
        set_nice(19)
        for m in modules:
            try:
                importlib.import_module(m)
            except Exception:  # noqa: BLE001  the notebook's own import says what is missing
                pass

    t = threading.Thread(target=imports, name="yolo-compile-warm", daemon=True)
    t.start()
    ip = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if ip is None:  # plain Python, not a kernel
        t.join()
        return

    def normal() -> None:
        for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ():
            set_nice(0, int(tid))

    def wait(*args) -> None:
        ip.events.unregister("pre_run_cell", wait)
        normal()
        t.join()
        normal()

    ip.events.register("pre_run_cell", wait)


def set_nice(nice: int, tid: int | None = None) -> None:
    """Set one thread's nice value (the calling thread's by default; on Linux nice is per thread), where allowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid or threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


# Stages that time something (the build's engine choice, the throughput sweep): no kernel is started ahead while
# one runs, so its figures are the engine's alone (a kernel importing beside it cost 12-23% on a 2-core machine).
TIMED = ("build", "throughput")


def ahead_of(later) -> list[str]:
    """Return the stages of `later` whose kernels may boot now: none past a timed stage, which must run alone."""
    out = []
    for s in later:
        if s is None:
            break
        out.append(s)
        if s in TIMED:
            break
    return out


class KernelPool:
    """Kernels started ahead for the stages named (at most `depth` at a time); `take` hands one over, `close` ends the rest.

    Two ahead, not one: a short stage (calibrate takes about 2 s) would otherwise leave the next kernel
    (quantize: OpenVINO, NNCF, torch) still importing when its stage begins.
    """

    def __init__(self, cwd: Path, extra_arguments: list[str], depth: int = 2):
        self.cwd, self.args, self.depth = Path(cwd), list(extra_arguments), depth
        self.ahead: dict[str, object] = {}

    def prepare(self, *stages: str | None) -> None:
        """Have kernels started for the first `depth` of `stages` (None ends the list); end any started for others."""
        wanted = ahead_of(stages)[: self.depth]
        for stage in [s for s in self.ahead if s not in wanted]:
            shutdown(self.ahead.pop(stage))
        for stage in wanted:
            if stage not in self.ahead:
                self._start(stage)

    def _start(self, stage: str) -> None:
        km = self.start(stage)
        if km is not None:
            self.ahead[stage] = km

    def start(self, stage: str):
        """Start a kernel for `stage` now (warm imports included) and return its manager, or None if it failed."""
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        km = AsyncKernelManager(kernel_name="python3")
        try:
            run_sync(km.start_kernel)(cwd=str(self.cwd), extra_arguments=self.args + [
                f"--IPKernelApp.exec_lines={warm_lines(stage)}"])
        except Exception as e:  # noqa: BLE001  papermill starts its own kernel instead: slower, never wrong
            log.warning("could not start a kernel for %s: %s", stage, e)
            return None
        return km

    def take(self, stage: str):
        """Return the kernel manager started for `stage` (alive), or None: papermill then starts one."""
        km = self.ahead.pop(stage, None)
        if km is None:
            return None
        from jupyter_core.utils import run_sync

        try:
            alive = run_sync(km.is_alive)()
        except Exception:  # noqa: BLE001
            alive = False
        if not alive:
            shutdown(km)
            return None
        return km

    def close(self) -> None:
        for stage in list(self.ahead):
            shutdown(self.ahead.pop(stage))


def shutdown(km) -> None:
    """End a kernel this process started (quietly: it may be dead already)."""
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except BaseException as e:  # noqa: BLE001  also on the way out of a Ctrl-C: kill() below still runs
        log.debug("kernel shutdown: %s", e)
    kill(km)


def kill(km) -> None:
    """Kill a kernel's whole process group at once (kernels run in sessions of their own, out of a terminal's reach).

    Used on Ctrl-C / SIGTERM, when there is no time for the kernel's own shutdown handshake; a no-op for a kernel
    that has ended.
    """
    import signal

    proc = getattr(getattr(km, "provisioner", None), "process", None)
    pid = getattr(proc, "pid", None)
    if not pid:
        return
    try:
        if os.getpgid(pid) == pid:  # its own group (jupyter_client starts kernels with start_new_session)
            os.killpg(pid, signal.SIGKILL)
        else:  # never our own group: that would kill this process too
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
