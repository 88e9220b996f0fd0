"""Quantizers behind one small call: FP32 ONNX + calibration images + float nodes -> a Q/DQ ONNX.

ModelOpt (`quant.modelopt.modelopt_quantize`): symmetric INT8 Q/DQ that TensorRT builds; its activation scales are
set from our own statistics (`scales`). NNCF (here): OpenVINO's post-training quantizer with the MIXED preset
(symmetric per-channel weights, asymmetric activations, fast bias correction), what Ultralytics'
`export(format="openvino", int8=True)` runs, on NNCF's ONNX backend so the artifact stays one Q/DQ ONNX that
OpenVINO, ONNX Runtime and Polygraphy all read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from yolo_compile import images

log = logging.getLogger(__name__)
# mixed: symmetric weights, asymmetric activations (the peer's); performance: symmetric both (one INT8 kernel path)
PRESETS = {"mixed": lambda nncf: nncf.QuantizationPreset.MIXED,
           "performance": lambda nncf: nncf.QuantizationPreset.PERFORMANCE}


def nncf_quantize(src: Path, dst: Path, data: np.ndarray, input_name: str, keep_float: list[str],
                  preset: str = "mixed") -> dict:
    """Quantize src into dst with NNCF (a preset: mixed or performance; fast bias correction); keep_float names and
    Sigmoids stay float.

    Ultralytics ignores every Sigmoid (the SiLU gates and the class scores) and the head; so do we, with
    the head's nodes given by name. Returns what ran.
    """
    import nncf
    import onnx

    model = onnx.load(str(src))
    dataset = nncf.Dataset(range(len(data)), lambda i: {input_name: images.to_float(data[i:i + 1])})
    scope = nncf.IgnoredScope(names=list(keep_float), types=["Sigmoid"], validate=False)
    q = nncf.quantize(model, dataset, preset=PRESETS[preset](nncf), fast_bias_correction=True,
                      subset_size=len(data), ignored_scope=scope)
    onnx.save(q, str(dst))
    return {"quantizer": "nncf", "version": nncf.__version__, "preset": preset, "fast_bias_correction": True,
            "images": int(len(data)), "ignored": len(keep_float)}
