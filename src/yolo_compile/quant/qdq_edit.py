"""Turn float convs of a Q/DQ model INT8 by a graph edit: no second quantizer run for a point of the speed space.

The stem conv reads the image, whose values are k/255: an unsigned 8-bit Q/DQ with scale 1/255 and zero point 0
represents it exactly, so making the stem INT8 needs no calibration at all. The head's output convs read a SiLU
output, whose range is [-0.2785, max]: the max comes from one statistics pass (`scales.collect`). Weights are
per-output-channel symmetric INT8 stored as int8 behind DequantizeLinear (what `weights.int8_weights` writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SILU_MIN = -0.2784645  # min of x * sigmoid(x), at x = -1.2785


def uint8_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Return (scale, zero point) of an asymmetric uint8 grid covering [min(lo, 0), max(hi, 0)] with 0 exact."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 or 1.0
    return float(scale), int(np.clip(round(-lo / scale), 0, 255))


def int8_convs(src: Path, dst: Path, convs: dict[str, tuple[float, float]], seven_bit: tuple[str, ...] = ()) -> list[str]:
    """Write dst: src with each named conv's input activation (range lo..hi) and weight quantized; return those done.

    A conv whose input already comes from a DequantizeLinear keeps that one (only its weight is added). The convs
    in seven_bit (those reading the image: its u8 values span the whole range) get weights in [-64, 64], the
    first-layer overflow fix `weights.overflow_fix` applies to ModelOpt files: CPUs without VNNI sum u8 x s8
    pairs into 16 bits (`vpmaddubsw`) and saturate with full 8-bit weights.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    init = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    nodes = {n.name: n for n in g.node}
    done, new_nodes = [], []
    for name, (lo, hi) in convs.items():
        conv = nodes.get(name)
        if conv is None or conv.op_type != "Conv":
            continue
        x = conv.input[0]
        if x not in producer or producer[x].op_type != "DequantizeLinear":
            scale, zp = uint8_qparams(lo, hi)
            s, z = f"{name}/act_scale", f"{name}/act_zp"
            g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s),
                                  numpy_helper.from_array(np.array(zp, np.uint8), z)])
            q, dq = f"{name}/act_q", f"{name}/act_dq"
            new_nodes.append((conv, [helper.make_node("QuantizeLinear", [x, s, z], [q], name=f"{name}/QuantizeLinear_act"),
                                     helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{name}/DequantizeLinear_act")]))
            conv.input[0] = dq
        w = conv.input[1]
        if w in init:
            arr = numpy_helper.to_array(init[w]).astype(np.float32)
            top = 64 if name in seven_bit else 127
            ws = np.maximum(np.abs(arr).reshape(arr.shape[0], -1).max(1), 1e-12) / top
            wq = np.clip(np.round(arr / ws.reshape(-1, *[1] * (arr.ndim - 1))), -top, top).astype(np.int8)
            qn, sn, zn, out = f"{name}/w_int8", f"{name}/w_scale", f"{name}/w_zp", f"{name}/w_dq"
            g.initializer.extend([numpy_helper.from_array(wq, qn), numpy_helper.from_array(ws.astype(np.float32), sn),
                                  numpy_helper.from_array(np.zeros(arr.shape[0], np.int8), zn)])
            new_nodes.append((conv, [helper.make_node("DequantizeLinear", [qn, sn, zn], [out], axis=0,
                                                      name=f"{name}/DequantizeLinear_w")]))
            conv.input[1] = out
        done.append(name)
    order = list(g.node)
    for conv, extra in new_nodes:  # before their conv: the graph stays topologically sorted
        i = order.index(conv)
        order[i:i] = extra
    del g.node[:]
    g.node.extend(order)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return done


def asymmetric_proxy(src: Path, dst: Path) -> int:
    """Write dst: src with every activation zero point of 0 moved to 1 (uint8) or -1 (int8); return how many.

    The file computes nearly the same function and, for a CPU runtime, runs the asymmetric-activation kernels: a
    speed proxy of the mixed preset built from the performance preset, timed but never scored nor shipped.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) == 3]
    q_out = {n.output[0] for n in qs}
    acts = {n.input[2] for n in qs} | {n.input[2] for n in model.graph.node
                                       if n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[0] in q_out}
    changed = 0
    for init in model.graph.initializer:
        if init.name in acts:
            zp = numpy_helper.to_array(init)
            if zp.ndim == 0 and int(zp) == 0 and zp.dtype in (np.int8, np.uint8):
                init.CopyFrom(numpy_helper.from_array(np.array(-1 if zp.dtype == np.int8 else 1, zp.dtype), init.name))
                changed += 1
    onnx.save(model, str(dst))
    return changed
