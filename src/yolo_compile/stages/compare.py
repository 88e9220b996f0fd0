"""Stage 4: Polygraphy runs FP32 and quantized models on held-out real images; box and score channels judged apart."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolo_compile import fileio, images, runs
from yolo_compile.config import check_choice, check_positive, path_field
from yolo_compile.errors import CompareError, ConfigError, RunFolderError
from yolo_compile.evaluate.tensors import YoloCompareFunc

log = logging.getLogger(__name__)
STAGE = "compare"
STUDY_MODES = ("auto", "full", "off")


@dataclass(frozen=True)
class CompareConfig:
    eval_dir: str = path_field()  # held-out real images (never the calibration images)
    eval_images: int = 16  # how many to run; sampled with eval_seed
    eval_seed: int = 1  # sampling seed for the held-out images
    box_atol: float = 12.0  # gate: p99 |FP32 - quantized| of box coordinates (pixels) on confident anchors
    score_atol: float = 0.05  # gate: p99 |FP32 - quantized| of class scores (0..1) over all anchors
    conf: float = 0.25  # FP32 score above which an anchor's box is judged
    data: str = path_field("")  # labeled split (Ultralytics data.yaml) for mAP; empty skips task accuracy
    map_images: int = 0  # how many labeled images to evaluate; 0 means all
    map_drop_max: float = 1.0  # gate: largest allowed mAP50-95 drop, in points (0.01 mAP)
    f1_drop_max: float = 0.0  # gate (optional): largest allowed F1 drop at conf (IoU 0.5), in points; 0: reported, not gated
    reference_map: float = 0.0  # gate: mAP50-95 (0..1) the drop is measured from; 0: this model's FP32 (a QAT checkpoint: the original's, as qat prints)
    study: str = "auto"  # auto: recipes, sensitivity and recipe search only when the gate fails | full: always | off
    recipes: bool = True  # deprecated: recipes and sensitivity both false mean study off
    sensitivity: bool = True  # deprecated: see recipes
    search_steps: int = 6  # most groups the recipe search keeps in float before giving up
    study_workers: int = 1  # Ray tasks for the study's variants (1: serial; >1 or RAY_ADDRESS: Ray, same results)
    calib_sweep: tuple[int, ...] = ()  # calibration sizes to compare, e.g. 32,64,128 (each re-calibrates)
    gate_runtimes: tuple[str, ...] = ()  # more runtimes the mAP gate evaluates (onnxruntime, openvino) besides the one that ships

    def __post_init__(self) -> None:
        check_positive("eval_images", self.eval_images)
        check_positive("box_atol", self.box_atol)
        check_positive("score_atol", self.score_atol)
        check_positive("map_drop_max", self.map_drop_max)
        if self.f1_drop_max < 0:
            raise ConfigError(f"parameter 'f1_drop_max' = {self.f1_drop_max}: give points >= 0 (0 reports F1 without gating it)")
        if not 0.0 <= self.reference_map <= 1.0:
            raise ConfigError(f"parameter 'reference_map' = {self.reference_map}: give a mAP50-95 between 0 and 1 "
                              "(the original model's, for a QAT checkpoint), or 0 to judge against this model's FP32")
        check_choice("study", self.study, STUDY_MODES)
        if self.study_workers < 1:
            raise ConfigError(f"parameter 'study_workers' = {self.study_workers}: give 1 for the serial study or "
                               "more to run its variants as that many Ray tasks")
        if not self.recipes and not self.sensitivity:
            object.__setattr__(self, "study", "off")  # the old switches, kept so earlier command lines still run
        from yolo_compile.runtimes.registry import CPU_BACKENDS

        for name in self.gate_runtimes:
            check_choice("gate_runtimes", name, CPU_BACKENDS)
        if any(n < 1 for n in self.calib_sweep):
            raise CompareError(f"parameter 'calib_sweep' = {self.calib_sweep}: sizes must be positive")


@dataclass
class CompareResult:
    status: str
    passed: bool
    reasons: list
    images: int
    stats: dict = field(default_factory=dict)  # {output: {boxes: {...}, scores: {...}}}
    thresholds: dict = field(default_factory=dict)
    polygraphy: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)  # detections after NMS, quantized vs FP32, held-out images
    accuracy: dict = field(default_factory=dict)  # mAP of FP32 and quantized on the labeled split, drop, gate
    recipes: list = field(default_factory=list)  # all-INT8 / mixed / FP16-only side by side
    sensitivity: dict = field(default_factory=dict)  # ranked groups, recipe search, nodes_to_exclude
    calib_sweep: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # parts of the study not run, with the reason
    verified_backends: list = field(default_factory=list)  # runtimes on which the quantized model was checked
    verification: dict = field(default_factory=dict)  # backend -> what was checked on it
    next_step: str = ""  # when the gate failed after the recipe search: the QAT command to run next
    plot: str = ""
    plots: list = field(default_factory=list)
    seconds: float = 0.0


def held_out_images(folder: Path, n: int, seed: int, calib_sha: set[str]) -> list[Path]:
    """Return up to n images from folder, refusing any that the calibration set used (by sha256)."""
    from yolo_compile.images import sample

    if not folder.is_dir():
        raise CompareError(f"{folder}: held-out image folder not found; pass eval_dir=DIR with real frames not used for calibration")
    found = images.list_images(folder)
    if not found:
        raise CompareError(f"{folder}: holds no images; pass eval_dir=DIR with real held-out frames")
    chosen = sample(found, n, seed)
    reused = [p.name for p in chosen if fileio.sha256(p) in calib_sha]
    if reused:
        raise CompareError(
            f"{folder}: {len(reused)} image(s) were used for calibration (e.g. {reused[0]}); compare on held-out images only"
        )
    return chosen


@dataclass(frozen=True)
class RuntimeCheck:
    """One check that ran on one runtime: what it was (as the result's verification text says it) and its verdict."""

    text: str
    passed: bool


def at_threshold(study, run_dir: Path, quant: dict, backend: str, cfg: CompareConfig) -> dict:
    """Return precision, recall, F1 and detections above conf, FP32 vs quantized, per class (evaluate.threshold)."""
    from yolo_compile.evaluate import accuracy as acc
    from yolo_compile.evaluate import threshold

    got = {}
    for label, path in (("fp32", study.fp32), ("quantized", Path(run_dir) / quant["onnx"])):
        dets = acc.predict_cached(path, study.val, study.val_key, runs.cache_root(run_dir), backend=backend,
                                  desc=f"F1 {label} ({backend})")  # the gate's own detections, from the cache
        got[label] = threshold.at_threshold(dets, study.split, study.size, study.names, cfg.conf)
    return threshold.compare(got["fp32"], got["quantized"], cfg.conf, 0.5, cfg.f1_drop_max)


def runtime_checks(shipping: str, tensors_passed: bool, by_backend: dict, map_passed: list[str]) -> dict[str, list[RuntimeCheck]]:
    """Return the checks each runtime went through: the tensor comparison on the shipping runtime, the mAP gate on each
    runtime it evaluated. A runtime is verified when all of its checks passed (and, with a labeled split, the gate ran)."""
    checks = {shipping: [RuntimeCheck("Polygraphy tensor comparison and detection agreement", tensors_passed)]}
    for b, r in by_backend.items():
        ok = b in map_passed
        checks.setdefault(b, []).append(
            RuntimeCheck(f"mAP gate {'passed' if ok else 'FAILED'} (drop {r['drop_points']:.2f} points)", ok))
    return checks


def run(cfg: CompareConfig, run_dir: str | Path) -> CompareResult:
    """Run FP32 vs quantized through Polygraphy on held-out images, then task accuracy; gate on both."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc

    from yolo_compile.quant import study as study_mod
    from yolo_compile.quant import study_ray
    from yolo_compile.runtimes.registry import scoring_backend
    from yolo_compile.evaluate.detections import agreement, decode
    from yolo_compile.evaluate.polyrunner import BackendRunner

    run_dir = Path(run_dir)
    exp = runs.require_passed(run_dir, "export")
    quant = runs.require_passed(run_dir, "quantize")
    try:
        calib_sha = {f["sha256"] for f in runs.read_result(run_dir, "calibrate").get("files", [])}
    except RunFolderError:
        calib_sha = set()
    chosen = held_out_images(Path(cfg.eval_dir), cfg.eval_images, cfg.eval_seed, calib_sha)
    size, name = int(exp["imgsz"]), exp["input_name"]
    try:
        feeds = [{name: images.load_tensor(p, size)[None]} for p in chosen]
    except ValueError as e:
        raise CompareError(str(e)) from None
    func = YoloCompareFunc(cfg.box_atol, cfg.score_atol, cfg.conf)
    names = {int(k): v for k, v in exp["class_names"].items()}
    with runs.Timer() as t, contextlib.ExitStack() as stack:
        # FP32 on ONNX Runtime (the reference) against the quantized model on the runtime that ships for the target.
        shipping = scoring_backend(quant.get("target", "cpu"))
        quant_runner = (OnnxrtRunner(SessionFromOnnx(str(run_dir / quant["onnx"]), providers=["cpu"]),
                                     name=f"quant-{quant['recipe']}") if shipping == "onnxruntime" else
                        BackendRunner(shipping, run_dir / quant["onnx"], name, [1, 3, size, size], exp["output_name"],
                                      name=f"quant-{quant['recipe']}-{shipping}"))
        runners = [OnnxrtRunner(SessionFromOnnx(str(run_dir / exp["onnx"]), providers=["cpu"]), name="fp32"), quant_runner]
        results = Comparator.run(runners, data_loader=feeds)
        # Polygraphy's own per-output report (logged), with a tolerance wide enough to be informative only.
        standard = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=1e9, check_error_stat="median"))
        Comparator.compare_accuracy(results, compare_func=func)
        stats, reasons = func.summary()
        raw = [np.concatenate([np.asarray(it[exp["output_name"]]) for it in iters]) for _, iters in results]
        agree = agreement([decode(o, conf=cfg.conf) for o in raw[0]], [decode(o, conf=cfg.conf) for o in raw[1]],
                          names, conf=cfg.conf)
        study = stack.enter_context(study_mod.Study(cfg, run_dir, exp, quant, np.concatenate([f[name] for f in feeds]),
                                                    raw[0], calib_sha, fanout=study_ray.fan_out))
        accuracy = study.accuracy()
        if accuracy and not study.verified:
            reasons.append(f"mAP50-95 dropped {accuracy['drop_points']:.2f} points "
                           f"({(accuracy['reference'] or accuracy['fp32'])['map50_95']:.4f}"
                           f"{' (reference_map)' if accuracy['reference'] else ''} -> {accuracy['quantized']['map50_95']:.4f}) "
                           f"on {accuracy['backend']} > map_drop_max {cfg.map_drop_max}")
        if accuracy:
            accuracy["at_threshold"] = at_threshold(study, run_dir, quant, accuracy["backend"], cfg)
            if not accuracy["at_threshold"]["passed"]:
                th = accuracy["at_threshold"]
                reasons.append(f"F1 at conf {cfg.conf} dropped {th['f1_drop_points']:.2f} points ({th['fp32']['f1']:.4f} -> "
                               f"{th['quantized']['f1']:.4f}; detections above conf {th['fp32']['detections']} -> "
                               f"{th['quantized']['detections']}) > f1_drop_max {cfg.f1_drop_max}")
        deep = cfg.study == "full" or (cfg.study == "auto" and bool(reasons))
        recipes, sens, sweep = study.run(deep)
        # A runtime is verified when every check that ran on it passed: the build ships only a verified one.
        # With a labeled split, a runtime ships only where the mAP gate evaluated the model on it.
        by_backend = accuracy.get("by_backend") or {}
        checks = runtime_checks(shipping, not func.summary()[1], by_backend, study.verified)
        verified = [b for b, ran in checks.items() if all(c.passed for c in ran) and (not by_backend or b in by_backend)]
        verification = {b: "; ".join(c.text for c in ran) for b, ran in checks.items()}
    next_step = (sens.get("search") or {}).get("next_step", "") if reasons else ""
    plots = [_plot(func, run_dir / STAGE / "errors.png")] + study.plots
    result = CompareResult(
        status="passed" if not reasons else "failed", passed=not reasons, reasons=reasons, images=len(feeds),
        stats=stats, thresholds={"box_atol": cfg.box_atol, "score_atol": cfg.score_atol, "conf": cfg.conf,
                                 "map_drop_max": cfg.map_drop_max, "f1_drop_max": cfg.f1_drop_max},
        polygraphy={"runners": [r.name for r in runners], "standard_compare_passed": bool(standard),
                    "quantized_on": shipping},
        agreement=agree, accuracy=accuracy, recipes=recipes, sensitivity=sens, calib_sweep=sweep, skipped=study.skipped,
        verified_backends=sorted(verified) if not reasons else [], verification=verification,
        plot=f"{STAGE}/{plots[0].name}", plots=[f"{STAGE}/{p.name}" for p in plots], seconds=round(t.seconds, 2),
        next_step=next_step,
    )
    runs.write_result(run_dir, STAGE, result)
    if reasons:
        raise CompareError("accuracy gate failed: " + "; ".join(reasons) + " (loosen the thresholds only with evidence)"
                           + (f"; {next_step}" if next_step else ""))
    return result


def _plot(func: YoloCompareFunc, path: Path) -> Path:
    from yolo_compile import plots

    fig, axes = plots.subplots(1, 2, figsize=(9, 3.2))
    for ax, group, unit, atol in ((axes[0], "boxes", "px", func.box_atol), (axes[1], "scores", "", func.score_atol)):
        for name, groups in func.diffs.items():
            d = np.abs(np.concatenate(groups[group])) if groups[group] else np.zeros(1)
            d = d[np.isfinite(d)]
            ax.hist(d, bins=60, log=bool(d.size and d.max() > 0), alpha=0.7, label=name)
        ax.axvline(atol, color="red", linestyle="--", label=f"gate {atol}")
        ax.set_title(f"|FP32 - quantized| {group}")
        ax.set_xlabel(unit or "score")
        ax.legend(fontsize=7)
    return plots.save(fig, path)
