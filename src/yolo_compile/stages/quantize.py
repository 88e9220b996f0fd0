"""Stage 3: ModelOpt ONNX PTQ -> Q/DQ ONNX: INT8 backbone and neck, the detection head kept in float."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolo_compile import fileio, runs
from yolo_compile.config import check_choice, path_field
from yolo_compile.runtimes.registry import resolve_target
from yolo_compile.errors import QuantizeError
from yolo_compile.quant.graph import check_recipe, find_head, find_stem, inspect_qdq
from yolo_compile.quant.modelopt import convert_float

log = logging.getLogger(__name__)
STAGE = "quantize"
RECIPES = ("mixed", "int8", "float")
CALIBRATION_METHODS = ("auto", "entropy", "max", "percentile")  # the calibration_method parameter (scales.METHODS: the scales)
QUANTIZERS = ("auto", "modelopt", "nncf")
OBJECTIVES = ("latency", "accuracy")


@dataclass(frozen=True)
class QuantizeConfig:
    target: str = "auto"  # tensorrt | cpu | auto: the head's float type follows it (FP16 for TensorRT, FP32 for CPU)
    recipe: str = "mixed"  # mixed: INT8 with float head and stem conv; int8: all INT8; float: no INT8 (the baseline)
    calibration_method: str = "auto"  # auto (measure NNCF on CPU, then max, entropy, percentile; keep the best) | entropy | max | percentile
    quantizer: str = "auto"  # auto (CPU targets: NNCF then ModelOpt, measured on OpenVINO; TensorRT: ModelOpt) | modelopt | nncf
    keep_float: str = path_field("", kind="json")  # more nodes kept float: a compare/nodes_to_exclude.json from a recipe search, or regexes
    data: str = path_field("")  # labeled split (Ultralytics data.yaml) scoring the candidates by mAP drop; empty: label-free
    eval_dir: str = path_field("")  # held-out images for the label-free score when data is empty
    score_images: int = 0  # how many labeled (or held-out) images score a candidate; 0 means all
    accept_drop: float = 0.3  # the bar (mAP50-95 drop, points): latency takes the fastest within it, accuracy the first; 0 scores all, smallest drop wins
    objective: str = "latency"  # latency: fastest candidate within accept_drop (timed on the runtime that ships) | accuracy: first within it
    deploy_batch: int = 1  # the batch the engine serves: candidates are timed (and chosen) at it, and at batch 1 when larger
    search_budget: int = 10  # auto, none within accept_drop: most recipes (float groups x per-group calibration) the search scores
    search_floats: int = 2  # most layer groups the recipe search keeps float beyond the head and stem (each costs speed)

    def __post_init__(self) -> None:
        check_choice("recipe", self.recipe, RECIPES)
        check_choice("calibration_method", self.calibration_method, CALIBRATION_METHODS)
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        check_choice("objective", self.objective, OBJECTIVES)
        if self.search_budget < 0 or self.search_floats < 0:
            raise QuantizeError(f"parameters 'search_budget' = {self.search_budget}, 'search_floats' = {self.search_floats}: "
                                "give counts >= 0 (search_budget=0 turns the recipe search off)")
        if self.deploy_batch < 1:
            raise QuantizeError(f"parameter 'deploy_batch' = {self.deploy_batch}: give the batch the engine serves, >= 1")
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
    objective: str = "accuracy"  # the rule that chose (latency falls back to accuracy where nothing can be timed)
    pareto: list = field(default_factory=list)  # drop vs images/s: FP32 and every timed candidate, with noise, chosen, why
    seconds: float = 0.0


def run(cfg: QuantizeConfig, run_dir: str | Path) -> QuantizeResult:
    """Quantize run_dir/export/model.onnx into run_dir/quantize/model.quant.onnx, choosing by measurement.

    The FP32 model is copied into a temporary folder first: no quantizer writes next to an earlier stage's file.
    """
    import onnx

    exp = runs.require_passed(run_dir, "export")
    run_dir = Path(run_dir)
    fp32 = run_dir / exp["onnx"]
    target = resolve_target(cfg.target)
    fixed = exp["input_shape"][0]
    if isinstance(fixed, int) and fixed != cfg.deploy_batch:
        raise QuantizeError(f"{fp32}: deploy_batch={cfg.deploy_batch} but the exported model's batch is fixed at "
                            f"{fixed}; export with dynamic_batch=true, or set deploy_batch={fixed}")
    hp_dtype = "fp16" if target == "tensorrt" else "fp32"
    graph = onnx.load(str(fp32), load_external_data=False).graph
    head = find_head(graph, int(exp["head_index"]))
    # Measured on the reference detector: INT8 on the stem conv alone costs ~0.8 mAP50-95 points with an FP16
    # head (1.29 -> 0.47 when kept float), the second most sensitive group after the DFL; it is 1 conv of 64.
    stem = find_stem(graph, exp["input_name"]) if cfg.recipe == "mixed" else ()
    out = runs.stage_dir(run_dir, STAGE) / "model.quant.onnx"
    n_images, candidates, chosen, quantizer, method, w8, pareto, allowed = 0, [], {}, "none", "none", 0, [], set()
    with runs.Timer() as t, tempfile.TemporaryDirectory(prefix="yolo-quantize-") as tmpdir, fileio.atomic_path(out) as tmp:
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
            from yolo_compile.quant.candidates import Search

            groups = {"stem": stem, "out_convs": head.output_convs if cfg.recipe == "mixed" else ()}
            search = Search(cfg, run_dir, exp, src, work, data, exclude, list(kept), hp_dtype, target, groups)
            best = search.run()
            candidates, chosen = search.rows, search.chosen
            quantizer, method = best["quantizer"], best["calibration"]
            shutil.copyfile(work / best["final"], tmp)  # the very bytes that were scored
            w8 = best["weights_int8"]
            allowed = {n for g in best.get("int8_groups", ()) for n in groups.get(g, ())}  # INT8 by the chosen variant
            pareto = search.pareto
        ops, quantized = inspect_qdq(tmp)
        check_recipe(cfg.recipe, ops, quantized, head, out, tuple(n for n in stem if n not in allowed), allowed)
    result = QuantizeResult(
        status="passed", onnx=f"{STAGE}/{out.name}", onnx_sha256=fileio.sha256(out), onnx_bytes=out.stat().st_size,
        fp32_bytes=fp32.stat().st_size, target=target, recipe=cfg.recipe, calibration_method=method,
        high_precision_dtype=hp_dtype, calibration_images=n_images, op_counts=dict(ops.most_common()),
        quantized_nodes=quantized, head_nodes=list(head.kept_float) if cfg.recipe == "mixed" else [], stem_nodes=list(stem),
        quantizer=quantizer, candidates=candidates, chosen=chosen, weights_int8=w8, pareto=pareto,
        objective=chosen.get("objective", "accuracy"),
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


