"""yolo-compile: Ultralytics YOLO -> mixed-precision INT8 engine, as a chain of papermill notebooks.

Import-light on purpose: nothing here loads torch, TensorRT, ONNX Runtime or ModelOpt; each stage
imports its heavy backends inside the functions that need them.
"""

__version__ = "0.1.0"

STAGES = ("export", "calibrate", "quantize", "compare", "build", "throughput", "bandwidth")
