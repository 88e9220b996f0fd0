"""The runtimes, looked up by name: which exist, which can run here, how to open a runner or build an engine.

ONNX Runtime and OpenVINO (CPU), PyTorch (eager FP32/FP16, FP16 + CUDA graph where CUDA exists) and TensorRT
(Polygraphy's TrtRunner over a serialized plan). The study, the gate, the build and the throughput stages loop over
runtimes instead of branching on a name. Each runtime imports its library when it loads, so this stays light.
Adding a runtime: one module under runtimes/ (NAME, MODULE, INSTALL, a runner class, optionally build) and one line
in RUNTIMES below.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from yolo_compile.config import TARGETS, check_choice
from yolo_compile.errors import CompileError
from yolo_compile.runtimes import onnxruntime, openvino, pytorch, tensorrt
from yolo_compile.runtimes.base import Runner


@dataclass(frozen=True)
class Runtime:
    """One runtime: its module, the runner factory, and (CPU runtimes) the engine builder."""

    module: ModuleType
    open: Callable[..., Runner]  # (model, **options) -> Runner
    cpu: bool = False  # a CPU target may ship its engine

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def build(self) -> Callable | None:
        """Return build(src, run_dir, out) -> Engine where the runtime builds a CPU engine, else None."""
        return getattr(self.module, "build", None)


def _open_pytorch(model: Path, *, device: str = "cpu", half: bool = False, cuda_graph: bool = False, **_) -> Runner:
    if (half or cuda_graph) and device != "cuda":
        raise CompileError(f"backend pytorch: half={half}, cuda_graph={cuda_graph} need device='cuda'")
    return pytorch.PyTorchRunner(model, device, half, cuda_graph)


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime(onnxruntime, lambda model, *, threads=0, **_: onnxruntime.OnnxRuntimeRunner(model, threads), cpu=True),
    Runtime(openvino, lambda model, *, threads=0, hint="latency", **_: openvino.OpenVinoRunner(model, threads, hint),
            cpu=True),
    Runtime(pytorch, _open_pytorch),
    Runtime(tensorrt, lambda model, **_: tensorrt.TensorRtRunner(model)),
)}
BACKENDS = tuple(RUNTIMES)
CPU_BACKENDS = tuple(n for n, r in RUNTIMES.items() if r.cpu)


def available(name: str) -> tuple[bool, str]:
    """Return (usable, reason) for a backend on this machine."""
    rt = RUNTIMES.get(name)
    if rt is None:
        return False, f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}"
    module = rt.module.MODULE
    if importlib.util.find_spec(module) is None:
        return False, f"the Python package '{module}' is not installed ({rt.module.INSTALL})"
    if name == "tensorrt":
        return tensorrt.tensorrt_available()
    return True, f"{module} imports"


def runtime_version(name: str) -> str:
    """Return the installed version of a backend's package ('' when absent), without loading a model."""
    from importlib import metadata

    rt = RUNTIMES.get(name)
    try:  # each backend's distribution is named as its module
        return metadata.version(rt.module.MODULE if rt else name)
    except metadata.PackageNotFoundError:
        return ""


def open_runner(name: str, model: str | Path, *, threads: int = 0, hint: str = "latency", device: str = "cpu",
                half: bool = False, cuda_graph: bool = False) -> Runner:
    """Return a Runner for a model file on a backend.

    onnxruntime: ONNX; openvino: ONNX (FP32 or Q/DQ) or IR .xml; tensorrt: a serialized plan; pytorch: an
    Ultralytics .pt checkpoint (device cpu|cuda, half for FP16, cuda_graph to replay a captured graph).
    """
    ok, why = available(name)
    if not ok:
        raise CompileError(f"backend {name}: {why}")
    model = Path(model)
    if not model.is_file():
        raise CompileError(f"{model}: model file not found for backend {name}")
    return RUNTIMES[name].open(model, threads=threads, hint=hint, device=device, half=half, cuda_graph=cuda_graph)


def builder(name: str) -> Callable:
    """Return the CPU engine builder of a runtime: build(src, run_dir, out) -> Engine."""
    rt = RUNTIMES.get(name)
    if rt is None or rt.build is None:
        raise CompileError(f"runtime {name!r} builds no CPU engine; expected one of {', '.join(CPU_BACKENDS)}")
    return rt.build


def resolve_target(target: str) -> str:
    """Return 'tensorrt' or 'cpu' for a target parameter ('auto' picks TensorRT where it can run)."""
    check_choice("target", target, TARGETS)
    if target != "auto":
        return target
    return "tensorrt" if tensorrt.tensorrt_available()[0] else "cpu"


def scoring_backend(target: str) -> str:
    """Return the runtime candidates are scored on: the one that ships for the target.

    CPU targets ship OpenVINO where installed (INT8 there beats FP32; ONNX Runtime INT8 is slower than FP32 on CPUs
    without VNNI). TensorRT targets: ONNX Runtime, whose Q/DQ arithmetic is the reference TensorRT follows.
    """
    return "openvino" if target == "cpu" and available("openvino")[0] else "onnxruntime"
