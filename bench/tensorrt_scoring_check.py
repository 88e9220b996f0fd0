"""target=tensorrt: would scoring on ONNX Runtime's FP32 Q/DQ kernels change the quantize stage's choice? (issue 23)

    python bench/tensorrt_scoring_check.py [--count 500]

ModelOpt's TensorRT files carry FP16 scales and an FP16 head; ONNX Runtime runs their FP16 Q/DQ nodes on reference
loops, at ~8 images/s here. `fp32_qdq_kernels` below moves those nodes onto its FP32 kernels (~1.6x faster; each node
gives the same integers and FP16 values as before, but ONNX Runtime's cast remover then drops the FP16 roundings in
front of each Quantize and behind each weight Dequantize, so the graph is not the same arithmetic). This builds every ModelOpt candidate of the default plan on the
labeled set of bench/tensorrt_quantize.py, scores each on every image with both arithmetics (the FP32 model is the
same in both), and prints per candidate the two drops, their difference against the paired-bootstrap noise, the
images/s, and the choice each arithmetic makes under accept_drop (first within the bar, the plan's order) and under
accept_drop=0 (smallest drop). It also scores one candidate on ONNX Runtime's own basic optimization level, the
size of the difference the reference runtime makes by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_line  # noqa: E402
from tensorrt_quantize import OUT, make_set  # noqa: E402

sys.path.insert(0, str(REPO / "src"))


def fp32_qdq_kernels(model: Path) -> tuple[bytes, int]:
    """Return (the model's bytes with every FP16 QuantizeLinear/DequantizeLinear on ONNX Runtime's FP32 kernels, count).

    Quantize: a Cast of its FP16 input to FP32 and an FP32 copy of its scale (x/scale is computed in FP32 either
    way: the same integers). Dequantize: FP32 scale and output, then a Cast to FP16 (the same rounding of q x scale).
    A model without FP16 Q/DQ comes back with count 0 (and its bytes unread: b"").
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(model))
    g = m.graph
    inits = {t.name: t for t in g.initializer}

    def fp16(name: str) -> bool:
        return name in inits and inits[name].data_type == TensorProto.FLOAT16

    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 and fp16(n.input[1])
               for n in g.node):
        return b"", 0
    nodes, moved, replaced = [], 0, set()
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 2 or not fp16(n.input[1]):
            nodes.append(n)
            continue
        moved += 1
        replaced.add(n.input[1])
        s32 = n.input[1] + "__fp32"
        if s32 not in inits:
            inits[s32] = numpy_helper.from_array(numpy_helper.to_array(inits[n.input[1]]).astype("float32"), s32)
            g.initializer.append(inits[s32])
        ins = [n.input[0], s32, *n.input[2:]]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "QuantizeLinear":
            x32 = f"{n.input[0]}__fp32_{moved}"
            nodes.append(helper.make_node("Cast", [n.input[0]], [x32], to=TensorProto.FLOAT, name=f"{n.name}__cast_in"))
            nodes.append(helper.make_node("QuantizeLinear", [x32, *ins[1:]], list(n.output), name=n.name, **attrs))
        else:
            y32 = f"{n.output[0]}__fp32"
            nodes.append(helper.make_node("DequantizeLinear", ins, [y32], name=n.name, **attrs))
            nodes.append(helper.make_node("Cast", [y32], list(n.output), to=TensorProto.FLOAT16, name=f"{n.name}__cast_out"))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used or t.name not in replaced]  # the FP16 scales now unread go
    del g.initializer[:]
    g.initializer.extend(keep)
    return m.SerializeToString(), moved


def runner(model, *, threads=0, fp32_kernels=False, **_):
    """ONNX Runtime as the quantize stage runs it, or with FP16 Q/DQ moved onto the FP32 kernels."""
    import onnxruntime as ort

    from yolo_compile.runtimes.onnxruntime import OnnxRuntimeRunner

    r = OnnxRuntimeRunner(model, threads)
    if fp32_kernels:
        data, moved = fp32_qdq_kernels(Path(model))
        if moved:
            r.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--accept-drop", type=float, default=0.3)
    a = ap.parse_args()
    data = make_set(a.count)
    import numpy as np

    from yolo_compile import images
    from yolo_compile.evaluate import accuracy
    from yolo_compile.evaluate import scorer as scorer_mod
    from yolo_compile.pipeline.workflow import reference_defaults
    from yolo_compile.quant.builders import Builders
    from yolo_compile.quant.graph import find_head, find_stem
    from yolo_compile.quant.modelopt import CANDIDATE_METHODS
    from yolo_compile.runtimes import registry
    from yolo_compile.stages import calibrate, export
    import onnx
    import re

    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="check-", dir=OUT))
    print(f"{machine_line()}; work folder {base}", flush=True)
    ref = reference_defaults()
    run = base / "run"
    export.run(export.ExportConfig(model=ref["model"]), run)
    calibrate.run(calibrate.CalibrateConfig(calib_dir=ref["calib_dir"]), run)
    exp = json.loads((run / "export" / "result.json").read_text())
    cal = json.loads((run / "calibrate" / "result.json").read_text())
    src = run / exp["onnx"]
    graph = onnx.load(str(src), load_external_data=False).graph
    head = find_head(graph, int(exp["head_index"]))
    kept = list(head.kept_float) + list(find_stem(graph, exp["input_name"]))
    calib = np.load(run / cal["array"])
    work = base / "work"
    work.mkdir()
    b = Builders(run, exp, src, work, calib, [re.escape(n) + "$" for n in kept], kept, "fp16")
    rows = []
    for m in CANDIDATE_METHODS["auto"]:
        for r in b.modelopt(m):
            b.finalize(r)
            rows.append(r)
    split = accuracy.read_split(data)
    imgs = images.preprocessed(split.images, int(exp["imgsz"]), base / "cache", desc="labeled images")
    names = {int(k): v for k, v in exp["class_names"].items()}
    scorer = scorer_mod.Scorer(src, imgs.array, int(exp["imgsz"]), names, split=split, backend="onnxruntime")
    slow_rt = registry.RUNTIMES["onnxruntime"]
    fast_rt = dataclasses.replace(slow_rt, open=lambda model, **kw: runner(model, fp32_kernels=True, **kw))
    table = []
    for r in rows:
        out = {"candidate": r["calibration"]}
        for arith, rt in (("fp16 loops", slow_rt), ("fp32 kernels", fast_rt)):
            registry.RUNTIMES["onnxruntime"] = rt
            t = time.perf_counter()
            dets = accuracy.predict(work / r["final"], imgs.array, desc=f"{r['calibration']} ({arith})")
            s = time.perf_counter() - t
            scorer.dets[f"{r['calibration']}|{arith}"] = dets
            out[arith] = {"drop": round(scorer.base - scorer.value(dets, range(len(imgs.array))), 3),
                          "images_per_s": round(len(imgs.array) / s, 1)}
        registry.RUNTIMES["onnxruntime"] = slow_rt
        out["noise_between"] = scorer.noise(f"{r['calibration']}|fp16 loops", f"{r['calibration']}|fp32 kernels")
        out["noise_vs_fp32"] = scorer.noise(f"{r['calibration']}|fp16 loops", "fp32", rounds=20)
        table.append(out)
        print(json.dumps(out), flush=True)

    def first_within(arith):
        return next((t["candidate"] for t in table if t[arith]["drop"] <= a.accept_drop), "none")

    def smallest(arith):
        return min(table, key=lambda t: t[arith]["drop"])["candidate"]

    print(f"\n| candidate | drop, FP16 loops | drop, FP32 kernels | difference | its paired noise | noise vs FP32 | "
          "images/s FP16 loops | images/s FP32 kernels |")
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        s, f = t["fp16 loops"], t["fp32 kernels"]
        print(f"| {t['candidate']} | {s['drop']:.3f} | {f['drop']:.3f} | {f['drop'] - s['drop']:+.3f} | "
              f"{t['noise_between']:.3f} | {t['noise_vs_fp32']:.3f} | {s['images_per_s']} | {f['images_per_s']} |")
    for arith in ("fp16 loops", "fp32 kernels"):
        print(f"{arith}: first within accept_drop={a.accept_drop:g}: {first_within(arith)}; "
              f"smallest drop (accept_drop=0): {smallest(arith)}")
    (base / "results.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
