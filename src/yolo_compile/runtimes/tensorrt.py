"""TensorRT: whether it can run here, what an engine is tied to (version, GPU), and the plan runner.

The TensorRT build itself is the build stage's (stages/build.py): it needs trtexec/Polygraphy on the target.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from yolo_compile import runs
from yolo_compile.runtimes.base import BaseRunner

NAME, MODULE, INSTALL = "tensorrt", "tensorrt", "pip install 'yolo-compile[tensorrt]' on an NVIDIA host"


def tensorrt_available() -> tuple[bool, str]:
    """Return (usable, reason): TensorRT importable and an NVIDIA GPU visible to the driver."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the Python package 'tensorrt' is not installed (pip install 'yolo-compile[tensorrt]' on an NVIDIA host)"
    gpus = Path("/proc/driver/nvidia/gpus")
    if not (gpus.is_dir() and any(gpus.iterdir())) and not os.environ.get("YOLO_COMPILE_ASSUME_GPU"):
        return False, "no NVIDIA GPU is visible (/proc/driver/nvidia/gpus is empty)"
    return True, "tensorrt imports and an NVIDIA GPU is present"


def tensorrt_identity(trt_version: str | None = None, gpu: str | None = None, compute_capability: str | None = None) -> dict:
    """Return what a TensorRT engine or timing cache is tied to: TensorRT version, GPU name, compute capability.

    Values not given are read from the installed tensorrt and nvidia-smi (None where absent).
    """
    if trt_version is None:
        trt_version = runs.tool_versions().get("tensorrt")
    if gpu is None or compute_capability is None:
        first = (runs.device_info().get("gpus") or [""])[0].split(",")
        gpu = gpu if gpu is not None else (first[0].strip() or None)
        compute_capability = compute_capability if compute_capability is not None else \
            (first[-1].strip() if len(first) >= 4 else None)
    return {"tensorrt": trt_version, "gpu": gpu, "compute_capability": compute_capability}


def identity_key(identity: dict, model_sha256: str | None = None) -> str:
    """Return the sha256 naming an engine (with the model hash) or a timing cache (without it) for this identity."""
    return hashlib.sha256(json.dumps({**identity, "model": model_sha256}, sort_keys=True).encode()).hexdigest()


def timing_cache_path(cache_root: str | Path, identity: dict) -> Path:
    """Return the shared timing cache for one TensorRT version and GPU: a mismatched cache is never loaded."""
    return Path(cache_root) / "tensorrt" / f"timing-{identity_key(identity)[:16]}.cache"


def load_engine(plan: bytes, version_compatible: bool = False):
    """Return the deserialized ICudaEngine of a plan (None when TensorRT rejects it)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if version_compatible:  # a version-compatible plan embeds the lean runtime, which is host code
        runtime.engine_host_code_allowed = True
    return runtime.deserialize_cuda_engine(plan)


class TensorRtRunner(BaseRunner):
    """A serialized TensorRT plan through Polygraphy's TrtRunner; timed with device-resident input and output."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan: Path):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.model = plan
        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(plan))))
        self.runner.activate()
        meta = self.runner.get_input_metadata()
        self.input_name = next(iter(meta.keys()))
        first = meta[self.input_name].shape[0]
        self.static_batch = first if isinstance(first, int) and first > 0 else None

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.runner.infer({self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(next(iter(out.values())))

    def prepare(self, x: np.ndarray) -> Callable[[], object]:
        import torch

        xd = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()  # time the engine, not PCIe
        return partial(self.runner.infer, {self.input_name: xd}, copy_outputs_to_host=False)

    def describe(self) -> dict:
        import tensorrt as trt

        return {"backend": self.name, "version": trt.__version__, "device": "cuda", "model": str(self.model)}

    def close(self) -> None:
        """Release the engine's device memory."""
        self.runner.deactivate()
