"""What QAT follows in a compile run, and the commands around it: no torch here.

`placement` maps the quantize stage's ONNX recipe (which nodes became INT8) onto torch module names; the
command builders give the `yolo-compile qat` line a failed gate prints and the `yolo-compile run` line that
compiles the fine-tuned checkpoint with the run's own recipe, images and calibration.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from yolo_compile import runs
from yolo_compile.errors import CompileError


@dataclass
class Placement:
    """Where the torch model is fake-quantized, read from the ONNX recipe."""

    int8: list  # torch modules whose input and weight quantizers stay on (their ONNX node is INT8)
    float: list  # torch modules kept float: their ONNX nodes are float in the recipe (head, stem, keep_float)
    onnx_only: list  # INT8 ONNX nodes no torch module quantizes (Add, Concat, Resize inputs): not simulated
    unmatched: list  # torch quantizable modules with no ONNX node: kept float


def module_of(node: str) -> str:
    """Return the torch module path of an Ultralytics ONNX node: '/model.22/cv2.0/cv2.0.2/Conv' -> 'model.22.cv2.0.2'.

    torch.onnx names a node by its module scopes; a container's child repeats the parent's path (cv2.0, cv2.0.2)
    and a module called twice gets a '_<n>' suffix (SPPF's m, m_1, m_2): both fold back to one module path.
    """
    parts: list[str] = []
    for part in node.strip("/").split("/")[:-1]:
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


def placement(onnx_nodes: dict[str, str], quantized: list[str], modules: list[str]) -> Placement:
    """Map the ONNX recipe (all node names -> op types, the INT8 ones) onto torch's quantizable module names."""
    known = set(modules)

    def torch_name(node: str) -> str | None:
        name = module_of(node)
        if name in known:
            return name
        bare = re.sub(r"_\d+$", "", name)  # the second and third call of one module
        return bare if bare in known else None

    int8 = {torch_name(n) for n in quantized} - {None}
    onnx_only = sorted(n for n in quantized if torch_name(n) is None)
    seen = {torch_name(n) for n in onnx_nodes} - {None}
    return Placement(int8=sorted(int8), float=sorted(known & seen - int8), onnx_only=onnx_only,
                     unmatched=sorted(known - seen))


def onnx_nodes(path: Path) -> dict[str, str]:
    """Return every node of an ONNX file: name -> op type."""
    import onnx

    return {n.name: n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def compile_command(run_dir: str | Path, checkpoint: str | Path, calibration: str = "") -> str:
    """Return the `yolo-compile run` line that compiles checkpoint with the run's recipe, images and calibration.

    calibration: the method QAT trained under (default: the run's own).
    """
    manifest = runs.read_manifest(Path(run_dir))
    p = manifest.get("parameters", {})
    quant = runs.read_result(Path(run_dir), "quantize")
    wf, path = manifest.get("workflow", "default"), Path(manifest.get("workflow_path", ""))
    if path.name and not (path.parent.name == "workflows" and path.stem == wf):  # not a built-in: name its file
        wf = str(path)
    parts = ["yolo-compile", "run", wf, "--model", str(checkpoint)]
    for flag, key in (("--calib", "calib_dir"), ("--eval", "eval_dir")):
        if p.get(key):
            parts += [flag, str(p[key])]
    # the run's own parameters (recipe, target, gate, keep_float...), the calibration it measured, ModelOpt's Q/DQ;
    # trusted_models would refuse the new checkpoint
    skip = ("model", "calib_dir", "eval_dir", "trusted_models", "quantizer", "calibration_method")
    sets = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in p.items() if k not in skip}
    sets.update(quantizer="modelopt", calibration_method=_stage_method(calibration or quant.get("calibration_method", "max")))
    ref = reference_map(Path(run_dir))
    if ref:  # the gate judges the QAT checkpoint against the original model's mAP, not its own FP32
        sets["reference_map"] = round(float(ref), 4)
    parts += [x for k, v in sets.items() if v not in (None, "") for x in ("--set", f"{k}={v}")]
    return " ".join(shlex.quote(str(x)) for x in parts)


def _stage_method(name: str) -> str:
    """Return the quantize stage's calibration_method parameter that reproduces a scored calibration name."""
    return "percentile" if name.startswith("percentile") else name if name in ("max", "entropy") else "auto"


def qat_command(run_dir: str | Path, data: str = "") -> str:
    """Return the `yolo-compile qat` line for a run whose gate failed; its training split when data.yaml has one."""
    train = ""
    if data and Path(data).is_file():
        import yaml

        d = yaml.safe_load(Path(data).read_text()) or {}
        if d.get("train") and d.get("train") != d.get("val"):
            train = str(data)  # a train split apart from the gate's split: fine-tune on it
    return f"yolo-compile qat {shlex.quote(str(run_dir))} --data {shlex.quote(train) if train else 'TRAIN_DATA.yaml'}"


def reference_map(run_dir: Path) -> float | None:
    """Return the FP32 mAP50-95 the failed run's gate measured (None without its compare result)."""
    try:
        return (runs.read_result(run_dir, "compare").get("accuracy") or {}).get("fp32", {}).get("map50_95")
    except CompileError:
        return None


def next_step(run_dir: str | Path, data: str = "") -> str:
    """Return what the compare stage says when the recipe search found no passing recipe: the QAT command."""
    return ("post-training quantization could not pass the gate (no recipe the search tried is within map_drop_max): "
            "fine-tune with quantization in the loop on a CUDA GPU (ModelOpt fake-quant at this recipe's places, a few "
            f"epochs), then compile the new checkpoint: {qat_command(run_dir, data)}")
