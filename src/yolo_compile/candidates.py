"""The quantize stage's choice: build every candidate (quantizer x calibration, per-group mixes), measure, keep the best.

ModelOpt runs once, on one image, to place the Q/DQ nodes (the template); the activation statistics come from
one pass over the calibration images (`scales.collect`); each calibration method is then a graph edit of the
template. NNCF (CPU targets) is one more candidate. Every candidate is scored the same way: mAP50-95 drop on
the labeled split, or agreement with FP32 without labels, on the runtime that ships for the target.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from . import runs, scales

log = logging.getLogger(__name__)


def backbone_end(fp32_graph) -> int | None:
    """Return the module index of the backbone's last block (SPPF/SPP: the module holding MaxPool), if any."""
    idx = [int(m.group(1)) for n in fp32_graph.node if n.op_type == "MaxPool"
           and (m := re.match(r"/model\.(\d+)/", n.name))]
    return max(idx) if idx else None


def module_of(tensor: str) -> int | None:
    m = re.match(r"/model\.(\d+)/", tensor)
    return int(m.group(1)) if m else None


class Search:
    """Candidates for one quantize run; `run()` returns the winning row, `rows` holds every figure."""

    def __init__(self, cfg, run_dir: Path, exp: dict, src: Path, work: Path, data: np.ndarray, exclude: list[str],
                 kept: list[str], hp_dtype: str, target: str):
        self.cfg, self.run_dir, self.exp, self.src, self.work, self.data = cfg, run_dir, exp, src, work, data
        self.exclude, self.kept, self.hp_dtype, self.target = exclude, kept, hp_dtype, target
        self.rows: list[dict] = []
        self.chosen: dict = {}
        self.scorer = None

    # -- candidates ------------------------------------------------------------------------------------
    def modelopt(self) -> list[dict]:
        """One ModelOpt placement pass, one statistics pass, one candidate file per calibration method."""
        from .quantize import CANDIDATE_METHODS, modelopt_quantize

        t0 = time.perf_counter()
        template = self.work / "template.onnx"
        modelopt_quantize(self.src, template, self.data[:1], self.exp, "max", self.hp_dtype, exclude=self.exclude)
        t1 = time.perf_counter()
        stats = scales.collect(self.src, list(scales.activation_qdq(template)), self.data)
        stats.save(runs.stage_dir(self.run_dir, "quantize") / "activations.npz")  # per tensor: the study merges its own groups
        stats = scales.merged(stats, scales.shared_groups(self.src, template))
        t2 = time.perf_counter()
        log.info("ModelOpt placement %.1f s, activation statistics on %d images %.1f s", t1 - t0, len(self.data), t2 - t1)
        self.template, self.stats = template, stats
        self.timing = {"placement_s": round(t1 - t0, 1), "statistics_s": round(t2 - t1, 1)}
        rows = []
        for method in CANDIDATE_METHODS[self.cfg.calibration_method]:
            t = time.perf_counter()
            name = f"modelopt-{method}.onnx"
            scales.apply(template, scales.thresholds(stats, method), self.work / name)
            rows.append({"quantizer": "modelopt", "calibration": method, "file": name,
                         "build_s": round(time.perf_counter() - t, 1)})
        return rows

    def nncf(self) -> dict:
        from .quantizers import nncf_quantize

        t = time.perf_counter()
        name = "nncf-mixed.onnx"
        nncf_quantize(self.src, self.work / name, self.data, self.exp["input_name"], self.kept)
        return {"quantizer": "nncf", "calibration": "nncf mixed preset, fast bias correction", "file": name,
                "build_s": round(time.perf_counter() - t, 1)}

    def mixes(self, a: dict, b: dict) -> list[dict]:
        """Two per-group mixes of ModelOpt methods a and b: one's scales for the backbone, the other's for the rest."""
        import onnx

        end = backbone_end(onnx.load(str(self.src), load_external_data=False).graph)
        if end is None:
            return []
        tensors = list(scales.activation_qdq(self.template))
        backbone = {scales.source_name(t) for t in tensors if (module_of(t) is not None and module_of(t) <= end)
                    or module_of(t) is None}
        rest = {scales.source_name(t) for t in tensors} - backbone
        rows = []
        for first, second in ((a, b), (b, a)):
            name = f"modelopt-mix-{first['calibration']}-{second['calibration']}.onnx"
            mid = self.work / f"tmp-{name}"
            scales.apply(self.template, scales.thresholds(self.stats, first["calibration"]), mid)
            scales.apply(mid, scales.thresholds(self.stats, second["calibration"]), self.work / name, only=rest)
            mid.unlink()
            rows.append({"quantizer": "modelopt",
                         "calibration": f"{first['calibration']} backbone (model.0-{end}) + {second['calibration']} neck/head",
                         "file": name, "build_s": 0.0})
        return rows

    # -- scoring ---------------------------------------------------------------------------------------
    def make_scorer(self):
        """Return a Scorer on the labeled split (data), else on held-out images, else on calibration images."""
        from . import accuracy, images
        from .calibrate import sample

        size = int(self.exp["imgsz"])
        names = {int(k): v for k, v in self.exp["class_names"].items()}
        # ONNX Runtime: its Q/DQ arithmetic is the reference. Measured on this 2-core AVX2 CPU, OpenVINO 2026.4 runs the
        # same Q/DQ files (ModelOpt and NNCF alike) with 3-14x larger output errors; the compare gate checks it apart.
        backend = "onnxruntime"
        n = self.cfg.score_images
        cache = runs.cache_root(self.run_dir)
        if self.cfg.data:
            split = accuracy.read_split(self.cfg.data)
            keep = sample(list(range(len(split.images))), n or len(split.images), 1)
            split = accuracy.LabeledSplit([split.images[i] for i in keep], [split.labels[i] for i in keep],
                                          [split.shapes[i] for i in keep])
            arr = images.preprocessed(split.images, size, cache, desc="labeled images").array
            scorer = accuracy.Scorer(self.src, arr, size, names, split=split, backend=backend)
            where = f"{len(split.images)} labeled images of {self.cfg.data}"
        elif self.cfg.eval_dir:
            paths = sample(images.list_images(self.cfg.eval_dir), n or 64, 1)
            arr = images.preprocessed(paths, size, cache, desc="held-out images").array
            scorer = accuracy.Scorer(self.src, arr, size, names, backend=backend)
            where = f"{len(paths)} held-out images of {self.cfg.eval_dir} (no labels: pass data= for mAP)"
        else:
            arr = self.data[-min(len(self.data), n or 64):]
            scorer = accuracy.Scorer(self.src, arr, size, names, backend=backend)
            where = (f"{len(arr)} calibration images (no labels and no eval_dir: agreement with FP32 on the images the "
                     "scales came from; pass data= for mAP)")
        scorer.where = where
        return scorer

    def score(self, row: dict) -> dict:
        t = time.perf_counter()
        row["drop_points"] = self.scorer.score(self.work / row["file"], row["file"])
        row["score_s"] = round(time.perf_counter() - t, 1)
        log.info("candidate %s %s: drop %.3f points", row["quantizer"], row["calibration"], row["drop_points"])
        return row

    def run(self) -> dict:
        """Build and score the candidates; return the winning row (its file is in the work folder)."""
        rows = []
        if self.cfg.quantizer in ("auto", "modelopt"):
            rows += self.modelopt()
        if self.target == "cpu" and self.cfg.quantizer in ("auto", "nncf"):
            import importlib.util

            if importlib.util.find_spec("nncf") is not None:
                rows.append(self.nncf())
            elif self.cfg.quantizer == "nncf":
                from .errors import QuantizeError

                raise QuantizeError("quantizer=nncf: the Python package 'nncf' is not installed "
                                    "(pip install 'yolo-compile[openvino]'), or use quantizer=modelopt")
            else:
                log.warning("NNCF is not installed (pip install 'yolo-compile[openvino]'): ModelOpt candidates only")
        if len(rows) == 1:
            self.rows = rows
            self.chosen = {**_public(rows[0]), "why": "the only candidate asked for (no measurement needed)"}
            return rows[0]
        self.scorer = self.make_scorer()
        for row in rows:
            self.score(row)
        mo = sorted((r for r in rows if r["quantizer"] == "modelopt"), key=lambda r: r["drop_points"])
        if len(mo) >= 2 and mo[0]["drop_points"] > 0:
            for row in self.mixes(mo[0], mo[1]):
                rows.append(self.score(row))
        rows.sort(key=lambda r: r["drop_points"])
        best, second = rows[0], rows[1]
        noise = self.scorer.noise(best["file"], second["file"])
        self.rows = [_public(r) for r in rows]
        for r in self.rows:
            r.update(self.timing if r["quantizer"] == "modelopt" else {})
        self.chosen = {**_public(best), "score": self.scorer.kind, "images": self.scorer.where,
                       "backend": self.scorer.backend, "fp32_value": round(self.scorer.base, 3),
                       "runner_up": f"{second['quantizer']} {second['calibration']} ({second['drop_points']:+.3f})",
                       "noise_points": noise,
                       "why": (f"smallest drop of {len(rows)} candidates: {best['drop_points']:.3f} points vs "
                               f"{second['drop_points']:.3f} for the runner-up; the difference "
                               f"{'exceeds' if second['drop_points'] - best['drop_points'] > 2 * noise else 'is within'}"
                               f" twice its paired-bootstrap noise ({noise:.3f})")}
        return best


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "file"}
