"""The quantize stage's choice: build every candidate (quantizer x calibration, per-group mixes), measure, keep the best.

ModelOpt runs once, on one image, to place the Q/DQ nodes (the template); the activation statistics come from
one pass over the calibration images (`scales.collect`); each calibration method is then a graph edit of the
template. NNCF (CPU targets) is one more candidate. Every candidate is scored the same way: mAP50-95 drop on
the labeled split, or agreement with FP32 without labels, on the runtime that ships for the target.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import runs, scales

log = logging.getLogger(__name__)


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
    def modelopt_setup(self) -> None:
        """One ModelOpt placement pass (one image) and one statistics pass over the calibration images."""
        t0 = time.perf_counter()
        template = self.work / "template.onnx"
        from .quantize import modelopt_quantize

        modelopt_quantize(self.src, template, self.data[:1], self.exp, "max", self.hp_dtype, exclude=self.exclude)
        t1 = time.perf_counter()
        stats = scales.collect(self.src, list(scales.activation_qdq(template)), self.data)
        stats.save(runs.stage_dir(self.run_dir, "quantize") / "activations.npz")  # per tensor: the study merges its own groups
        self.raw_stats = stats  # per tensor: the recipe search merges each float set's own shared groups
        stats = scales.merged(stats, scales.shared_groups(self.src, template))
        t2 = time.perf_counter()
        log.info("ModelOpt placement %.1f s, activation statistics on %d images %.1f s", t1 - t0, len(self.data), t2 - t1)
        self.template, self.stats = template, stats
        self.timing = {"placement_s": round(t1 - t0, 1), "statistics_s": round(t2 - t1, 1)}

    def nncf(self) -> dict:
        from .quantizers import nncf_quantize

        t = time.perf_counter()
        name = "nncf-mixed.onnx"
        nncf_quantize(self.src, self.work / name, self.data, self.exp["input_name"], self.kept)
        return {"quantizer": "nncf", "calibration": "nncf mixed preset, fast bias correction", "file": name,
                "build_s": round(time.perf_counter() - t, 1)}

    def recipe_search(self, roots: list[dict]) -> list[dict]:
        """Best-first search over extra float groups x per-group calibration from the scored uniform methods.

        Each candidate is built from the cached template and statistics (no recalibration) and scored like the
        others; a candidate that builds the same file as an earlier one is not scored again and costs no budget.
        Returns the new rows; `self.search_summary` says what the search did.
        """
        from .recipe_search import Recipe, best_first, report
        from .recipe_space import Space

        t0 = time.perf_counter()
        methods = tuple(dict.fromkeys(r["calibration"] for r in roots))
        space = Space(self.src, self.template, self.raw_stats, self.exclude, self.exp, self.hp_dtype, self.data,
                      self.work, methods)
        by_recipe = {Recipe.of(r["calibration"]): r for r in roots}
        by_sha = {runs.sha256(self.work / r["file"]): r for r in roots}
        new: list[dict] = []

        def score(recipe: Recipe) -> tuple[float, str | None]:
            name = f"search-{len(new) + 1:02d}.onnx"
            space.build(recipe, self.work / name)
            sha = runs.sha256(self.work / name)
            if sha in by_sha:  # the same file as an earlier candidate: its score, no budget spent
                (self.work / name).unlink()
                by_recipe[recipe] = by_sha[sha]
                return by_sha[sha]["drop_points"], by_sha[sha]["calibration"]
            row = {"quantizer": "modelopt", "calibration": recipe.label(), "file": name, "build_s": 0.0,
                   "float_groups": sorted(recipe.floats), "keep_float": space.patterns(recipe)}
            self.score(row)
            by_sha[sha] = by_recipe[recipe] = row
            new.append(row)
            return row["drop_points"], None

        accept = self.cfg.accept_drop if self.cfg.accept_drop > 0 else None
        out = best_first([(Recipe.of(r["calibration"]), r["drop_points"]) for r in roots],
                         lambda r: space.children(r, self.cfg.search_floats), score, self.cfg.search_budget,
                         accept=accept, max_floats=self.cfg.search_floats)
        steps, summary = report(out, lambda a, b: self.scorer.noise(by_recipe[a]["file"], by_recipe[b]["file"]))
        for s in steps:  # the search's view of each candidate goes onto its row
            row = next((r for r in new if r["calibration"] == s["label"] and not s["duplicate_of"]), None)
            if row is not None:
                row["search"] = {k: s[k] for k in ("parent", "depth", "overrides", "noise_vs_parent") if k in s}
        self.search_summary = {"budget": self.cfg.search_budget, **summary, "groups": len(space.groups),
                               "max_float_groups": self.cfg.search_floats, "placement_s": round(space.placement_s, 1),
                               "seconds": round(time.perf_counter() - t0, 1)}
        log.info("recipe search: %d candidates scored (%s), best %s at %.3f points", out.scored, out.stopped,
                 summary["best"], out.best_drop)
        return new

    # -- scoring ---------------------------------------------------------------------------------------
    def make_scorer(self):
        """Return a Scorer on the labeled split (data), else on held-out images, else on calibration images."""
        from . import accuracy, images
        from .calibrate import sample

        size = int(self.exp["imgsz"])
        names = {int(k): v for k, v in self.exp["class_names"].items()}
        backend = scoring_backend(self.target)
        n = self.cfg.score_images
        cache = runs.cache_root(self.run_dir)
        if self.cfg.data:
            split = accuracy.read_split(self.cfg.data)
            keep = sample(list(range(len(split.images))), n or len(split.images), 1)
            split = accuracy.LabeledSplit([split.images[i] for i in keep], [split.labels[i] for i in keep],
                                          [split.shapes[i] for i in keep])
            imgs = images.preprocessed(split.images, size, cache, desc="labeled images")
            scorer = accuracy.Scorer(self.src, imgs.array, size, names, split=split, backend=backend,
                                     array_key=imgs.key, cache_dir=cache)
            where = f"{len(split.images)} labeled images of {self.cfg.data}"
        elif self.cfg.eval_dir:
            paths = sample(images.list_images(self.cfg.eval_dir), n or 64, 1)
            imgs = images.preprocessed(paths, size, cache, desc="held-out images")
            scorer = accuracy.Scorer(self.src, imgs.array, size, names, backend=backend, array_key=imgs.key,
                                     cache_dir=cache)
            where = f"{len(paths)} held-out images of {self.cfg.eval_dir} (no labels: pass data= for mAP)"
        else:
            arr = self.data[-min(len(self.data), n or 64):]
            scorer = accuracy.Scorer(self.src, arr, size, names, backend=backend)
            where = (f"{len(arr)} calibration images (no labels and no eval_dir: agreement with FP32 on the images the "
                     "scales came from; pass data= for mAP)")
        scorer.where = where
        return scorer

    def finalize(self, row: dict) -> dict:
        """Write the candidate as it would ship (INT8 weights behind DequantizeLinear, the FP32 model's metadata)."""
        from .quantize import copy_metadata

        final = self.work / f"final-{row['file']}"
        row["weights_int8"] = scales.int8_weights(self.work / row["file"], final)["weights_int8"]
        copy_metadata(self.src, final)
        row["final"] = final.name
        return row

    def score(self, row: dict) -> dict:
        t = time.perf_counter()
        self.finalize(row)
        row["drop_points"] = self.scorer.score(self.work / row["final"], row["file"])
        row["score_s"] = round(time.perf_counter() - t, 1)
        log.info("candidate %s %s: drop %.3f points", row["quantizer"], row["calibration"], row["drop_points"])
        from .ci.progress import step  # issue 24: console progress

        self._scored = getattr(self, "_scored", 0) + 1
        step("quantize", f"candidate {row['quantizer']} {row['calibration']}: drop {row['drop_points']:.3f} points",
             self._scored, getattr(self, "_planned", None))
        return row

    def plan(self) -> list:
        """Return the candidate builders in the order they are tried: each returns rows (built lazily)."""
        from .quantize import CANDIDATE_METHODS

        steps = []
        # A named calibration_method (max, entropy, percentile) is a ModelOpt calibration: with quantizer=auto it
        # means ModelOpt with that method; NNCF (its own range estimation) competes under auto, or when asked for.
        nncf_wanted = self.cfg.quantizer == "nncf" or (self.cfg.quantizer == "auto" and self.cfg.calibration_method == "auto")
        if self.target == "cpu" and nncf_wanted:
            import importlib.util

            if importlib.util.find_spec("nncf") is not None:
                # First on a CPU target: the peer's quantizer, asymmetric activations the CPU runtimes run natively.
                steps.append(("nncf mixed preset", lambda: [self.nncf()]))
            elif self.cfg.quantizer == "nncf":
                from .errors import QuantizeError

                raise QuantizeError("quantizer=nncf: the Python package 'nncf' is not installed "
                                    "(pip install 'yolo-compile[openvino]'), or use quantizer=modelopt")
            else:
                log.warning("NNCF is not installed (pip install 'yolo-compile[openvino]'): ModelOpt candidates only")
        if self.cfg.quantizer in ("auto", "modelopt"):
            for method in CANDIDATE_METHODS[self.cfg.calibration_method]:
                steps.append((f"modelopt {method}", lambda m=method: self.modelopt_method(m)))
        return steps

    def modelopt_method(self, method: str) -> list[dict]:
        """One ModelOpt candidate; the placement and the statistics pass run once, for the first."""
        if not hasattr(self, "template"):
            self.modelopt_setup()
        t = time.perf_counter()
        name = f"modelopt-{method}.onnx"
        scales.apply(self.template, scales.thresholds(self.stats, method), self.work / name)
        return [{"quantizer": "modelopt", "calibration": method, "file": name,
                 "build_s": round(time.perf_counter() - t, 1), **self.timing}]

    def run(self) -> dict:
        """Build and score the candidates in order; return the winning row (its files are in the work folder).

        With accept_drop > 0 the search stops at the first candidate whose measured drop is within it: the
        rest are listed as not tried, with the reason. Otherwise (or when none is within it) every candidate
        is scored, then a best-first recipe search (`recipe_search`) over extra float groups and per-group
        calibration from the scored ModelOpt methods, within search_budget candidates.
        """
        steps = self.plan()
        if not steps:
            from .errors import QuantizeError

            raise QuantizeError(f"quantizer={self.cfg.quantizer} has no candidate for target {self.target}")
        if len(steps) == 1:
            rows = steps[0][1]()
            self.finalize(rows[0])
            self.rows = [_public(rows[0])]
            self.chosen = {**_public(rows[0]), "why": "the only candidate asked for (no measurement needed)"}
            return rows[0]
        self.scorer = self.make_scorer()
        self._planned = len(steps) + (self.cfg.search_budget if self.cfg.accept_drop == 0 else 0)  # issue 24: progress
        rows, accepted, untried = [], None, []
        for label, build in steps:
            if accepted is not None:
                untried.append(label)
                continue
            for row in build():
                rows.append(self.score(row))
                if 0 < self.cfg.accept_drop and row["drop_points"] <= self.cfg.accept_drop and accepted is None:
                    accepted = row
        mo = sorted((r for r in rows if r["quantizer"] == "modelopt"), key=lambda r: r["drop_points"])
        self.search_summary = {}
        if accepted is None and mo and mo[0]["drop_points"] > 0 and self.cfg.search_budget > 0:
            rows += self.recipe_search(mo)
        rows.sort(key=lambda r: r["drop_points"])
        best = accepted or rows[0]
        # the runner-up whose score differs: a candidate with identical detections (a step the split cannot see) has
        # no difference to measure the noise of
        second = next((r for r in rows if r is not best and r["drop_points"] != best["drop_points"]),
                      next((r for r in rows if r is not best), None))
        noise = self.scorer.noise(best["file"], second["file"]) if second else self.scorer.noise(best["file"], "fp32")
        self.rows = [_public(r) for r in rows] + [{"quantizer": lbl.split()[0], "calibration": lbl.split(" ", 1)[1],
                                                   "not_tried": f"{accepted['quantizer']} {accepted['calibration']} was "
                                                                f"within accept_drop={self.cfg.accept_drop:g}"}
                                                  for lbl in untried]
        if accepted is not None:
            why = (f"first candidate within accept_drop={self.cfg.accept_drop:g} points: {best['drop_points']:.3f} "
                   f"(paired-bootstrap noise {noise:.3f}); {len(untried)} more not tried "
                   "(accept_drop=0 measures every candidate)")
        else:
            why = (f"smallest drop of {len(rows)} candidates"
                   + (f" (a recipe search scored {self.search_summary['scored']}: {self.search_summary['stopped']})"
                      if self.search_summary else "") + f": {best['drop_points']:.3f} points"
                   + (f" vs {second['drop_points']:.3f} for the runner-up; the difference "
                      f"{'exceeds' if second['drop_points'] - best['drop_points'] > 2 * noise else 'is within'}"
                      f" twice its paired-bootstrap noise ({noise:.3f})" if second else ""))
        self.chosen = {**_public(best), "score": self.scorer.kind, "images": self.scorer.where,
                       "backend": self.scorer.backend, "fp32_value": round(self.scorer.base, 3),
                       "runner_up": (f"{second['quantizer']} {second['calibration']} ({second['drop_points']:+.3f})"
                                     if second else ""),
                       "noise_points": noise, "accept_drop": self.cfg.accept_drop, "why": why}
        if self.search_summary:
            self.chosen["search"] = self.search_summary
        return best


def scoring_backend(target: str) -> str:
    """Return the runtime candidates are scored on: the one that ships for the target.

    CPU targets ship OpenVINO where installed (INT8 there beats FP32; ONNX Runtime INT8 is slower than FP32 on CPUs
    without VNNI). TensorRT targets: ONNX Runtime, whose Q/DQ arithmetic is the reference TensorRT follows.
    """
    from .backends import available

    return "openvino" if target == "cpu" and available("openvino")[0] else "onnxruntime"


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("file", "final")}
