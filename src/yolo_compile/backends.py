"""Inference backends behind one small interface (load, warm up, run a batch, describe), like Polygraphy's runners.

The study, the gate, the build and the throughput stages loop over backends instead of branching on a name.
Each backend imports its runtime inside `open`, so `import yolo_compile.backends` stays light.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import CompileError

CPU_BACKENDS = ("onnxruntime", "openvino")


class Runner(Protocol):
    """A loaded model on one backend."""

    name: str  # backend name: onnxruntime | openvino | pytorch | tensorrt
    input_name: str
    static_batch: int | None  # the model's fixed batch size, None where the batch axis is symbolic

    def run(self, x: np.ndarray) -> np.ndarray:
        """Return the model's first output for a float32 (B, 3, H, W) batch."""

    def describe(self) -> dict:
        """Return what ran: backend, version, device, model file, threads."""


def available(name: str) -> tuple[bool, str]:
    """Return (usable, reason) for a CPU backend on this machine."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(name)
    if module is None:
        return False, f"unknown backend {name!r}; expected one of {', '.join(CPU_BACKENDS)}"
    if importlib.util.find_spec(module) is None:
        return False, f"the Python package '{module}' is not installed (pip install 'yolo-compile[openvino]')"
    return True, f"{module} imports"


def open_runner(name: str, model: str | Path, *, threads: int = 0, hint: str = "latency") -> Runner:
    """Return a Runner for an ONNX file (either backend) or an OpenVINO IR .xml (openvino only)."""
    ok, why = available(name)
    if not ok:
        raise CompileError(f"backend {name}: {why}")
    model = Path(model)
    if not model.is_file():
        raise CompileError(f"{model}: model file not found for backend {name}")
    if name == "onnxruntime":
        return OnnxRuntimeRunner(model, threads)
    return OpenVinoRunner(model, threads, hint)


class OnnxRuntimeRunner:
    """ONNX Runtime, CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, model: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.model, self.threads = model, threads
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.name, "version": ort.__version__, "device": "cpu", "model": str(self.model),
                "threads": self.threads or "all cores"}


class OpenVinoRunner:
    """OpenVINO runtime on the CPU: reads ONNX (FP32 or ModelOpt Q/DQ) or its own IR."""

    name = "openvino"

    def __init__(self, model: Path, threads: int = 0, hint: str = "latency"):
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": hint.upper()}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model, self.threads, self.hint = model, threads, hint
        net = core.read_model(str(model))
        inp = net.inputs[0]
        self.input_name = inp.get_any_name()
        shape = inp.get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        self.compiled = core.compile_model(net, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x)})
        return self.request.get_output_tensor(0).data.copy()

    def describe(self) -> dict:
        import openvino as ov

        return {"backend": self.name, "version": ov.get_version(), "device": "cpu", "model": str(self.model),
                "threads": self.threads or "all cores", "hint": self.hint}
