"""Q/DQ weights as they ship: INT8 initializers behind DequantizeLinear, and the first layer's 7-bit overflow fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def overflow_fix(path: str | Path, input_name: str) -> list[str]:
    """Store the weights of INT8 convolutions that read the network input in 7 bits; return those convolutions.

    CPUs without VNNI (AVX2 only) multiply u8 activations by s8 weights with `vpmaddubsw`, which sums two
    products into 16 bits and saturates. The image input spans the whole u8 range, so a first conv with full
    8-bit weights overflows: measured on the reference detector all-INT8 (ModelOpt, max, 64 labeled images),
    OpenVINO under ONEDNN_MAX_CPU_ISA=AVX2 scored 0.251 mAP50-95 against 0.885 on ONNX Runtime; with this fix
    0.890 and 0.888. Halving that conv's weight range (NNCF's first-layer overflow fix) keeps every pair under
    2 x 255 x 64 < 2^15. Done on every machine, VNNI or not, so the file a CPU compile ships does not depend on the
    compiling CPU. The weight scale is doubled on the weight's QuantizeLinear and DequantizeLinear; the weights
    stay float until `int8_weights` folds them, then land in [-64, 64].
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def through_qdq(tensor: str) -> str:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return ""
        q = producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else ""

    fixed = []
    for conv in graph.node:
        if conv.op_type != "Conv" or through_qdq(conv.input[0]) != input_name:
            continue
        dq = producer.get(conv.input[1])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in init:
            continue
        for node in (q, dq):  # a scale of its own, doubled (a shared initializer is copied, not changed in place)
            old = numpy_helper.to_array(init[node.input[1]])
            name = f"{node.input[1]}_7bit"
            if name not in init:
                init[name] = numpy_helper.from_array((old * 2).astype(old.dtype), name)
                graph.initializer.append(init[name])
            node.input[1] = name
        fixed.append(conv.name)
    if fixed:
        used = {i for n in graph.node for i in n.input}
        alive = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(alive)
        onnx.save(model, str(path))
    return fixed


def int8_weights(src: str | Path, dst: str | Path) -> dict:
    """Fold each constant weight's QuantizeLinear into an INT8 initializer read by DequantizeLinear only.

    The same arithmetic as the Q node (round half to even, saturate), so outputs are unchanged; the file
    shrinks about 4x. Works on ModelOpt and NNCF Q/DQ graphs alike. Returns counts and sizes.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    keep, folded, new_inits = [], 0, []
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in init and n.input[1] in init:
            w = numpy_helper.to_array(init[n.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(init[n.input[1]]).astype(np.float32)
            zp = numpy_helper.to_array(init[n.input[2]]) if len(n.input) > 2 and n.input[2] else np.zeros((), np.int8)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * w.ndim
                shape[axis] = -1
                scale, zpb = scale.reshape(shape), zp.reshape(shape)
            else:
                zpb = zp
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(w / scale) + zpb.astype(np.float32), info.min, info.max).astype(zp.dtype)
            new_inits.append(numpy_helper.from_array(q, n.output[0]))
            folded += 1
            continue
        keep.append(n)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        alive = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(alive)
    onnx.save(model, str(dst))
    return {"weights_int8": folded, "bytes": Path(dst).stat().st_size}
