"""What every runtime shares: the Runner interface, its default methods, and the Engine record a build returns.

A runtime module imports this one and never another runtime (Polygraphy's backend/base is the model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np


class Runner(Protocol):
    """A loaded model on one backend."""

    name: str  # backend name: onnxruntime | openvino | pytorch | tensorrt
    input_name: str
    static_batch: int | None  # the model's fixed batch size, None where the batch axis is symbolic
    device: str  # cpu | cuda: where prepare() keeps the input and the timer synchronizes

    def warm_up(self, x: np.ndarray, n: int = 2) -> None:
        """Run x n times untimed (kernel selection, first-shape compilation, caches)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Return the model's first output for a float32 (B, 3, H, W) batch."""

    def prepare(self, x: np.ndarray) -> Callable[[], object]:
        """Return a zero-argument call that runs the model on x held where the backend reads it: what is timed."""

    def describe(self) -> dict:
        """Return what ran: backend, version, device, model file, threads."""


class BaseRunner:
    """Default warm_up, prepare and run_many for a runner that defines run(); usable as a context manager."""

    name = ""
    device = "cpu"

    def warm_up(self, x: np.ndarray, n: int = 2) -> None:
        call = self.prepare(x)
        for _ in range(n):
            call()

    def prepare(self, x: np.ndarray) -> Callable[[], object]:
        return partial(self.run, np.ascontiguousarray(x, dtype=np.float32))

    def run_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield each batch's output in order."""
        for x in batches:
            yield self.run(x)

    def close(self) -> None:
        """Release what the runner holds (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Engine:
    """A built engine in the run folder: what a runtime's build() returns, before the stage wraps it in its result."""

    backend: str
    engine: str  # relative to the run folder
    engine_sha256: str
    engine_bytes: int
    source_onnx: str  # relative to the run folder
    details: dict = field(default_factory=dict)

    def fields(self) -> dict:
        """Return the record as keyword arguments (for the build stage's result)."""
        return dataclasses.asdict(self)
