"""The compare stage's accuracy study: mAP gate data, recipes side by side, layer sensitivity, calibration checks.

Variants of the quantized model are built the way the quantize stage built its candidates: ModelOpt places the
Q/DQ nodes from one image, and the activation scales come from the quantize stage's one-pass statistics
(`quantize/activations.npz`, per tensor), set straight into the graph. Measured on the reference detector
(all-INT8 from max calibration on 128 images): the earlier route (a TensorRT calibration cache imported by
ModelOpt) gave the same 70 scales bit for bit, for the identity and for six single-group variants, so the
variants were built right; their step scores were what misled (see `sensitivity.search`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from yolo_compile import fileio, images, runs
from yolo_compile.evaluate import accuracy
from yolo_compile.quant import scales
from yolo_compile.quant import variants
from yolo_compile.errors import CompareError, RunFolderError

log = logging.getLogger(__name__)


class Study:
    """Everything the compare stage measures beyond tensor errors, sharing one labeled array and one calibration.

    A context manager: entering reads the run folder and makes the private working copy of the FP32 model (the
    constructor does no I/O), leaving removes it. `fanout`, where given, is how the sensitivity's variants run in
    parallel: a callable (study) -> context manager yielding an executor with verdicts/drops/describe, or None for
    the serial study (study_ray.fan_out is the Ray one).
    """

    def __init__(self, cfg, run_dir: Path, exp: dict, quant: dict, eval_array: np.ndarray, fp32_eval: np.ndarray,
                 calib_sha: set[str], *, fanout=None):
        from yolo_compile.quant.sensitivity import OutputJudge

        self.cfg, self.run_dir, self.exp, self.quant = cfg, Path(run_dir), exp, quant
        self.dir = self.run_dir / "compare"
        self.size, self.input = int(exp["imgsz"]), exp["input_name"]
        self.names = {int(k): v for k, v in exp["class_names"].items()}
        self.eval_array, self.calib_sha = eval_array, calib_sha
        self.judge = OutputJudge(fp32_eval, self.names, conf=cfg.conf)
        self.fp32 = run_dir / exp["onnx"]
        self.plots: list[Path] = []
        self.skipped: list[str] = []
        self.split = self.val = None
        self.map_cache: dict[str, dict] = {}
        self.calib: dict | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.src = Path()  # the private copy of the FP32 model, made on entering
        self.stats = None
        self.noise = None
        # The study's variants score on ONNX Runtime, whose Q/DQ arithmetic is the reference. The gate measures the
        # runtime that ships for the target (OpenVINO on a CPU target where installed: runtimes.registry.scoring_backend),
        # plus any named in gate_runtimes (those installed), so the engine that ships is the model the gate evaluated.
        self.backend = "onnxruntime"
        self.gate_backends: list[str] = []
        self.verified: list[str] = []
        self.fanout = fanout
        self.fan = None  # the executor while the sensitivity runs in parallel (study_workers > 1 or a cluster)

    def __enter__(self) -> "Study":
        import shutil

        from yolo_compile.runtimes.registry import available, scoring_backend

        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.calib = runs.require_passed(self.run_dir, "calibrate")
        except RunFolderError:
            self.calib = None
        self.tmp = tempfile.TemporaryDirectory(prefix="yolo-study-")
        self.src = Path(self.tmp.name) / "model.onnx"  # ModelOpt works on a copy: export/ is never written
        shutil.copyfile(self.fp32, self.src)
        wanted = [scoring_backend(self.quant.get("target", "cpu"))] + list(getattr(self.cfg, "gate_runtimes", ()) or ())
        self.gate_backends = [b for b in dict.fromkeys(wanted) if available(b)[0]] or ["onnxruntime"]
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    # -- pieces ---------------------------------------------------------------------------------------
    def labeled(self) -> None:
        """Load the labeled split (refusing calibration images) into a memory-mapped array."""
        from yolo_compile.images import sample

        split = accuracy.read_split(self.cfg.data)
        keep = sample(list(range(len(split.images))), self.cfg.map_images or len(split.images), self.cfg.eval_seed)
        split = accuracy.LabeledSplit([split.images[i] for i in keep], [split.labels[i] for i in keep],
                                      [split.shapes[i] for i in keep])
        reused = [p.name for p in split.images if fileio.sha256(p) in self.calib_sha]
        if reused:
            raise CompareError(f"{self.cfg.data}: {len(reused)} labeled image(s) were used for calibration "
                               f"(e.g. {reused[0]}); evaluate on a split disjoint from calib_dir")
        cached = images.preprocessed(split.images, self.size, runs.cache_root(self.run_dir), desc="labeled images")
        self.val_stats, self.split, self.val, self.val_key = cached.stats, split, cached.array, cached.key

    def map_of(self, onnx_path: Path, label: str, backend: str = "onnxruntime") -> dict:
        """Return (and remember, by file and backend) the mAP of one model on the labeled split."""
        key = f"{backend}:{Path(onnx_path).resolve()}"
        if key not in self.map_cache:
            dets = accuracy.predict_cached(onnx_path, self.val, self.val_key, runs.cache_root(self.run_dir),
                                           backend=backend, desc=f"mAP {label} ({backend})")
            self.map_cache[key] = accuracy.evaluate(dets, self.split, self.size, self.names)
        return self.map_cache[key]

    def method(self) -> str:
        """Return the ModelOpt calibration (a scales.METHODS name) the quantize stage measured best."""
        mo = [r for r in self.quant.get("candidates", []) if r.get("quantizer") == "modelopt" and "drop_points" in r
              and r.get("calibration") in scales.METHODS]
        if mo:
            return min(mo, key=lambda r: r["drop_points"])["calibration"]
        m = self.quant.get("calibration_method")
        return {"percentile": "percentile-99.99"}.get(m, m) if m in scales.METHODS + ("percentile",) else "max"

    def quantize(self, dst: Path, n_images: int | None = None, *, exclude=None, include=None) -> Path:
        """ModelOpt places Q/DQ (one image); scales come from the activation statistics (of n_images if given)."""
        data = np.load(self.run_dir / self.calib["array"], mmap_mode="r")
        if n_images is not None:
            stats_of = lambda t: scales.collect(self.src, t, data[:n_images], desc=f"statistics of {n_images} images")  # noqa: E731
        else:
            stats_of = lambda t: self.statistics(t, data)  # noqa: E731
        return variants.build(self.src, dst, data, self.exp, self.hp_dtype, self.method(), stats_of, Path(self.tmp.name),
                              exclude=exclude, include=include)

    def statistics(self, tensors: list[str], data: np.ndarray) -> scales.ActivationStats:
        """Return per-tensor statistics covering tensors: the quantize stage's, plus one pass for any missing."""
        if self.stats is None:
            saved = self.run_dir / "quantize" / "activations.npz"
            self.stats = scales.ActivationStats.load(saved) if saved.is_file() else scales.ActivationStats({}, {}, {}, 0)
        return variants.complete(self.stats, self.src, tensors, data)

    @property
    def hp_dtype(self) -> str:
        return "fp16" if self.quant["target"] == "tensorrt" else "fp32"

    # -- the study ------------------------------------------------------------------------------------
    def accuracy(self) -> dict:
        """Return the mAP of FP32 and the quantized model on the labeled split, and the drop (empty without data)."""
        if not self.cfg.data:
            self.skipped.append("task accuracy and the mAP gate: no labeled split (pass data=path/to/data.yaml)")
            return {}
        self.labeled()
        by_backend, fp32_by = {}, {}
        for b in self.gate_backends:  # FP32 on the same runtime as the quantized model: the drop is the runtime's own
            fp32_by[b] = fp32_b = self.map_of(self.fp32, "fp32", backend=b)
            q = self.map_of(self.run_dir / self.quant["onnx"], self.quant["recipe"], backend=b)
            # A QAT checkpoint's own FP32 is not the bar (its float weights learned the INT8 grid): the original's is.
            base = self.cfg.reference_map or fp32_b["map50_95"]
            by_backend[b] = {"map50_95": q["map50_95"], "drop_points": round(100 * (base - q["map50_95"]), 3),
                             "drop_points_map50": round(100 * (fp32_b["map50"] - q["map50"]), 3), "quantized": q}
        self.verified = [b for b, r in by_backend.items() if r["drop_points"] <= self.cfg.map_drop_max]
        primary = next((b for b in self.gate_backends if b in self.verified), self.gate_backends[0])
        best, fp32 = by_backend[primary], fp32_by[primary]
        return {"data": str(self.cfg.data), "images": len(self.split.images), "fp32": fp32, "quantized": best["quantized"],
                "backend": primary, "drop_points": best["drop_points"], "drop_points_map50": best["drop_points_map50"],
                "by_backend": {b: {k: v for k, v in r.items() if k != "quantized"} for b, r in by_backend.items()},
                "reference": ({"map50_95": self.cfg.reference_map, "why": "reference_map: the drop is measured from the "
                               "original model's mAP50-95, not this checkpoint's own FP32"} if self.cfg.reference_map else {})}

    def run(self, deep: bool) -> tuple[list, dict, list]:
        """Return (recipes, sensitivity and search, calibration sweep); the first two only when deep."""
        recipes, sens, sweep = [], {}, []
        if deep and not self.calib:
            self.skipped.append("recipes and sensitivity: they need the calibrate stage's array, and it did not run")
        if not deep:
            self.skipped.append(f"recipes, sensitivity and recipe search: study={self.cfg.study}"
                                + (" and the gate passed" if self.cfg.study == "auto" else ""))
        int8_all = None
        if deep and self.calib:
            int8_all = self.quantize(self.dir / "model.int8_all.onnx")
            if self.split is not None:
                recipes = self.recipes(int8_all)
            with self.fanout(self) if self.fanout else contextlib.nullcontext() as fan:  # None: the serial study
                self.fan = fan
                try:
                    sens = self.sensitivity(int8_all)
                finally:
                    self.fan = None
        if self.cfg.calib_sweep and self.split is not None and self.calib:
            sweep = self.calibration_sweep()
        if self.calib and self.split is not None:
            self.plots.append(coverage_plot(self.calib, self.val_stats, self.dir / "coverage.png"))
        return recipes, sens, sweep

    def recipes(self, int8_all: Path | None) -> list[dict]:
        """mAP, agreement and size of FP32, FP16-only, the run's recipe and all-INT8, measured the same way."""
        from yolo_compile.quant.graph import decode_nodes
        from yolo_compile.quant.modelopt import convert_float

        fp16 = self.dir / "model.fp16.onnx"
        convert_float(self.fp32, fp16, "fp16", decode_nodes(self.fp32, self.exp))
        models = [("fp32", self.fp32), ("fp16 only", fp16),
                  (f"{self.quant['recipe']} (run's model, head {self.quant['high_precision_dtype']})",
                   self.run_dir / self.quant["onnx"])]
        if int8_all is not None:
            models.append(("all int8 (head quantized)", int8_all))
        base = self.map_of(self.fp32, "fp32")
        rows = []
        for label, path in models:
            m = self.map_of(path, label)
            j = self.judge.judge(images.run_onnx(path, self.eval_array, self.input))
            rows.append({"recipe": label, "map50_95": round(m["map50_95"], 4), "map50": round(m["map50"], 4),
                         "drop_points": round(100 * (base["map50_95"] - m["map50_95"]), 3),
                         "small_map50_95": m["small"]["map50_95"], "agreement_recall": round(j["recall"], 4),
                         "agreement_precision": round(j["precision"], 4), "bytes": path.stat().st_size})
        return rows

    def sensitivity(self, int8_all: Path) -> dict:
        """Rank layer groups from the all-INT8 model's scales; search the smallest float set passing the gate."""
        from yolo_compile.quant import sensitivity as sv
        from yolo_compile.quant.graph import inspect_qdq

        groups = sv.layer_groups(inspect_qdq(int8_all)[1], int(self.exp["head_index"]))
        baseline = self.judge.judge(images.run_onnx(int8_all, self.eval_array, self.input))

        def variant(exclude: list[str], include: list[str]) -> Path:
            fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=self.dir)
            os.close(fd)
            return self.quantize(Path(tmp), exclude=exclude, include=include)

        def outputs_of(exclude: list[str], include: list[str]) -> np.ndarray:
            path = variant(exclude, include)
            try:
                return images.run_onnx(path, self.eval_array, self.input)
            finally:
                path.unlink(missing_ok=True)

        ranked = (sv.rows(groups, self.fan.verdicts(groups), baseline["loss"]) if self.fan
                  else sv.rank(groups, outputs_of, self.judge, baseline["loss"]))
        self.plots.append(sv.plot(ranked, self.dir / "sensitivity.png"))
        out = {"groups": len(groups), "baseline_all_int8_loss": baseline["loss"], "ranked": ranked,
               "top5": [r["group"] for r in ranked[:5]]}
        if self.split is not None:
            base = self.map_of(self.fp32, "fp32")["map50_95"]
            kept_dets: dict[str, list] = {}

            def drop_of(exclude: list[str]) -> float:
                path = variant(exclude, [])
                try:
                    dets = accuracy.predict(path, self.val, self.input, desc="recipe search", backend=self.backend)
                    kept_dets[str(len(kept_dets))] = dets
                    return 100 * (base - accuracy.evaluate(dets, self.split, self.size, self.names)["map50_95"])
                finally:
                    path.unlink(missing_ok=True)

            # Ray tasks start on the first candidates (and those the search may ask next) while the noise is measured.
            drops = self.fan.drops(ranked, groups, self.cfg.search_steps) if self.fan else drop_of
            # The noise of one step: paired bootstrap over the labeled images of the run's model vs all-INT8.
            self.noise = self.step_noise(int8_all)
            out["search"] = sv.search(ranked, groups, drops, self.cfg.map_drop_max, self.cfg.search_steps,
                                      noise=self.noise)
            out["search"]["noise_points"] = self.noise
            if out["search"]["passed"]:
                path = fileio.write_json(self.dir / "nodes_to_exclude.json", out["search"]["nodes_to_exclude"])
                out["search"]["apply"] = (f"--set keep_float={path} --set calibration_method={self.method()} "
                                          "--set quantizer=modelopt")
            else:
                from yolo_compile.qat.recipe import next_step

                out["search"]["next_step"] = next_step(self.run_dir, self.cfg.data)
        if self.fan:
            out["ray"] = self.fan.describe()  # how it ran (workers, tasks); the scores are the serial study's
        return out

    def step_noise(self, int8_all: Path, rounds: int = 40) -> float:
        """Return the paired-bootstrap sd (points) of the mAP difference between the run's model and all-INT8."""
        a = accuracy.predict(self.run_dir / self.quant["onnx"], self.val, self.input, desc="noise: run's model", backend=self.backend)
        b = accuracy.predict(int8_all, self.val, self.input, desc="noise: all-INT8", backend=self.backend)
        ra = accuracy.matched(a, self.split, self.size)["all"]
        rb = accuracy.matched(b, self.split, self.size)["all"]
        rng = np.random.default_rng(0)
        n, diffs = len(a), []
        for _ in range(rounds):
            idx = rng.integers(0, n, n)
            ma = accuracy.map_of_rows(ra, idx)[0] or 0.0
            mb = accuracy.map_of_rows(rb, idx)[0] or 0.0
            diffs.append(100 * (ma - mb))
        return round(float(np.std(diffs)), 3)

    def calibration_sweep(self) -> list[dict]:
        """mAP drop of the run's recipe calibrated on the first n images, for each n in calib_sweep."""
        import onnx

        from yolo_compile.quant.graph import find_head, find_stem

        graph = onnx.load(str(self.fp32), load_external_data=False).graph
        kept = find_head(graph, int(self.exp["head_index"])).kept_float + find_stem(graph, self.input)
        exclude = [re.escape(n) + "$" for n in kept] if self.quant["recipe"] == "mixed" else []
        base = self.map_of(self.fp32, "fp32")["map50_95"]
        available = int(self.calib["shape"][0])
        rows = []
        for n in sorted(set(self.cfg.calib_sweep)):
            if n > available:
                rows.append({"images": n, "skipped": f"only {available} calibration images; raise calib_images"})
                continue
            path = self.dir / f"sweep_{n}.onnx"
            with runs.Timer() as t:
                self.quantize(path, n, exclude=exclude)
            m = accuracy.evaluate(accuracy.predict(path, self.val, self.input, desc=f"sweep {n}"), self.split,
                                  self.size, self.names)
            path.unlink()
            rows.append({"images": n, "map50_95": round(m["map50_95"], 4),
                         "drop_points": round(100 * (base - m["map50_95"]), 3), "calibration_s": round(t.seconds, 1)})
        return rows


def coverage_plot(calib: dict, val_stats: list[dict], path: Path) -> Path:
    """Histograms of brightness and contrast: calibration set against the labeled split."""
    from yolo_compile import plots

    fig, axes = plots.subplots(1, 2, figsize=(9, 3))
    for ax, key, ckey in ((axes[0], "mean", "brightness"), (axes[1], "std", "contrast")):
        ax.hist(calib.get(ckey, []), bins=20, alpha=0.6, density=True, label=f"calibration ({len(calib.get(ckey, []))})")
        ax.hist([s[key] for s in val_stats], bins=20, alpha=0.6, density=True, label=f"validation ({len(val_stats)})")
        ax.set_title(f"{ckey} (preprocessed pixel {key})")
        ax.legend(fontsize=7)
    return plots.save(fig, path)
