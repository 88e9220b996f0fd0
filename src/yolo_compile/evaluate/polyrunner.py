"""Any of our backends as a Polygraphy runner, so Polygraphy's Comparator judges the runtime that ships.

Polygraphy has runners for ONNX Runtime and TensorRT but none for OpenVINO; this adapter wraps a
`runtimes.base.Runner` (load, run a batch) in Polygraphy's BaseRunner (activate, input metadata, infer).
Imported only where a comparison runs: it loads Polygraphy.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType


class BackendRunner(BaseRunner):
    """Polygraphy runner over runtimes.registry.open_runner(backend, model); one float32 input, the first output named."""

    def __init__(self, backend: str, model: str | Path, input_name: str, input_shape: list, output_name: str,
                 name: str | None = None):
        super().__init__(name=name, prefix=f"{backend}-runner")
        self.backend, self.model = backend, Path(model)
        self.input_name, self.input_shape, self.output_name = input_name, list(input_shape), output_name

    def activate_impl(self):
        from yolo_compile.runtimes.registry import open_runner

        self.runner = open_runner(self.backend, self.model)

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        meta.add(self.input_name, dtype=DataType.FLOAT32, shape=self.input_shape)
        return meta

    def infer_impl(self, feed_dict):
        start = time.time()
        out = self.runner.run(feed_dict[self.input_name])
        self.inference_time = time.time() - start
        return OrderedDict([(self.output_name, out)])

    def deactivate_impl(self):
        del self.runner
