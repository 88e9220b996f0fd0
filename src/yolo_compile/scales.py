"""Activation scales computed once: one pass over the calibration images, scales for every method from it.

A quantizer's own calibration (ModelOpt, ONNX Runtime) re-runs the model for every method and every
variant. Here the FP32 model runs once with the quantized activation tensors exposed as outputs; each
tensor keeps its |x| maximum and a 2048-bin histogram of |x|. Scales for max, TensorRT's entropy (KL)
and percentile clipping all derive from those, and are written straight into the scale initializers of a
Q/DQ template (any ModelOpt Q/DQ graph of the same FP32 model), so a candidate costs a graph edit.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images

log = logging.getLogger(__name__)
BINS = 2048  # TensorRT's entropy calibrator histogram size
SAMPLE = 1 << 18  # values per tensor and batch that enter the histogram (the maximum always sees all)
METHODS = ("max", "entropy", "percentile-99.99", "percentile-99.999")
_CAST = re.compile(r"_cast_to_(fp16|bf16)$")


def activation_qdq(qdq_path: str | Path) -> dict[str, str]:
    """Return {activation tensor: scale initializer} for every QuantizeLinear on a non-constant tensor."""
    import onnx

    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    return {n.input[0]: n.input[1] for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in init and n.input[1] in init}


def source_name(tensor: str) -> str:
    """Return the FP32 graph's name of a tensor (an FP16 graph quantizes the cast copy of an FP32 input)."""
    return _CAST.sub("", tensor)


@dataclass
class ActivationStats:
    """Per tensor: |x| maximum and a histogram of |x| over [0, top] in BINS bins, from one calibration pass."""

    amax: dict[str, float]
    top: dict[str, float]
    hist: dict[str, np.ndarray]
    images: int
    fixed: dict = field(default_factory=dict)  # tensors whose range the quantizer fixes (Softmax output: 0..1)

    def save(self, path: Path) -> None:
        """Write the statistics as one .npz (a few MB: reusable by the study and by later runs)."""
        from .runs import atomic_path

        names = sorted(self.amax)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, names=np.array(names), amax=np.array([self.amax[n] for n in names]),
                     top=np.array([self.top[n] for n in names]), hist=np.stack([self.hist[n] for n in names]),
                     images=self.images, fixed_names=np.array(sorted(self.fixed), dtype=str),
                     fixed=np.array([self.fixed[n] for n in sorted(self.fixed)], dtype=np.float64))

    @classmethod
    def load(cls, path: Path) -> ActivationStats:
        z = np.load(path)
        names = [str(n) for n in z["names"]]
        fixed = dict(zip([str(n) for n in z["fixed_names"]], map(float, z["fixed"]))) if "fixed" in z else {}
        return cls(dict(zip(names, map(float, z["amax"]))), dict(zip(names, map(float, z["top"]))),
                   dict(zip(names, z["hist"])), int(z["images"]), fixed)


def collect(fp32_path: str | Path, tensors: list[str], array: np.ndarray, batch: int = 4,
            desc: str = "activation statistics") -> ActivationStats:
    """Run the FP32 model once over array (uint8 or float) with `tensors` exposed; return their statistics."""
    import onnx
    import onnxruntime as ort
    from tqdm.auto import tqdm

    model = onnx.load(str(fp32_path))
    inputs = [i.name for i in model.graph.input]
    known = {o.name for o in model.graph.output}
    wanted = [t for t in dict.fromkeys(source_name(t) for t in tensors)]
    for t in wanted:
        if t not in known and t not in inputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    del model
    fixed = sess.get_inputs()[0].shape[0]
    batch = fixed if isinstance(fixed, int) else batch
    outs = [o.name for o in sess.get_outputs()]
    amax: dict[str, float] = {t: 0.0 for t in wanted}
    top: dict[str, float] = {}
    hist: dict[str, np.ndarray] = {t: np.zeros(BINS, np.int64) for t in wanted}
    for i in tqdm(range(0, len(array), batch), desc=desc, unit="batch"):
        x = images.to_float(array[i:i + batch])
        values = dict(zip(outs, sess.run(None, {inputs[0]: x})))
        values[inputs[0]] = x
        for t in wanted:
            v = values[t].ravel()
            m = max(float(v.max()), -float(v.min())) if v.size else 0.0
            amax[t] = max(amax[t], m)
            if m <= 0:
                continue
            if t not in top:
                top[t] = m
            while m > top[t]:  # double the range, merging bin pairs: earlier counts keep their place
                hist[t] = hist[t].reshape(-1, 2).sum(1)
                hist[t] = np.concatenate([hist[t], np.zeros(BINS // 2, np.int64)])
                top[t] *= 2
            if v.size > SAMPLE:  # a strided sample keeps the histogram's shape at a fraction of the cost
                v = v[:: v.size // SAMPLE]
            v = np.abs(v)
            idx = np.minimum((v * (BINS / top[t])).astype(np.int32), BINS - 1)
            hist[t] += np.bincount(idx, minlength=BINS)
    for t in wanted:
        top.setdefault(t, 0.0)
    # ONNX Runtime's Q/DQ quantizer (under ModelOpt) gives a Softmax output the fixed range 0..1, whatever it saw
    softmax = {o for n in onnx.load(str(fp32_path), load_external_data=False).graph.node if n.op_type == "Softmax"
               for o in n.output}
    return ActivationStats(amax, top, hist, int(len(array)), {t: 1.0 for t in wanted if t in softmax})


def shared_groups(fp32_path: str | Path, qdq_path: str | Path) -> list[list[str]]:
    """Return the activation tensors that share one scale in ModelOpt's Q/DQ graph (its concat elimination).

    ModelOpt calibrates each such group as one tensor (TensorRT then drops the DQ-Q pairs around Concat);
    the group is asked from ModelOpt itself, for the nodes that the template quantized.
    """
    import onnx
    from modelopt.onnx.quantization.graph_utils import get_concat_eliminated_tensors

    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    quantized = [n.name for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                 and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    groups = get_concat_eliminated_tensors(onnx.load(str(fp32_path)), quantized) or {}
    unique = {tuple(sorted(g)) for g in groups.values() if len(g) > 1}
    return [list(g) for g in sorted(unique)]


def merged(stats: ActivationStats, groups: list[list[str]]) -> ActivationStats:
    """Return stats where each group's tensors carry the statistics of all its members' values together."""
    amax, top, hist = dict(stats.amax), dict(stats.top), dict(stats.hist)
    for g in groups:
        g = [t for t in g if t in stats.amax]
        if not g:
            continue
        hi = max(stats.top[t] for t in g)
        edges = np.linspace(0, hi, BINS + 1)
        total = np.zeros(BINS)
        for t in g:
            if stats.top[t] <= 0:
                continue
            cum = np.concatenate([[0], np.cumsum(stats.hist[t])]).astype(np.float64)
            total += np.diff(np.interp(edges, np.linspace(0, stats.top[t], BINS + 1), cum))
        for t in g:
            amax[t], top[t], hist[t] = max(stats.amax[m] for m in g), hi, np.rint(total).astype(np.int64)
    return ActivationStats(amax, top, hist, stats.images, dict(stats.fixed))


def thresholds(stats: ActivationStats, method: str) -> dict[str, float]:
    """Return {tensor: clipping threshold (amax)} for one method (merge shared groups first)."""
    if method == "max":
        return {**stats.amax, **stats.fixed}
    out = {}
    for t, h in stats.hist.items():
        if stats.amax[t] <= 0 or h.sum() == 0:
            out[t] = stats.amax[t]
            continue
        width = stats.top[t] / BINS
        if method.startswith("percentile-"):
            q = float(method.split("-", 1)[1]) / 100
            k = int(np.searchsorted(np.cumsum(h) / h.sum(), q)) + 1
            out[t] = min(k * width, stats.amax[t])
        elif method == "entropy":
            out[t] = min(entropy_bin(h) * width, stats.amax[t])
        else:
            raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    return {**out, **stats.fixed}


def entropy_bin(hist: np.ndarray, quant_bins: int = 128, step: int = 16) -> int:
    """Return the bin count i minimising KL(P_i || Q_i), TensorRT's entropy calibration on a histogram of |x|."""
    hist = hist.astype(np.float64)
    last = int(np.flatnonzero(hist)[-1]) + 1
    if last <= quant_bins:
        return last
    best, best_i = np.inf, last
    for i in list(range(quant_bins, last, step)) + [last]:
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers are clipped into the last bin
        nonzero = p > 0
        # Q: the first i bins merged into quant_bins levels, spread back evenly over each level's non-empty bins
        edges = np.linspace(0, i, quant_bins + 1).astype(np.int64)
        level = np.repeat(np.arange(quant_bins), np.diff(edges))
        sums = np.bincount(level, weights=hist[:i], minlength=quant_bins)
        counts = np.bincount(level, weights=nonzero, minlength=quant_bins)
        q = np.where(nonzero, sums[level] / np.maximum(counts[level], 1), 0.0)
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-12)
        m = nonzero & (qs > 0)
        if (nonzero & ~m).any():
            kl = np.inf  # P has mass where Q has none
        else:
            kl = float(np.sum(ps[m] * np.log(ps[m] / qs[m])))
        if kl < best:
            best, best_i = kl, i
    return best_i


def apply(template: str | Path, amax: dict[str, float], dst: str | Path, only: set[str] | None = None) -> int:
    """Write template with its activation scales set to amax/127 (symmetric INT8); return how many were set.

    `only` limits the change to those tensors (a per-group mix starts from a template already holding the
    other method's scales). Raises KeyError naming a quantized tensor that has no statistics.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(template))
    init = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    done = set()
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in init or n.input[1] not in init:
            continue
        src = source_name(n.input[0])
        if only is not None and src not in only:
            continue
        if src not in amax:
            raise KeyError(f"no activation statistics for quantized tensor {src!r}")
        if n.input[1] in done:
            continue
        # The Q node's scale and those of the DequantizeLinear nodes reading its output: ModelOpt's FP32 graphs
        # share one initializer, its FP16 graphs (TensorRT target) give Q and DQ each their own. Setting only Q's
        # dequantized with the template's one-image scale: measured, 94.6 mAP points lost instead of 0.46.
        names = [n.input[1]] + [d.input[1] for d in consumers.get(n.output[0], [])
                                if d.op_type == "DequantizeLinear" and len(d.input) > 1 and d.input[1] in init]
        for name in dict.fromkeys(names):
            old = init[name]
            dtype = numpy_helper.to_array(old).dtype
            scale = np.asarray(max(amax[src], 1e-8) / 127.0, dtype=dtype).reshape(numpy_helper.to_array(old).shape)
            old.CopyFrom(numpy_helper.from_array(scale, old.name))
        done.add(n.input[1])
    onnx.save(model, str(dst))
    return len(done)


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


def clip_error(stats: ActivationStats, amax: dict[str, float]) -> dict[str, float]:
    """Return {tensor: expected squared INT8 error / mean square} at each threshold, read from the histograms.

    Values above the threshold are clipped to it; those below are rounded to a step of amax/127 (uniform error,
    step^2/12). A cheap prior for which tensor a calibration change helps most; no model runs.
    """
    out = {}
    for t, h in stats.hist.items():
        total = h.sum()
        if t not in amax or total == 0 or stats.top[t] <= 0:
            continue
        centres = (np.arange(BINS) + 0.5) * (stats.top[t] / BINS)
        power = float((h * centres ** 2).sum()) / total
        thr = max(amax[t], 1e-12)
        over = centres > thr
        clipped = float((h[over] * (centres[over] - thr) ** 2).sum()) / total
        rounding = (thr / 127) ** 2 / 12 * float(h[~over].sum()) / total
        out[t] = (clipped + rounding) / max(power, 1e-30)
    return out
