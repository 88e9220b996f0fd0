"""The Ultralytics ONNX graph as quantization sees it: the head's nodes by role, the stem, and Q/DQ inspection.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from yolo_compile.errors import QuantizeError


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
                 stem: tuple[str, ...] = (), allowed: set[str] | frozenset = frozenset()) -> None:
    """Raise QuantizeError when the quantized graph does not match its recipe (allowed: nodes a chosen variant made
    INT8 on purpose, e.g. the head's output convs; never the DFL or the decode)."""
    if recipe == "float":
        if ops.get("QuantizeLinear"):
            raise QuantizeError(f"{path}: the float recipe produced {ops['QuantizeLinear']} QuantizeLinear nodes")
        return
    if not ops.get("QuantizeLinear") or not ops.get("DequantizeLinear"):
        raise QuantizeError(f"{path}: ModelOpt inserted no Q/DQ nodes; nothing was quantized to INT8")
    if recipe == "mixed":
        leaked = sorted(set(quantized) & (set(head.kept_float + stem) - (set(allowed) - set(head.dfl + head.decode))))
        if leaked:
            raise QuantizeError(f"{path}: head or stem nodes were quantized despite the mixed recipe: {', '.join(leaked[:5])}")


def decode_nodes(src: Path, exp: dict) -> list[str]:
    """Return the head's decode nodes (after the output convs and DFL): box coordinates in pixels, kept FP32."""
    import onnx

    return list(find_head(onnx.load(str(src), load_external_data=False).graph, int(exp["head_index"])).decode)


# Activations fuse into the INT8 layer before them; data movement keeps its input's precision.
_FOLLOW_INPUT = {"Sigmoid", "Mul", "Relu", "LeakyRelu", "HardSwish", "HardSigmoid", "Clip", "Add", "Split", "Concat",
                 "MaxPool", "Resize", "Reshape", "Transpose", "Slice"}


def onnx_layer_precisions(onnx_path: Path, head_index: int | None) -> list[dict]:
    """Return [{name, op, precision, head}] for each compute node in graph order, read from the Q/DQ placement.

    INT8: a node fed by a DequantizeLinear, or an activation or data-movement node whose inputs all come
    from INT8 layers (the SiLU after an INT8 conv fuses into it on TensorRT and OpenVINO); FP16: a node computing on float16
    tensors; FP32 otherwise. Q/DQ, Cast, Constant and Identity nodes are plumbing, not layers.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    elem = {t.name: t.data_type for t in graph.initializer}
    elem.update({v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]})
    producer: dict[str, str] = {}
    int8_out: set[str] = set()
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    head = f"/model.{head_index}/" if head_index is not None else None
    layers = []
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Cast":
            out_type = next((a.i for a in node.attribute if a.name == "to"), None)
        elif node.op_type == "DequantizeLinear":
            out_type = elem.get(ins[1]) if len(ins) > 1 else None
        else:
            out_type = next((elem[i] for i in ins if elem.get(i) in floats), None)
        for o in node.output:
            producer[o] = node.op_type
            if out_type is not None:
                elem.setdefault(o, out_type)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Identity"):
            continue
        computed = [i for i in ins if i in producer and producer[i] != "Constant"]
        if any(producer.get(i) == "DequantizeLinear" for i in ins) or (
                node.op_type in _FOLLOW_INPUT and computed and all(i in int8_out for i in computed)):
            precision = "INT8"
            int8_out.update(node.output)
        elif any(elem.get(t) == onnx.TensorProto.FLOAT16 for t in [*ins, *node.output]):
            precision = "FP16"
        else:
            precision = "FP32"
        layers.append({"name": node.name or node.output[0], "op": node.op_type, "precision": precision,
                       "head": bool(head and (node.name or "").startswith(head))})
    return layers
