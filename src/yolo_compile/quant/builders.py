"""How each quantize candidate is built: the plan (which candidates, in what order) and the builders.

ModelOpt runs once, on one image, to place the Q/DQ nodes (the template); the activation statistics come from
one pass over the calibration images (`scales.collect`); each calibration method is then a graph edit of the
template. NNCF (CPU targets) is one more candidate. `finalize` writes a candidate as it would ship.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from yolo_compile import runs
from yolo_compile.errors import QuantizeError
from yolo_compile.quant import scales, weights

log = logging.getLogger(__name__)


@dataclass
class Template:
    """The ModelOpt placement (Q/DQ nodes from one image) and the activation statistics it is calibrated from."""

    path: Path
    raw_stats: scales.ActivationStats  # per tensor: the recipe search merges each float set's own shared groups
    stats: scales.ActivationStats  # merged over the groups that share a scale
    timing: dict


class Builders:
    """Builds candidate files in a work folder from one FP32 model and one calibration array."""

    def __init__(self, run_dir: Path, exp: dict, src: Path, work: Path, data: np.ndarray, exclude: list[str],
                 kept: list[str], hp_dtype: str, groups: dict[str, tuple[str, ...]] | None = None):
        self.run_dir, self.exp, self.src, self.work, self.data = run_dir, exp, src, work, data
        self.exclude, self.kept, self.hp_dtype = exclude, kept, hp_dtype
        self.groups = groups or {}  # float groups a variant may turn INT8: stem, out_convs (node names)
        self._template: Template | None = None

    def template(self) -> Template:
        """Return the ModelOpt placement and statistics, made on first use (one placement pass, one statistics pass)."""
        if self._template is None:
            from yolo_compile.quant.modelopt import modelopt_quantize

            t0 = time.perf_counter()
            path = self.work / "template.onnx"
            modelopt_quantize(self.src, path, self.data[:1], self.exp, "max", self.hp_dtype, exclude=self.exclude)
            t1 = time.perf_counter()
            raw = scales.collect(self.src, list(scales.activation_qdq(path)), self.data)
            raw.save(runs.stage_dir(self.run_dir, "quantize") / "activations.npz")  # per tensor: the study merges its own groups
            stats = scales.merged(raw, scales.shared_groups(self.src, path))
            t2 = time.perf_counter()
            log.info("ModelOpt placement %.1f s, activation statistics on %d images %.1f s", t1 - t0, len(self.data),
                     t2 - t1)
            self._template = Template(path, raw, stats, {"placement_s": round(t1 - t0, 1), "statistics_s": round(t2 - t1, 1)})
        return self._template

    def modelopt(self, method: str) -> list[dict]:
        """One ModelOpt candidate: the template with the scales of one calibration method."""
        tpl = self.template()
        t = time.perf_counter()
        name = f"modelopt-{method}.onnx"
        scales.apply(tpl.path, scales.thresholds(tpl.stats, method), self.work / name)
        return [{"quantizer": "modelopt", "calibration": method, "file": name,
                 "build_s": round(time.perf_counter() - t, 1), **tpl.timing}]

    def nncf(self, preset: str = "mixed") -> list[dict]:
        """One NNCF candidate: a preset (mixed: the peer's; performance: symmetric activations), fast bias correction."""
        from yolo_compile.quant.nncf import nncf_quantize

        t = time.perf_counter()
        name = f"nncf-{preset}.onnx"
        nncf_quantize(self.src, self.work / name, self.data, self.exp["input_name"], self.kept, preset)
        return [{"quantizer": "nncf", "calibration": f"nncf {preset} preset, fast bias correction", "file": name,
                 "build_s": round(time.perf_counter() - t, 1)}]

    def nncf_int8(self, base: dict, int8: tuple[str, ...]) -> list[dict]:
        """An NNCF candidate with float groups (stem, out_convs) made INT8 by a graph edit (`qdq_edit`): no NNCF run."""
        import onnx

        from yolo_compile.quant.qdq_edit import SILU_MIN, int8_convs

        t = time.perf_counter()
        src = {n.name: n for n in onnx.load(str(self.src), load_external_data=False).graph.node}
        convs: dict[str, tuple[float, float]] = {n: (0.0, 1.0) for n in self.groups.get("stem", ()) if "stem" in int8}
        heads = [n for n in self.groups.get("out_convs", ()) if "out_convs" in int8]
        if heads:  # their inputs are SiLU outputs: the max from one statistics pass, the min is SiLU's own
            stats = scales.collect(self.src, [src[n].input[0] for n in heads], self.data, desc="output conv inputs")
            convs.update({n: (SILU_MIN, stats.amax[src[n].input[0]]) for n in heads})
        name = "-".join((Path(base["file"]).stem, *int8)) + ".onnx"
        int8_convs(self.work / base["file"], self.work / name, convs, seven_bit=tuple(self.groups.get("stem", ())))
        return [{"quantizer": "nncf", "calibration": f"{base['calibration']}, INT8 {' and '.join(int8)}",
                 "file": name, "int8_groups": list(int8), "build_s": round(time.perf_counter() - t, 1)}]

    def speed_proxy(self, base: dict, of: str) -> dict:
        """A file with base's Q/DQ placement and asymmetric activations: what `of` (the mixed preset) runs like.

        The mixed and performance presets place the same quantizers and differ in the activations' zero points
        (asymmetric vs 0); a CPU runtime's speed depends on that kind, not on the ranges, so the proxy is timed in
        place of an NNCF run it would take to build the mixed model itself (~12 s here).
        """
        from yolo_compile.quant.qdq_edit import asymmetric_proxy

        name = f"proxy-{Path(base['file']).stem}.onnx"
        asymmetric_proxy(self.work / base["final"], self.work / name)
        return {"quantizer": "nncf", "calibration": f"speed proxy of {of}", "file": name, "final": name, "proxy_of": of}

    def finalize(self, row: dict) -> dict:
        """Write the candidate as it would ship (INT8 weights behind DequantizeLinear, the FP32 model's metadata)."""
        from yolo_compile.quant.modelopt import copy_metadata

        final = self.work / f"final-{row['file']}"
        row["weights_int8"] = weights.int8_weights(self.work / row["file"], final)["weights_int8"]
        copy_metadata(self.src, final)
        row["final"] = final.name
        return row


def plan(cfg, target: str, builders: Builders) -> list[tuple[str, Callable[[], list[dict]]]]:
    """Return the candidates in the order they are tried, as (label, build) with build returning rows lazily."""
    from yolo_compile.quant.modelopt import CANDIDATE_METHODS

    steps = []
    # A named calibration_method (max, entropy, percentile) is a ModelOpt calibration: with quantizer=auto it
    # means ModelOpt with that method; NNCF (its own range estimation) competes under auto, or when asked for.
    nncf_wanted = cfg.quantizer == "nncf" or (cfg.quantizer == "auto" and cfg.calibration_method == "auto")
    if target == "cpu" and nncf_wanted:
        if importlib.util.find_spec("nncf") is not None:
            # First on a CPU target: the peer's quantizer, asymmetric activations the CPU runtimes run natively.
            if cfg.objective == "latency" and cfg.accept_drop > 0:
                # Fastest expected first: symmetric activations (one INT8 kernel path on x86); the mixed preset, the
                # peer's, is built only where its speed, timed through a proxy, ties (quant.fastest).
                steps.append(("nncf performance preset", lambda: builders.nncf("performance")))
            # The peer's quantizer: asymmetric activations, the smallest drop on the reference scenes.
            steps.append(("nncf mixed preset", builders.nncf))
        elif cfg.quantizer == "nncf":
            raise QuantizeError("quantizer=nncf: the Python package 'nncf' is not installed "
                                "(pip install 'yolo-compile[openvino]'), or use quantizer=modelopt")
        else:
            log.warning("NNCF is not installed (pip install 'yolo-compile[openvino]'): ModelOpt candidates only")
    if cfg.quantizer in ("auto", "modelopt"):
        for method in CANDIDATE_METHODS[cfg.calibration_method]:
            steps.append((f"modelopt {method}", lambda m=method: builders.modelopt(m)))
    return steps
