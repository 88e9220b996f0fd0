"""Runtimes, one module each (onnxruntime, openvino, pytorch, tensorrt, polygraphy), behind `base`; `registry`
names them. A runtime imports `base` and never another runtime.
"""
