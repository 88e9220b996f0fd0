"""A run's CPU share: how many threads its ONNX Runtime sessions, torch and BLAS may use.

A run alone sizes its libraries for the whole machine. Under Ray that goes wrong both ways: Ray sets
`OMP_NUM_THREADS=1` in its workers (torch and BLAS get 1 thread), while every ONNX Runtime session still starts a
pool the size of the machine (ORT 1.30 on the 16-core GPU host: 15 threads beside the caller, also under a 2-core
affinity mask), so 8 runs put up to 128 ORT threads on 16 cores. `matrix.compile_entry` sets `YOLO_COMPILE_THREADS`
and the OpenMP/BLAS variables to the run's share for the run; each stage kernel inherits them, and `apply` (called by
`notebook.setup`) makes the share the default intra-op thread count of every ORT session the kernel opens, ORT being
the one library here that reads no variable. Measured on that host (bench/README.md): 8 workers 66.3 -> 53.0 s.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Iterator

ENV = "YOLO_COMPILE_THREADS"
LIBRARY_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # torch, NumPy's BLAS, MKL


def share() -> int:
    """Return this process's thread share from YOLO_COMPILE_THREADS (0: unset, the libraries' own defaults)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        from yolo_compile.errors import CompileError

        raise CompileError(f"{ENV}={value!r}: expected a whole number of threads (0 or unset: one per core)")
    return int(value)


def environment(n: int) -> dict[str, str]:
    """Return the variables that give a process and its children a share of n threads."""
    return {ENV: str(n), **{v: str(n) for v in LIBRARY_VARS}}


@contextmanager
def scoped(n: int) -> Iterator[None]:
    """Set this process's share to n threads for the block (n = 0: leave the environment as it is)."""
    saved = {k: os.environ.get(k) for k in environment(0)}
    if n:
        os.environ.update(environment(n))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def apply() -> int:
    """Give every ONNX Runtime session this process opens the share as its default intra-op threads; return it."""
    n = share()
    if not n:
        return 0
    import onnxruntime as ort

    init = ort.InferenceSession.__init__
    if getattr(init, "_share", None) == n:
        return n
    plain = getattr(init, "__wrapped__", init)

    @functools.wraps(plain)
    def capped(self, path_or_bytes, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = ort.SessionOptions()
        if not sess_options.intra_op_num_threads:  # 0: "one per core"; an explicit count is the caller's
            sess_options.intra_op_num_threads = n
        plain(self, path_or_bytes, sess_options, *args, **kwargs)

    capped._share = n
    ort.InferenceSession.__init__ = capped
    return n
