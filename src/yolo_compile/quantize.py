"""Stage 3: ModelOpt ONNX PTQ -> Q/DQ ONNX: INT8 backbone and neck, the detection head kept in float."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images, runs, scales
from .config import check_choice, resolve_target
from .errors import QuantizeError

log = logging.getLogger(__name__)
STAGE = "quantize"
RECIPES = ("mixed", "int8", "float")
METHODS = ("auto", "entropy", "max", "percentile")
QUANTIZERS = ("auto", "modelopt", "nncf")
# calibration_method -> the scale methods tried (scales.METHODS); auto tries them all and measures
CANDIDATE_METHODS = {"auto": ("max", "entropy", "percentile-99.99", "percentile-99.999"), "entropy": ("entropy",),
                     "max": ("max",), "percentile": ("percentile-99.99",)}


@dataclass(frozen=True)
class QuantizeConfig:
    target: str = "auto"  # tensorrt | cpu | auto: the head's float type follows it (FP16 for TensorRT, FP32 for CPU)
    recipe: str = "mixed"  # mixed: INT8 with float head and stem conv; int8: all INT8; float: no INT8 (the baseline)
    calibration_method: str = "auto"  # auto (measure NNCF on CPU, then max, entropy, percentile; keep the best) | entropy | max | percentile
    quantizer: str = "auto"  # auto (CPU targets: NNCF then ModelOpt, measured on OpenVINO; TensorRT: ModelOpt) | modelopt | nncf
    keep_float: str = ""  # more nodes kept float: a compare/nodes_to_exclude.json from a recipe search, or regexes
    data: str = ""  # labeled split (Ultralytics data.yaml) scoring the candidates by mAP drop; empty: label-free
    eval_dir: str = ""  # held-out images for the label-free score when data is empty
    score_images: int = 0  # how many labeled (or held-out) images score a candidate; 0 means all
    accept_drop: float = 0.3  # auto: stop at the first candidate within this mAP50-95 drop (points); 0 scores all
    search_budget: int = 10  # auto, none within accept_drop: most recipes (float groups x per-group calibration) the search scores
    search_floats: int = 2  # most layer groups the recipe search keeps float beyond the head and stem (each costs speed)

    def __post_init__(self) -> None:
        check_choice("recipe", self.recipe, RECIPES)
        check_choice("calibration_method", self.calibration_method, METHODS)
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        if self.search_budget < 0 or self.search_floats < 0:
            raise QuantizeError(f"parameters 'search_budget' = {self.search_budget}, 'search_floats' = {self.search_floats}: "
                                "give counts >= 0 (search_budget=0 turns the recipe search off)")
        if self.accept_drop < 0:
            raise QuantizeError(f"parameter 'accept_drop' = {self.accept_drop}: give points >= 0 (0 scores every candidate)")
        if self.quantizer == "nncf" and resolve_target(self.target) == "tensorrt":
            raise QuantizeError("quantizer=nncf writes asymmetric activations that TensorRT does not build; "
                                "use quantizer=modelopt (or auto) with target=tensorrt")
        resolve_target(self.target)  # validates the name
        self.extra_exclude()  # fails early on a missing file or a bad regex

    def extra_exclude(self) -> list[str]:
        """Return the keep_float regexes (read from a .json list, or split on whitespace)."""
        if not self.keep_float:
            return []
        if self.keep_float.endswith(".json"):
            path = Path(self.keep_float)
            if not path.is_file():
                raise QuantizeError(f"{path}: keep_float file not found; pass a nodes_to_exclude.json from a compare run")
            patterns = json.loads(path.read_text())
        else:
            patterns = self.keep_float.split()
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise QuantizeError(f"keep_float pattern {p!r} is not a regular expression: {e}") from None
        return list(patterns)


@dataclass
class QuantizeResult:
    status: str
    onnx: str
    onnx_sha256: str
    onnx_bytes: int
    fp32_bytes: int
    target: str
    recipe: str
    calibration_method: str
    high_precision_dtype: str
    calibration_images: int
    op_counts: dict = field(default_factory=dict)
    quantized_nodes: list = field(default_factory=list)  # compute nodes fed by DequantizeLinear
    head_nodes: list = field(default_factory=list)  # nodes of the detection head kept in float
    stem_nodes: list = field(default_factory=list)  # the conv reading raw pixels, kept in float by 'mixed'
    quantizer: str = "modelopt"
    candidates: list = field(default_factory=list)  # every candidate: quantizer, calibration, drop, seconds
    chosen: dict = field(default_factory=dict)  # the winner, the score it won on, the noise, and why
    weights_int8: int = 0  # weight initializers stored as INT8 (DequantizeLinear only)
    size_ratio: float = 0.0  # onnx_bytes / fp32_bytes
    seconds: float = 0.0


@dataclass(frozen=True)
class HeadNodes:
    """The detection head's nodes in an Ultralytics ONNX graph, split by role."""

    output_convs: tuple[str, ...]  # /model.<i>/cv2.k/cv2.k.2/Conv (boxes) and cv3.k.2 (classes)
    dfl: tuple[str, ...]
    decode: tuple[str, ...]  # Softmax, Sub/Add/Mul, Concat, Sigmoid, Reshape... after the convs
    branch: tuple[str, ...]  # the 3x3 convs cv2.k.0/1, cv3.k.0/1 and their activations (INT8 in 'mixed')

    @property
    def kept_float(self) -> tuple[str, ...]:
        """Names that the 'mixed' recipe keeps in high precision."""
        return self.output_convs + self.dfl + self.decode


def find_head(graph, head_index: int) -> HeadNodes:
    """Classify the nodes under /model.<head_index>/ (read from the model, never hard-coded)."""
    prefix = f"/model.{head_index}/"
    names = [n.name for n in graph.node if n.name.startswith(prefix)]
    if not names:
        raise QuantizeError(
            f"no ONNX node is named '{prefix}...': the graph was not exported by Ultralytics with head index {head_index}"
        )
    out_conv = re.compile(re.escape(prefix) + r"cv[23]\.\d+/cv[23]\.\d+\.2/")
    branch = re.compile(re.escape(prefix) + r"cv[23]\.\d+/cv[23]\.\d+\.[01]/")
    dfl = re.compile(re.escape(prefix) + r"dfl/")
    groups: dict[str, list[str]] = {"out": [], "dfl": [], "branch": [], "decode": []}
    for n in names:
        key = "out" if out_conv.match(n) else "dfl" if dfl.match(n) else "branch" if branch.match(n) else "decode"
        groups[key].append(n)
    if not groups["out"]:
        raise QuantizeError(f"head '{prefix}' has no output convs (cv2.k.2 / cv3.k.2): not a YOLOv8/YOLO11 Detect head")
    return HeadNodes(tuple(groups["out"]), tuple(groups["dfl"]), tuple(groups["decode"]), tuple(groups["branch"]))


def find_stem(graph, input_name: str) -> tuple[str, ...]:
    """Return the Conv nodes that read the image input directly: the stem, fed raw 0..1 pixels."""
    return tuple(n.name for n in graph.node if n.op_type == "Conv" and input_name in n.input)


def inspect_qdq(onnx_path: Path) -> tuple[Counter, list[str]]:
    """Return (op counts, names of non-Q/DQ nodes that take an input from a DequantizeLinear)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    quantized = [
        n.name for n in graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    return Counter(n.op_type for n in graph.node), quantized


def check_recipe(recipe: str, ops: Counter, quantized: list[str], head: HeadNodes, path: Path,
                 stem: tuple[str, ...] = ()) -> None:
    """Raise QuantizeError when the quantized graph does not match its recipe."""
    if recipe == "float":
        if ops.get("QuantizeLinear"):
            raise QuantizeError(f"{path}: the float recipe produced {ops['QuantizeLinear']} QuantizeLinear nodes")
        return
    if not ops.get("QuantizeLinear") or not ops.get("DequantizeLinear"):
        raise QuantizeError(f"{path}: ModelOpt inserted no Q/DQ nodes; nothing was quantized to INT8")
    if recipe == "mixed":
        leaked = sorted(set(quantized) & set(head.kept_float + stem))
        if leaked:
            raise QuantizeError(f"{path}: head or stem nodes were quantized despite the mixed recipe: {', '.join(leaked[:5])}")


def run(cfg: QuantizeConfig, run_dir: str | Path) -> QuantizeResult:
    """Quantize run_dir/export/model.onnx into run_dir/quantize/model.quant.onnx, choosing by measurement.

    The FP32 model is copied into a temporary folder first: no quantizer writes next to an earlier stage's file.
    """
    import onnx

    exp = runs.require_passed(run_dir, "export")
    run_dir = Path(run_dir)
    fp32 = run_dir / exp["onnx"]
    target = resolve_target(cfg.target)
    hp_dtype = "fp16" if target == "tensorrt" else "fp32"
    graph = onnx.load(str(fp32), load_external_data=False).graph
    head = find_head(graph, int(exp["head_index"]))
    # Measured on the reference detector: INT8 on the stem conv alone costs ~0.8 mAP50-95 points with an FP16
    # head (1.29 -> 0.47 when kept float), the second most sensitive group after the DFL; it is 1 conv of 64.
    stem = find_stem(graph, exp["input_name"]) if cfg.recipe == "mixed" else ()
    out = runs.stage_dir(run_dir, STAGE) / "model.quant.onnx"
    n_images, candidates, chosen, quantizer, method, w8 = 0, [], {}, "none", "none", 0
    with runs.Timer() as t, tempfile.TemporaryDirectory(prefix="yolo-quantize-") as tmpdir, runs.atomic_path(out) as tmp:
        work = Path(tmpdir)
        src = work / "model.onnx"
        shutil.copyfile(fp32, src)
        if cfg.recipe == "float":
            convert_float(src, tmp, hp_dtype, head.decode)
        else:
            cal = runs.require_passed(run_dir, "calibrate")
            data = _calibration_array(run_dir / cal["array"])
            n_images = int(data.shape[0])
            kept = head.kept_float + stem if cfg.recipe == "mixed" else ()
            exclude = [re.escape(n) + "$" for n in kept] + cfg.extra_exclude()
            from .candidates import Search

            search = Search(cfg, run_dir, exp, src, work, data, exclude, list(kept), hp_dtype, target)
            best = search.run()
            candidates, chosen = search.rows, search.chosen
            quantizer, method = best["quantizer"], best["calibration"]
            shutil.copyfile(work / best["final"], tmp)  # the very bytes that were scored
            w8 = best["weights_int8"]
        ops, quantized = inspect_qdq(tmp)
        check_recipe(cfg.recipe, ops, quantized, head, out, stem)
    result = QuantizeResult(
        status="passed", onnx=f"{STAGE}/{out.name}", onnx_sha256=runs.sha256(out), onnx_bytes=out.stat().st_size,
        fp32_bytes=fp32.stat().st_size, target=target, recipe=cfg.recipe, calibration_method=method,
        high_precision_dtype=hp_dtype, calibration_images=n_images, op_counts=dict(ops.most_common()),
        quantized_nodes=quantized, head_nodes=list(head.kept_float) if cfg.recipe == "mixed" else [], stem_nodes=list(stem),
        quantizer=quantizer, candidates=candidates, chosen=chosen, weights_int8=w8,
        size_ratio=round(out.stat().st_size / fp32.stat().st_size, 4), seconds=round(t.seconds, 2),
    )
    runs.write_result(run_dir, STAGE, result)
    return result


def _calibration_array(path: Path) -> np.ndarray:
    """Return the memory-mapped calibration array, refusing an empty or missing one (ModelOpt would use noise)."""
    if not path.is_file():
        raise QuantizeError(f"{path}: no calibration array; run the calibrate stage first (random data is refused)")
    data = np.load(path, mmap_mode="r")
    if data.ndim != 4 or data.shape[0] == 0:
        raise QuantizeError(f"{path}: calibration array has shape {data.shape}; expected (N>0, 3, H, W) real images")
    return data  # uint8 from the shared cache (or float32): every consumer converts one batch at a time


def modelopt_quantize(src: Path, dst: Path, data: np.ndarray, exp: dict, method: str, hp_dtype: str, *,
                      exclude: list[str] | None = None, include: list[str] | None = None,
                      cache: Path | None = None) -> None:
    """INT8 PTQ of src into dst with ModelOpt; node lists are regexes; a calibration cache fixes the scales."""
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
        _modelopt(quantize, src_copy, dst, data, exp, method, "fp32" if decode else hp_dtype, shape, exclude, include,
                  cache)
    finally:
        private.cleanup()
    if decode:
        to_fp16(dst, dst, decode)
    if hp_dtype == "fp32":  # a CPU target: OpenVINO and ONNX Runtime must score it alike on every x86 ISA
        scales.overflow_fix(dst, exp["input_name"])
    copy_metadata(src, dst)


def decode_nodes(src: Path, exp: dict) -> list[str]:
    """Return the head's decode nodes (after the output convs and DFL): box coordinates in pixels, kept FP32."""
    import onnx

    return list(find_head(onnx.load(str(src), load_external_data=False).graph, int(exp["head_index"])).decode)


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


def _modelopt(quantize, src, dst, data, exp, method, hp_dtype, shape, exclude, include, cache) -> None:
    quantize(
        str(src), quantize_mode="int8", calibration_data=data, calibration_method=method,
        calibration_eps=["cpu"],  # ORT-CUDA calibration crashes for many users; CPU is exact and enough
        calibration_shapes=f"{exp['input_name']}:{'x'.join(map(str, shape))}",
        calibration_cache_path=str(cache) if cache else None,
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
