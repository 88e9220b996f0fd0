"""The quantize stage's choice: build every candidate (quantizer x calibration, per-group mixes), measure, keep the best.

The pieces: `builders` (the plan and how each candidate file is built), `scoring` (one scorer for all: mAP50-95 drop
on the labeled split, or agreement with FP32 without labels, on the runtime that ships for the target),
`recipe_search.best_first` (the search over float groups x per-group calibration), `explain` (the rows and why).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from yolo_compile import fileio
from yolo_compile.errors import QuantizeError
from yolo_compile.quant import explain
from yolo_compile.quant.builders import Builders, plan
from yolo_compile.quant.scoring import make_scorer

log = logging.getLogger(__name__)


class Search:
    """Candidates for one quantize run; `run()` returns the winning row, `rows` and `chosen` what the result shows."""

    def __init__(self, cfg, run_dir: Path, exp: dict, src: Path, work: Path, data: np.ndarray, exclude: list[str],
                 kept: list[str], hp_dtype: str, target: str, groups: dict | None = None):
        self.cfg, self.run_dir, self.exp, self.src, self.work, self.data = cfg, run_dir, exp, src, work, data
        self.target = target
        self.builders = Builders(run_dir, exp, src, work, data, exclude, kept, hp_dtype, groups)
        self.rows: list[dict] = []
        self.chosen: dict = {}
        self.pareto: list[dict] = []
        self.bench = self.bench_b1 = self.fp32 = None
        self.runtime, self.timing_why = None, ""
        self.scorer = None
        self.search_summary: dict = {}
        self.scored, self.planned = 0, None  # progress: candidates scored, and how many are planned

    def score(self, row: dict) -> dict:
        """Finalize a candidate (where not yet), time it, score it; the row gains drop_points, score_s, images_per_s."""
        t = time.perf_counter()
        if "final" not in row:
            self.builders.finalize(row)
        self.time(row)
        bar = self.cfg.accept_drop if self.cfg.accept_drop > 0 else None  # accept_drop=0 ranks all: every image
        row["drop_points"] = self.scorer.score(self.work / row["final"], row["file"], bar=bar)
        row["drop_noise"] = self.scorer.noise(row["file"], "fp32", rounds=20)
        stop = self.scorer.stopped.get(row["file"])
        if stop:
            row["scored_images"], row["stopped"] = f"{stop['images']} of {stop['of']}", stop["why"]
        row["score_s"] = round(time.perf_counter() - t, 1)
        log.info("candidate %s %s: drop %.3f points%s", row["quantizer"], row["calibration"], row["drop_points"],
                 f" ({stop['why']})" if stop else "")
        from ..progress import step  # console progress (a bar on a terminal, a line a step in CI logs)

        self.scored += 1
        step("quantize", f"candidate {row['quantizer']} {row['calibration']}: drop {row['drop_points']:.3f} points",
             self.scored, self.planned)
        return row

    def smallest_drop(self, rows: list[dict], key=lambda r: r["drop_points"]) -> dict:
        """Return the row smallest by key, scored on every image: a candidate that stopped early and leads is scored
        on the images it skipped first (its full figure may then fall behind another's)."""
        while True:
            best = min(rows, key=key)
            if best.get("file") not in self.scorer.stopped:
                return best
            best["drop_points"] = self.scorer.finish(self.work / best["final"], best["file"])
            best["drop_noise"] = self.scorer.noise(best["file"], "fp32", rounds=20)
            best.pop("scored_images", None)
            best["stopped"] = "stopped early; scored on every image when it led: the best there was"

    def recipe_search(self, roots: list[dict]) -> list[dict]:
        """Best-first search over extra float groups x per-group calibration from the scored uniform methods.

        Each candidate is built from the cached template and statistics (no recalibration) and scored like the
        others; a candidate that builds the same file as an earlier one is not scored again and costs no budget.
        Returns the new rows; `self.search_summary` says what the search did.
        """
        from yolo_compile.quant.recipe_search import Recipe, best_first, report
        from yolo_compile.quant.recipe_space import Space

        t0 = time.perf_counter()
        tpl = self.builders.template()
        methods = tuple(dict.fromkeys(r["calibration"] for r in roots))
        space = Space(self.src, tpl.path, tpl.raw_stats, self.builders.exclude, self.exp, self.builders.hp_dtype,
                      self.data, self.work, methods)
        by_recipe = {Recipe.of(r["calibration"]): r for r in roots}
        by_sha = {fileio.sha256(self.work / r["file"]): r for r in roots}
        new: list[dict] = []

        def score(recipe: Recipe) -> tuple[float, str | None]:
            name = f"search-{len(new) + 1:02d}.onnx"
            space.build(recipe, self.work / name)
            sha = fileio.sha256(self.work / name)
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

    def time(self, row: dict) -> None:
        """Time a finalized candidate (once) on the runtime that ships, paired with the fastest so far."""
        if self.bench is not None and "images_per_s" not in row:
            row.update(self.bench.measure(row["file"], self.work / row["final"]))
            self._batch1(row, self.work / row["final"])

    def _batch1(self, row: dict, path: Path) -> None:
        """deploy_batch > 1: time the model at batch 1 too, paired on its own bench (row['batch1'])."""
        if self.bench_b1 is not None:
            b1 = self.bench_b1.measure(row["file"], path)
            row["batch1"] = {k: b1[k] for k in ("images_per_s", "p50_ms", "speed_noise")}

    def start_timing(self) -> None:
        """Open the bench on the runtime that ships (none for TensorRT) and time FP32 first: a point on the front."""
        from yolo_compile import images
        from yolo_compile.quant.latency import Bench, shipping_runtime

        batch = self.cfg.deploy_batch
        self.runtime, self.timing_why = shipping_runtime(self.target, batch)
        if self.runtime is not None:
            x = images.to_float(np.asarray(self.data[:batch]))
            self.bench = Bench(self.runtime, x, batch=batch)
            self.bench_b1 = Bench(self.runtime, x[:1]) if batch > 1 else None
            self.fp32 = {"quantizer": "fp32", "calibration": "the float model", "file": "fp32"}
            self.fp32.update(self.bench.measure("fp32", self.src))
            self._batch1(self.fp32, self.src)

    def run(self) -> dict:
        """Build and score the candidates in order; return the winning row (its files are in the work folder).

        With accept_drop > 0 the search stops at the first candidate whose measured drop is within it: the
        rest are listed as not tried, with the reason. Otherwise (or when none is within it) every candidate
        is scored, then a best-first recipe search (`recipe_search`) over extra float groups and per-group
        calibration from the scored ModelOpt methods, within search_budget candidates.
        """
        steps = plan(self.cfg, self.target, self.builders)
        if not steps:
            raise QuantizeError(f"quantizer={self.cfg.quantizer} has no candidate for target {self.target}")
        if len(steps) == 1:
            rows = steps[0][1]()
            self.builders.finalize(rows[0])
            self.rows, self.chosen = explain.only_candidate(rows[0])
            return rows[0]
        # Not overlapped with the first build: tried (it saved 1.7 s of 47 on the reference, 13 s of 275 on 500 labeled
        # images), but in a kernel a thread's progress output races NNCF's rich display (RecursionError in IPython).
        self.scorer = make_scorer(self.cfg, self.run_dir, self.exp, self.src, self.data, self.target)
        self.planned = len(steps) + (self.cfg.search_budget if self.cfg.accept_drop == 0 else 0)
        self.start_timing()
        if self.cfg.objective == "latency" and self.cfg.accept_drop > 0 and self.bench is not None:
            from yolo_compile.quant.fastest import run_latency

            return run_latency(self, steps)
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
        if accepted is None and mo and mo[0]["drop_points"] > 0 and self.cfg.search_budget > 0:
            rows += self.recipe_search(mo)
        best = accepted or self.smallest_drop(rows)
        rows.sort(key=lambda r: r["drop_points"])
        # the runner-up whose score differs: a candidate with identical detections (a step the split cannot see) has
        # no difference to measure the noise of
        second = next((r for r in rows if r is not best and r["drop_points"] != best["drop_points"]),
                      next((r for r in rows if r is not best), None))
        noise = self.scorer.noise(best["file"], second["file"]) if second else self.scorer.noise(best["file"], "fp32")
        self.rows, self.chosen = explain.choice(self.cfg, rows, best, second, accepted, untried, noise, self.scorer,
                                                self.search_summary)
        self.chosen.update(objective="accuracy", latency=self.timing_why if self.bench is None else
                           f"timed on {self.runtime}, not used by the choice (objective={self.cfg.objective}, "
                           f"accept_drop={self.cfg.accept_drop:g})")
        if self.fp32 is not None:
            from yolo_compile.quant import choose

            self.chosen.update({k: v for k, v in choose.int8_verdict(best, self.fp32).items()} if "images_per_s" in best else {})
            self.pareto = choose.pareto(rows, self.fp32, best)
        return best
