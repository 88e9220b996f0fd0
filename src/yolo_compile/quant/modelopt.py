"""ModelOpt: INT8 Q/DQ post-training quantization of an ONNX, FP16 lowering, and float conversions.

What FACTS.md says of ModelOpt holds here: calibration data is an array split by the model's batch, never
random; node lists are regexes from the start of the name; ORT calibration runs on the CPU.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from yolo_compile import images
from yolo_compile.quant import weights
from yolo_compile.quant.graph import decode_nodes

# calibration_method -> the scale methods tried (scales.METHODS); auto tries them all and measures
CANDIDATE_METHODS = {"auto": ("max", "entropy", "percentile-99.99", "percentile-99.999"), "entropy": ("entropy",),
                     "max": ("max",), "percentile": ("percentile-99.99",)}


def modelopt_quantize(src: Path, dst: Path, data: np.ndarray, exp: dict, method: str, hp_dtype: str, *,
                      exclude: list[str] | None = None, include: list[str] | None = None) -> None:
    """INT8 PTQ of src into dst with ModelOpt; node lists are regexes."""
    from modelopt.onnx.quantization import quantize

    shape = [1 if not isinstance(d, int) else d for d in exp["input_shape"]]
    # ModelOpt's loader runs onnx.shape_inference.infer_shapes_path(src), which rewrites src in place: hand it a
    # private copy so the export stage's model.onnx is never touched by a later stage.
    data = images.to_float(data)  # callers pass a few images (placement) or a small set: never the whole cache
    private = tempfile.TemporaryDirectory(prefix="modelopt-src-")
    src_copy = Path(private.name) / Path(src).name
    shutil.copyfile(src, src_copy)
    # FP16 everywhere but the decode: ModelOpt writes the FP32 Q/DQ graph, autocast then lowers all but the decode.
    decode = decode_nodes(src_copy, exp) if hp_dtype == "fp16" else []
    try:
        _modelopt(quantize, src_copy, dst, data, exp, method, "fp32" if decode else hp_dtype, shape, exclude, include)
    finally:
        private.cleanup()
    if decode:
        to_fp16(dst, dst, decode)
    if hp_dtype == "fp32":  # a CPU target: OpenVINO and ONNX Runtime must score it alike on every x86 ISA
        weights.overflow_fix(dst, exp["input_name"])
    copy_metadata(src, dst)


def to_fp16(src: Path, dst: Path, keep_fp32: list[str]) -> None:
    """Write src with every float node in FP16 except keep_fp32 (names), FP32 inputs and outputs; Q/DQ untouched.

    Why the decode stays FP32: it computes box corners in pixels, where FP16's spacing is 0.25-0.5 px at 320-640;
    measured on the reference detector (ONNX Runtime, 200 labeled images), FP16 with the decode in FP16 loses
    0.233 mAP50-95 point, with the decode in FP32 0.006, and the percentile-99.999 INT8 model 0.53 vs 0.23. On
    TensorRT the decode is a few elementwise ops over (4 + classes) x anchors values: FP32 there costs ~nothing.
    """
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    # data_max/init_max infinite: the names decide alone (autocast's range rules would otherwise look at outputs of
    # its own random reference inputs); nothing here calibrates.
    model = convert_to_mixed_precision(str(src), low_precision_type="fp16", nodes_to_exclude=[re.escape(n) + "$" for n in keep_fp32],
                                       keep_io_types=True, data_max=float("inf"), init_max=float("inf"))
    onnx.save(model, str(dst))


def _modelopt(quantize, src, dst, data, exp, method, hp_dtype, shape, exclude, include) -> None:
    quantize(
        str(src), quantize_mode="int8", calibration_data=data, calibration_method=method,
        calibration_eps=["cpu"],  # ORT-CUDA calibration crashes for many users; CPU is exact and enough
        calibration_shapes=f"{exp['input_name']}:{'x'.join(map(str, shape))}",
        nodes_to_exclude=exclude or None, nodes_to_quantize=include or None,
        high_precision_dtype=hp_dtype, output_path=str(dst), log_level="ERROR",
    )


def copy_metadata(src: Path, dst: Path) -> None:
    """Copy the FP32 model's metadata (class names, stride, image size) onto a derived ONNX file."""
    import onnx

    meta = onnx.load(str(src), load_external_data=False).metadata_props
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for prop in meta:
        model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(dst))


def convert_float(src: Path, dst: Path, hp_dtype: str, keep_fp32: list[str] | tuple = ()) -> None:
    """Write src converted to FP16 (keeping FP32 inputs, outputs and the keep_fp32 nodes), or unchanged for 'fp32'."""
    import onnx

    if hp_dtype == "fp16" and keep_fp32:
        to_fp16(src, dst, list(keep_fp32))
        copy_metadata(src, dst)
        return
    model = onnx.load(str(src))
    if hp_dtype == "fp16":
        from modelopt.onnx.autocast import convert_to_f16

        model = convert_to_f16(model, keep_io_types=True)
    onnx.save(model, str(dst))
    copy_metadata(src, dst)
