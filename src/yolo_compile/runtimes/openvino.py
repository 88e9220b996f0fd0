"""OpenVINO: loading ONNX through convert_model (with an IR cache), the CPU runner, and the IR build.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from yolo_compile import fileio
from yolo_compile.runtimes.base import BaseRunner, Engine

NAME, MODULE, INSTALL = "openvino", "openvino", "pip install 'yolo-compile[openvino]'"


_OPENVINO_CACHE: list[Path] = []  # where converted ONNX models are kept as IR (empty: nowhere)


def use_openvino_cache(folder: str | Path | None) -> None:
    """Keep ONNX models converted for OpenVINO as IR in folder, by file content and OpenVINO version (None: never).

    A cold compile converts the same two files (FP32, quantized) in four stages' kernels: measured here ~0.5-1 s
    each time on the reference detector; reading the IR back takes ~0.05 s.
    """
    _OPENVINO_CACHE[:] = [Path(folder)] if folder else []


def load_openvino_model(model: str | Path):
    """Return an ov.Model: an IR (.xml) as saved, an ONNX through convert_model (or its IR from the cache).

    Not core.read_model for ONNX: measured on the reference detector (this 2-core AVX2 CPU, OpenVINO 2026.4),
    read_model of a Q/DQ ONNX loses 10.7 (ModelOpt max) and 22.1 (NNCF) mAP50-95 points where ONNX Runtime loses
    0.29 and 0.03, while convert_model of the same files loses 0.27 and 0.15: only convert_model's front-end
    pipeline turns the QuantizeLinear/DequantizeLinear pairs into FakeQuantize the CPU plugin runs right. The
    cache holds convert_model's own output, saved uncompressed (compress_to_fp16=False): the same graph.
    """
    import openvino as ov

    model = Path(model)
    if model.suffix == ".xml":
        return ov.Core().read_model(str(model))
    if not _OPENVINO_CACHE:
        return ov.convert_model(str(model))
    import hashlib

    from yolo_compile.fileio import atomic_dir, sha256
    key = hashlib.sha256(f"{sha256(model)}|{ov.get_version()}".encode()).hexdigest()[:40]
    entry = _OPENVINO_CACHE[0] / key
    if (entry / "model.xml").is_file() and (entry / "model.bin").is_file():
        try:
            return ov.Core().read_model(str(entry / "model.xml"))
        except RuntimeError:  # a damaged entry: converted again below and replaced, never trusted
            shutil.rmtree(entry, ignore_errors=True)
    net = ov.convert_model(str(model))
    try:
        with atomic_dir(entry) as tmp:  # another run that got there first keeps its entry
            ov.save_model(net, str(tmp / "model.xml"), compress_to_fp16=False)
    except (OSError, RuntimeError):  # a full disk or a read-only cache costs speed next time, never this run
        pass
    return net


class OpenVinoRunner(BaseRunner):
    """OpenVINO runtime on the CPU: reads ONNX (FP32 or ModelOpt Q/DQ) or its own IR."""

    name = "openvino"

    def __init__(self, model: Path, threads: int = 0, hint: str = "latency"):
        import openvino as ov

        core = ov.Core()
        # FP32 arithmetic for every float op, as the ONNX says: on CPUs with AVX512-BF16/AMX the plugin's default is
        # bf16 (measured here: FP32 outputs moved by up to 1.9 px), which would make the gate judge another model.
        config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model, self.threads, self.hint = model, threads, hint
        net = load_openvino_model(model)
        inp = net.inputs[0]
        self.input_name = inp.get_any_name()
        shape = inp.get_partial_shape()
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        self.compiled = core.compile_model(net, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x)})
        return self.request.get_output_tensor(0).data.copy()

    def run_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield each batch's output in order, with the compiled model's infer requests kept busy meanwhile.

        Under the throughput hint the plugin runs several requests at once (one per stream); the caller's work on
        one output (decoding, NMS) overlaps the inference of the next batches.
        """
        import openvino as ov

        queue, done, nxt = ov.AsyncInferQueue(self.compiled), {}, 0
        queue.set_callback(lambda req, i: done.__setitem__(i, req.get_output_tensor(0).data.copy()))

        def ready():  # the outputs finished so far, in batch order
            nonlocal nxt
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

        for i, x in enumerate(batches):
            queue.start_async({0: np.ascontiguousarray(x)}, i)  # returns once a request is free
            yield from ready()
        queue.wait_all()
        yield from ready()

    def prepare(self, x: np.ndarray) -> Callable[[], object]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return partial(self.request.infer, {0: x})  # the output stays in the request: no copy timed

    def describe(self) -> dict:
        import openvino as ov

        return {"backend": self.name, "version": ov.get_version(), "device": "cpu", "model": str(self.model),
                "inference_precision": "f32",
                "threads": self.threads or "all cores", "hint": self.hint}


def build(src: Path, run_dir: Path, out: Path) -> Engine:
    """Return the Engine of out/model.xml + .bin: src as OpenVINO reads it, saved as IR (float stays FP32)."""
    import openvino as ov

    xml, bins = out / "model.xml", out / "model.bin"
    tmp = Path(tempfile.mkdtemp(prefix=".ir.", dir=out))
    try:
        # The IR is what the gate evaluated: OpenVINO opens an ONNX through the same convert_model
        # (load_openvino_model; read_model mis-runs Q/DQ files). Weights the quantizer stored as int8
        # (ModelOpt dq_only, NNCF) stay int8 in the IR; compress_to_fp16=False keeps FP32 FP32.
        model = load_openvino_model(src)
        int8 = sum(1 for op in model.get_ops() if op.get_type_name() == "Constant"
                   and op.get_output_element_type(0) == ov.Type.i8)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "model.bin").replace(bins)  # the .bin first: a model.xml never names a missing .bin
        (tmp / "model.xml").replace(xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Engine(
        backend="openvino", engine=str(xml.relative_to(run_dir)),
        engine_sha256=fileio.sha256(xml), engine_bytes=xml.stat().st_size + bins.stat().st_size,
        source_onnx=str(src.relative_to(run_dir)),
        details={"openvino": ov.get_version(), "device": "CPU", "files": {"model.xml": fileio.sha256(xml),
                 "model.bin": fileio.sha256(bins)}, "compress_to_fp16": False, "int8_weight_constants": int8},
    )
