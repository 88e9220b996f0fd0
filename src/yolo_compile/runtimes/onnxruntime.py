"""ONNX Runtime: the CPU runner and the CPU engine build (an optimized .ort.onnx).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo_compile import fileio
from yolo_compile.runtimes.base import BaseRunner, Engine

NAME, MODULE, INSTALL = "onnxruntime", "onnxruntime", "pip install onnxruntime"


class OnnxRuntimeRunner(BaseRunner):
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


def build(src: Path, run_dir: Path, out: Path) -> Engine:
    """Return the Engine of out/model.ort.onnx: src optimized for any CPU by ONNX Runtime (EXTENDED level)."""
    import onnxruntime as ort

    engine = out / "model.ort.onnx"
    with fileio.atomic_path(engine) as tmp:
        opts = ort.SessionOptions()
        # EXTENDED, not ALL: the saved model stays portable across CPUs (ALL bakes in layout for this one).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return Engine(
        backend="onnxruntime", engine=str(engine.relative_to(run_dir)), engine_sha256=fileio.sha256(engine),
        engine_bytes=engine.stat().st_size, source_onnx=str(src.relative_to(run_dir)),
        details={"onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                 "graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    )
