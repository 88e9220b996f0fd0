"""Bytes a compiled ONNX graph moves: weights at each precision, and activations read and written per frame.

Precision comes from the graph itself: a weight that reaches its consumer through DequantizeLinear is INT8
in the engine (stored INT8 with ModelOpt's dq_only, or FP32 that TensorRT folds through Q/DQ); a tensor
between QuantizeLinear and DequantizeLinear is an INT8 activation; everything else has the element type
ONNX shape inference gives it (FP16 where the graph was converted, FP32 elsewhere).

Activations are counted as a fusing engine moves them: Q is folded into the op that produces its input
and DQ into the op that consumes its output, and Conv + Sigmoid + Mul (SiLU) is one kernel, so only the
tensors that cross between kernels round-trip memory. Each such tensor is written once by its producer
and read once by every consumer. Concat buffers, Split views and L2 reuse are not modelled: the figures
are what the graph implies, an upper bound for an engine that fuses more.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

QDQ = ("QuantizeLinear", "DequantizeLinear")
SHAPE_ONLY = ("Shape", "Size")  # read metadata, not data
_GROUP = re.compile(r"^/model\.(\d+)/")


def group_of(name: str) -> str:
    """Return the Ultralytics layer group of a node name ('model.<i>'), or 'other'."""
    m = _GROUP.match(name)
    return f"model.{m.group(1)}" if m else "other"


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def _constants(graph) -> dict:
    """Return {name: TensorProto} of the graph's initializers and Constant node values."""
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return out


@dataclass
class WeightBytes:
    """A graph's weights by role, with their bytes at FP32, FP16 and as compiled."""

    int8_elements: int = 0  # weights behind DequantizeLinear: INT8 in the engine
    float_elements: int = 0  # weights kept in float
    float_bytes_as_graph: int = 0  # those float weights at the graph's own element type (FP16 head on TensorRT)
    qparam_bytes: int = 0  # scales and zero points of every Q/DQ node
    stored_bytes: int = 0  # what the ONNX file stores for all of these
    tensors: int = 0

    @property
    def fp32_bytes(self) -> int:
        return 4 * (self.int8_elements + self.float_elements)

    @property
    def fp16_bytes(self) -> int:
        return 2 * (self.int8_elements + self.float_elements)

    @property
    def compiled_bytes(self) -> int:
        return self.int8_elements + self.float_bytes_as_graph + self.qparam_bytes

    def as_dict(self) -> dict:
        return {"tensors": self.tensors, "int8_elements": self.int8_elements, "float_elements": self.float_elements,
                "fp32_bytes": self.fp32_bytes, "fp16_bytes": self.fp16_bytes, "compiled_bytes": self.compiled_bytes,
                "qparam_bytes": self.qparam_bytes, "stored_bytes": self.stored_bytes}


def weight_bytes(model) -> WeightBytes:
    """Return the weights of an ONNX model (initializers and Constant values of float or INT8 type) by precision."""
    from onnx import TensorProto

    graph = model.graph
    consts = _constants(graph)
    consumers = defaultdict(list)
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers[name].append((n, i))
    producer = {o: n for n in graph.node for o in n.output}
    numeric = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
               TensorProto.UINT8)
    out = WeightBytes()
    for name, t in consts.items():
        elements = int(np.prod(t.dims)) if len(t.dims) else 1
        nbytes = elements * _itemsize(t.data_type)
        uses = consumers.get(name, [])
        if uses and all(n.op_type in QDQ and i > 0 for n, i in uses):
            out.qparam_bytes += nbytes
            out.stored_bytes += nbytes
            continue
        if t.data_type not in numeric or not uses:
            continue  # shapes, axes, split sizes: int64 bookkeeping, not weights
        out.tensors += 1
        out.stored_bytes += nbytes
        if any(_reaches_dq(n, i, consumers, producer) for n, i in uses):
            out.int8_elements += elements
        else:
            out.float_elements += elements
            out.float_bytes_as_graph += nbytes
    return out


def _reaches_dq(node, index: int, consumers: dict, producer: dict) -> bool:
    """True when a constant is input 0 of a DequantizeLinear, or of a QuantizeLinear that feeds one (fake-quant)."""
    if index != 0:
        return False
    if node.op_type == "DequantizeLinear":
        return True
    return node.op_type == "QuantizeLinear" and any(n.op_type == "DequantizeLinear" for n, _ in consumers[node.output[0]])


@dataclass
class Traffic:
    """Activation bytes one frame reads and writes, per layer group, under one precision rule."""

    precision: str  # compiled | fp32 | fp16
    groups: dict = field(default_factory=dict)  # group -> {read_bytes, written_bytes, int8_bytes_written}
    input_bytes: int = 0  # the graph input at its own type (counted apart: the input budget owns it)
    output_bytes: int = 0

    @property
    def read_bytes(self) -> int:
        return sum(g["read_bytes"] for g in self.groups.values())

    @property
    def written_bytes(self) -> int:
        return sum(g["written_bytes"] for g in self.groups.values())


def static_shapes(model, batch: int = 1):
    """Return (model with the batch axis set to batch and shapes inferred, {tensor: (elements, elem_type)})."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    for v in model.graph.output:  # the export clears the output's trailing dims: let inference fill them
        for d in v.type.tensor_type.shape.dim[1:]:
            if not d.HasField("dim_value"):
                d.Clear()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    info = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.HasField("shape") and all(d is not None for d in dims):
            info[v.name] = (int(np.prod(dims)) if dims else 1, tt.elem_type)
    return inferred, info


def activation_traffic(model, precision: str = "compiled", batch: int = 1, shapes=None) -> Traffic:
    """Return the activation bytes per frame read and written by each layer group of an ONNX model.

    precision: 'compiled' uses the graph's precisions (INT8 between Q and DQ); 'fp32' / 'fp16' price every
    activation at 4 / 2 bytes, the same graph run without INT8. shapes: static_shapes(model, batch), if at hand.
    """
    if precision not in ("compiled", "fp32", "fp16"):
        raise ValueError(f"precision {precision!r}: expected compiled, fp32 or fp16")
    model, info = shapes or static_shapes(model, batch)
    graph = model.graph
    consts = set(_constants(graph))
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:  # fake-quantized weights (constant -> Q -> DQ) are weights, not activations
        if n.op_type in QDQ and n.input[0] in consts:
            consts.add(n.output[0])
    consumers = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)
    silu = _silu_internal(graph, producer, consumers)
    graph_in = {v.name for v in graph.input}
    graph_out = {v.name for v in graph.output}
    missing = [o for n in graph.node if n.op_type not in QDQ for o in n.output if o and o not in info]
    if missing:
        raise ValueError(f"shape inference left {len(missing)} tensors without a static shape, e.g. {missing[:3]}")

    def nbytes(name: str) -> int:
        elements, elem_type = info[name]
        quantized = name in producer and producer[name].op_type == "QuantizeLinear"
        if precision == "compiled":
            size = 1 if quantized else _itemsize(elem_type)
        else:
            size = {"fp32": 4, "fp16": 2}[precision] if quantized or elem_type in _FLOATISH else _itemsize(elem_type)
        return elements * size // batch

    def materialised(name: str) -> bool:
        if name in consts or name in graph_in or not name:
            return False
        uses = consumers.get(name, [])
        if name in silu:
            return False
        return name in graph_out or not uses or not all(u.op_type == "QuantizeLinear" for u in uses)

    def source(name: str) -> str:
        while name in producer and producer[name].op_type == "DequantizeLinear":
            name = producer[name].input[0]
        return name

    traffic = Traffic(precision)
    empty = lambda: {"read_bytes": 0, "written_bytes": 0, "int8_bytes_written": 0}  # noqa: E731
    for n in graph.node:
        if n.op_type in ("Constant", "DequantizeLinear"):
            continue
        if n.op_type == "QuantizeLinear":
            group = group_of(producer[n.input[0]].name) if n.input[0] in producer else group_of(n.name)
        else:
            group = group_of(n.name)
        g = traffic.groups.setdefault(group, empty())
        if n.op_type not in ("QuantizeLinear",) + SHAPE_ONLY:
            for name in {source(i) for i in n.input if i}:
                if materialised(name) and name not in graph_out:
                    g["read_bytes"] += nbytes(name)
        for o in n.output:
            if o in graph_out:
                traffic.output_bytes += nbytes(o)
            elif materialised(o):
                b = nbytes(o)
                g["written_bytes"] += b
                if precision == "compiled" and n.op_type == "QuantizeLinear":
                    g["int8_bytes_written"] += b
    traffic.input_bytes = sum(nbytes(v) for v in graph_in if v in info)
    traffic.groups = dict(sorted(traffic.groups.items(), key=lambda kv: _group_key(kv[0])))
    return traffic


_FLOATISH = (1, 10, 16, 11)  # FLOAT, FLOAT16, BFLOAT16, DOUBLE


def _group_key(name: str) -> tuple:
    return (0, int(name.split(".")[1])) if name.startswith("model.") else (1, 0)


def _silu_internal(graph, producer: dict, consumers: dict) -> set:
    """Return the tensors that never leave a Conv + SiLU kernel: the conv's raw output and its sigmoid."""
    internal = set()
    for s in graph.node:
        if s.op_type != "Sigmoid":
            continue
        x = s.input[0]
        uses = consumers.get(s.output[0], [])
        if len(uses) != 1 or uses[0].op_type != "Mul" or set(uses[0].input) != {x, s.output[0]}:
            continue
        conv = producer.get(x)
        if conv is None or conv.op_type != "Conv" or {id(n) for n in consumers[x]} != {id(s), id(uses[0])}:
            continue
        internal |= {x, s.output[0]}  # the Mul writes the kernel's result and reads nothing that left it
    return internal
