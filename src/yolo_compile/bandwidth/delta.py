"""Feature delta encoding, measured: send the head's inputs (P3/P4/P5) as quantized frame-to-frame changes.

The features are the inputs of the Detect head's first convs (found in the graph), taken at the compiled
precision: quantized with the graph's own QuantizeLinear scale and zero point (a per-tensor symmetric INT8
scale from the first frame where the graph keeps them in float). On a conveyor sequence (`conveyor.py`):

* lossless: the INT8 delta (mod 256, one byte an element) between consecutive frames; its share of exact
  zeros and its zstd size against sending the full features (raw, and zstd-compressed);
* lossy: a dead zone drops changes of at most `t` quantization steps. Open loop (deltas against the
  sender's own previous frame) drifts until the next keyframe; closed loop (deltas against what the
  receiver holds) does not. A receiver rebuilds the features, the head runs on them, and its detections
  are scored against the FP32 model's (agreement mAP50-95), with the drift in quantization steps, vs K.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from yolo_compile import runs
from yolo_compile.errors import BandwidthError

log = logging.getLogger(__name__)
LEVELS = ("P3", "P4", "P5")


def head_features(model, head_index: int) -> list[dict]:
    """Return, per head level, {level, tensor, scale, zero_point, quantized}: the float tensor its first convs read."""
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: t for t in graph.initializer}
    out = []
    for k, level in enumerate(LEVELS):
        prefix = f"/model.{head_index}/cv2.{k}/"
        conv = next((n for n in graph.node if n.op_type == "Conv" and n.name.startswith(prefix)), None)
        if conv is None:
            break
        name, scale, zp = conv.input[0], None, None
        dq = producer.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0]) is not None:
            q = producer[dq.input[0]]
            if q.op_type == "QuantizeLinear" and q.input[1] in consts:
                name = q.input[0]
                scale = float(numpy_helper.to_array(consts[q.input[1]]))
                zp = int(numpy_helper.to_array(consts[q.input[2]])) if len(q.input) > 2 and q.input[2] in consts else 0
        out.append({"level": level, "tensor": name, "scale": scale, "zero_point": zp, "quantized": scale is not None})
    if len(out) != 3:
        raise BandwidthError(f"head /model.{head_index}/ has {len(out)} levels with a cv2.k conv; expected P3, P4, P5")
    return out


def split_model(src: Path, levels: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """Write (features model: the graph with the level tensors as extra outputs, head model: levels -> output)."""
    import onnx
    from onnx import utils

    from yolo_compile.bandwidth.traffic import static_shapes

    model, info = static_shapes(onnx.load(str(src)), batch=1)
    names = [lv["tensor"] for lv in levels]
    inferred = {v.name: v for v in model.graph.value_info}
    feats = onnx.ModelProto.FromString(model.SerializeToString())
    feats.graph.output.extend([inferred[n] for n in names])
    fpath, hpath = out_dir / "features.onnx", out_dir / "head.onnx"
    onnx.save(feats, str(fpath))
    head = utils.Extractor(model).extract_model(names, [model.graph.output[0].name])
    onnx.save(head, str(hpath))
    return fpath, hpath


def quantize(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """Return QuantizeLinear(x) as int8: round half to even, saturate (ONNX's rule)."""
    return np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127).astype(np.int8)


def wrap_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return b - a mod 256 as uint8: one byte an element, undone exactly by (a + d) mod 256."""
    return (b.view(np.uint8) - a.view(np.uint8)).astype(np.uint8)


def reconstruct(q: np.ndarray, keyframe: int, deadzone: int, closed_loop: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (receiver's features, bytes a frame sent before compression is applied: the delta arrays' masks).

    q: (frames, ...) int8. Every keyframe-th frame is sent whole; in between, a delta whose changes of at most
    deadzone steps are dropped, against the sender's previous frame (open loop) or the receiver's (closed loop).
    """
    r = np.empty_like(q)
    sent = np.empty_like(q, dtype=np.int16)
    for t in range(len(q)):
        if t % keyframe == 0:
            r[t], sent[t] = q[t], q[t]
            continue
        base = r[t - 1] if closed_loop else q[t - 1]
        d = q[t].astype(np.int16) - base.astype(np.int16)
        d[np.abs(d) <= deadzone] = 0
        sent[t] = d
        r[t] = np.clip(r[t - 1].astype(np.int16) + d, -128, 127).astype(np.int8)
    return r, sent


def measure(run_dir: str | Path, frames: int, keyframes: tuple[int, ...] = (1, 4, 16), deadzones: tuple[int, ...] = (1, 2),
            level: int = 3, line=None) -> dict:
    """Measure delta encoding of the head's input features on a conveyor sequence; return levels and keyframe rows."""
    try:
        import zstandard
    except ImportError:
        raise BandwidthError("feature delta encoding needs zstandard: pip install 'yolo-compile[bandwidth]'") from None
    import onnxruntime as ort

    from yolo_compile import images
    from yolo_compile.reference import conveyor
    from yolo_compile.evaluate.accuracy import agreement_map, predict
    from yolo_compile.evaluate.detections import decode

    run_dir = Path(run_dir)
    exp = runs.require_passed(run_dir, "export")
    q = runs.require_passed(run_dir, "quantize")
    size = int(exp["imgsz"])
    line = line or conveyor.Conveyor()
    cache = runs.cache_root(run_dir)
    paths = conveyor.generate(cache / "conveyor", frames, line)
    arr = images.preprocessed(paths, size, cache, desc="conveyor").array
    import onnx

    levels = head_features(onnx.load(str(run_dir / q["onnx"]), load_external_data=False), int(exp["head_index"]))
    work = runs.stage_dir(run_dir, "bandwidth") / "delta"
    work.mkdir(exist_ok=True)
    fpath, hpath = split_model(run_dir / q["onnx"], levels, work)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    fsess = ort.InferenceSession(str(fpath), opts, providers=["CPUExecutionProvider"])
    hsess = ort.InferenceSession(str(hpath), opts, providers=["CPUExecutionProvider"])
    outs = [fsess.run(None, {exp["input_name"]: images.to_float(arr[i:i + 1])}) for i in range(len(arr))]
    compiled = [decode(o[0][0]) for o in outs]
    ref = predict(run_dir / exp["onnx"], arr, exp["input_name"], batch=1, desc="fp32 conveyor")
    feats = []
    for k, lv in enumerate(levels):
        x = np.concatenate([o[1 + k] for o in outs])
        if not lv["quantized"]:  # the graph keeps it in float: a symmetric INT8 scale from the first frame
            lv["scale"], lv["zero_point"] = float(np.abs(x[0]).max() / 127 or 1.0), 0
        feats.append(quantize(x, lv["scale"], lv["zero_point"]))
    zc = zstandard.ZstdCompressor(level=level)
    zsize = lambda a: len(zc.compress(np.ascontiguousarray(a).tobytes()))  # noqa: E731
    moving = np.array([line.moving(i) for i in range(frames)])
    level_rows, phase_rows = [], []
    for lv, f in zip(levels, feats):
        per = f[0].size
        deltas = [wrap_delta(f[t - 1], f[t]) for t in range(1, frames)]
        zeros = np.array([float((d == 0).mean()) for d in deltas])
        zd = np.array([zsize(d) for d in deltas])
        zfull = np.mean([zsize(f[t]) for t in range(frames)])
        level_rows.append({"level": lv["level"], "shape": "x".join(map(str, f.shape[1:])), "int8_bytes": per,
                           "scale": lv["scale"], "scale_from": "graph" if lv["quantized"] else "first frame",
                           "zstd_full_bytes": round(float(zfull)), "delta_zero_fraction": round(float(zeros.mean()), 4),
                           "zstd_delta_bytes": round(float(zd.mean())),
                           "saved_vs_raw_pct": round(100 * (1 - zd.mean() / per), 1),
                           "saved_vs_zstd_full_pct": round(100 * (1 - zd.mean() / zfull), 1)})
        for phase, mask in (("moving", moving[1:]), ("standing", ~moving[1:])):
            if mask.any():
                phase_rows.append({"level": lv["level"], "belt": phase, "frames": int(mask.sum()),
                                   "delta_zero_fraction": round(float(zeros[mask].mean()), 4),
                                   "zstd_delta_bytes": round(float(zd[mask].mean())),
                                   "saved_vs_zstd_full_pct": round(100 * (1 - zd[mask].mean() / zfull), 1)})
    base_map = agreement_map(ref, compiled)
    rows = []
    for dz in deadzones:
        for closed in (False, True):
            for k in keyframes:
                if k == 1 and (closed or dz != deadzones[0]):
                    continue  # keyframes only: nothing to drop, one row is enough
                rec, sent, nbytes, drift = [], [], 0, []
                for f in feats:
                    r, s = reconstruct(f, k, dz, closed)
                    rec.append(r)
                    sent.append(s)
                    nbytes += sum(zsize(s[t].astype(np.int8)) if t % k else zsize(f[t]) for t in range(frames))
                    drift.append(np.abs(r.astype(np.int16) - f.astype(np.int16)).reshape(frames, -1).mean(1))
                dets = [decode(hsess.run(None, {lv["tensor"]: ((rec[j][t:t + 1].astype(np.float32) - lv["zero_point"])
                                                              * np.float32(lv["scale"])) for j, lv in enumerate(levels)})[0][0])
                        for t in range(frames)]
                d, agree = np.mean(drift, axis=0), agreement_map(ref, dets)
                rows.append({"keyframe_every": k, "deadzone_steps": dz if k > 1 else 0,
                             "loop": "closed" if closed else "open" if k > 1 else "-",
                             "bytes_per_frame": round(nbytes / frames),
                             "zero_fraction": round(float(np.mean([(s[1:] == 0).mean() for s in sent])), 4) if k > 1 else 0.0,
                             "agreement_map50_95": round(agree, 4),
                             "map_change_points": round(100 * (agree - base_map), 2) + 0.0,  # no "-0"
                             "drift_mean_steps": round(float(d.mean()), 4), "drift_max_steps": round(float(d.max()), 4)})
    full = sum(f[0].size for f in feats)
    jpeg = float(np.mean([p.stat().st_size for p in paths]))
    return {"frames": frames, "sequence": str(paths[0].parent.parent), "conveyor": line.key(frames),
            "moving_frames": int(moving[1:].sum()), "compiled_agreement_map50_95": round(base_map, 4),
            "full_int8_bytes": full, "jpeg_frame_bytes": round(jpeg), "frame_size": "x".join(map(str, line.frame_size)),
            "levels": level_rows, "phases": phase_rows, "keyframes": rows}
