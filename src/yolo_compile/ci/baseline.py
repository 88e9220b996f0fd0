"""The baseline regression gate: this run's shipped model against an earlier (accepted) run's, paired.

Both models are evaluated on the same labeled images in this process, and both shipped engines are timed
interleaved (A B, B A, ...) in this process, so day-to-day and machine-load noise cancels instead of being
compared. A check regresses only when its change is past its threshold *and* past the measured noise:

- mAP50-95: paired bootstrap over images (the same resample for both models); regressed when the drop against the
  baseline exceeds `regress_map_max` points and twice the bootstrap's standard deviation.
- latency (batch 1 on the shipped runtime): rounds of interleaved timings (the order alternates); regressed when the
  one-sided 95% lower bound of the median per-round ratio new/baseline (bootstrap over rounds) exceeds
  `regress_latency_max`: a slowdown the measurement cannot tell from noise is reported, not failed.
- size: the shipped file's bytes; regressed when new/baseline exceeds `regress_size_max` (no noise: bytes are bytes).

An equal recompile gives the same files, hence a mAP difference of exactly 0 and a size ratio of 1.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import fileio, runs
from ..errors import ConfigError, RunFolderError

log = logging.getLogger(__name__)
ACCEPTED = "accepted.json"  # in the folder of run folders (artifacts/runs/accepted.json by default)
KEYS = ("regress_map_max", "regress_latency_max", "regress_size_max")


@dataclass(frozen=True)
class BaselineConfig:
    baseline: str  # RUN (a name under the runs folder), DIR (a run folder) or 'accepted'
    regress_map_max: float = 0.5  # largest allowed mAP50-95 drop against the baseline, points (beyond 2x noise)
    regress_latency_max: float = 1.25  # largest allowed latency ratio new/baseline (median of interleaved rounds)
    regress_size_max: float = 1.10  # largest allowed size ratio new/baseline of the shipped file

    def __post_init__(self) -> None:
        for k in KEYS:
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{k} = {v!r}: give a positive number (e.g. {k}={getattr(BaselineConfig, k)})")


def take(wf: dict, overrides: dict, artifacts=None) -> dict:
    """Move --baseline / regress_* out of the stage overrides into wf['baseline'] (resolved); return the rest.

    A workflow file may carry `baseline: accepted` or `baseline: {baseline: accepted, regress_map_max: 0.3}`.
    """
    from .. import resources

    rest = dict(overrides)
    given = wf.get("baseline") or {}
    given = {"baseline": given} if isinstance(given, str) else dict(given)
    for k in ("baseline", *KEYS):
        if k in rest:
            given[k] = rest.pop(k)
    if not given.get("baseline"):
        if any(k in given for k in KEYS):
            raise ConfigError(f"{', '.join(k for k in KEYS if k in given)} given without a baseline: add "
                              "--baseline RUN|DIR|accepted")
        wf["baseline"] = None
        return rest
    for k in KEYS:
        if isinstance(given.get(k), str):
            try:
                given[k] = float(given[k])
            except ValueError:
                raise ConfigError(f"{k} = {given[k]!r}: give a number") from None
    unknown = set(given) - {"baseline", *KEYS}
    if unknown:
        raise ConfigError(f"baseline: unknown key(s) {', '.join(sorted(unknown))}; expected baseline, {', '.join(KEYS)}")
    cfg = BaselineConfig(**given)
    run = resolve(cfg.baseline, resources.runs_root(artifacts))
    wf["baseline"] = {**asdict(cfg), "run_dir": str(run)}
    return rest


def accepted_file(root: Path) -> Path:
    """Return where the accepted baseline is recorded for a folder of run folders."""
    return Path(root) / ACCEPTED


def resolve(spec: str, root: Path) -> Path:
    """Return the run folder a baseline names; it must have passed and still verify against its manifest."""
    from ..report.archive import verify_run

    spec = str(spec)
    if spec == "accepted":
        f = accepted_file(root)
        if not f.is_file():
            raise ConfigError(f"--baseline accepted: no {f}; accept a run first: yolo-compile accept RUN")
        rec = json.loads(f.read_text())
        run = Path(rec["run_dir"])
        if not run.is_dir():
            run = Path(root) / rec["run"]
        if (run / runs.MANIFEST).is_file() and fileio.sha256(run / runs.MANIFEST) != rec.get("manifest_sha256"):
            raise ConfigError(f"{run}: its manifest.json changed since it was accepted ({f}); accept it again if that was you")
    else:
        run = Path(spec) if Path(spec).is_dir() else Path(root) / spec
    run = run.resolve()
    if not (run / runs.MANIFEST).is_file():
        raise ConfigError(f"--baseline {spec}: {run} is not a run folder (no manifest.json); name a run under {root} or a folder")
    m = runs.read_manifest(run)
    if m.get("status") != "passed":
        raise ConfigError(f"--baseline {spec}: {run.name} has status {m.get('status')!r}; a baseline must have passed")
    problems = verify_run(run)
    if problems:
        raise ConfigError(f"--baseline {spec}: {run.name} no longer verifies ({problems[0]}); its files are not the ones it measured")
    return run


def accept(run: Path, root: Path) -> Path:
    """Record run as the accepted baseline of root (atomically); it must have passed, not regressed, and verify."""
    run = resolve(str(run), root)
    m = runs.read_manifest(run)
    if (m.get("regression") or {}).get("regressed"):
        raise ConfigError(f"{run.name} regressed against its own baseline: {m['regression']['summary']}; not accepted")
    rec = {"run": run.name, "run_dir": str(run), "accepted_utc": runs.utc_now(),
           "manifest_sha256": fileio.sha256(run / runs.MANIFEST), "workflow": m.get("workflow"),
           "model_sha256": ((m.get("inputs") or {}).get("model") or {}).get("sha256")}
    return fileio.write_json(accepted_file(root), rec)


# -- the comparison --------------------------------------------------------------------------------------
def _shipped(run: Path) -> tuple[Path, str, int]:
    """Return (file, runtime, bytes) of what a run ships: its built engine, else its quantized model."""
    from ..runtimes.registry import scoring_backend

    q = runs.read_result(run, "quantize")
    try:
        b = runs.read_result(run, "build")
    except RunFolderError:
        b = {}
    if b.get("status") == "passed" and b.get("engine") and b.get("backend") not in ("", "none"):
        path = run / b["engine"]
        return path, b["backend"], int(b.get("engine_bytes") or path.stat().st_size)
    return run / q["onnx"], scoring_backend(q.get("target", "cpu")), int(q.get("onnx_bytes") or (run / q["onnx"]).stat().st_size)


def _check(name: str, regressed: bool | None, message: str, **values) -> dict:
    return {"name": name, "status": "skipped" if regressed is None else "failed" if regressed else "passed",
            "message": message, **values}


def map_check(run: Path, base: Path, params: dict, cfg: BaselineConfig, rounds: int = 200) -> dict:
    """Return the mAP check: both quantized models on this run's labeled split, paired bootstrap over images."""
    from .. import images
    from ..evaluate import accuracy
    from ..images import sample
    from ..runtimes.registry import scoring_backend

    if not params.get("data"):
        return _check("mAP50-95", None, "no labeled split (data=): mAP not compared")
    exp, q, bq = runs.read_result(run, "export"), runs.read_result(run, "quantize"), runs.read_result(base, "quantize")
    size = int(exp["imgsz"])
    bsize = int(runs.read_result(base, "export")["imgsz"])
    if bsize != size:
        return _check("mAP50-95", True, f"image size {size} vs the baseline's {bsize}: not the same model input")
    split = accuracy.read_split(params["data"])
    keep = sample(list(range(len(split.images))), int(params.get("map_images") or 0) or len(split.images),
                  int(params.get("eval_seed", 1)))
    split = accuracy.LabeledSplit([split.images[i] for i in keep], [split.labels[i] for i in keep],
                                  [split.shapes[i] for i in keep])
    cache = runs.cache_root(run)
    pre = images.preprocessed(split.images, size, cache, desc="labeled images")
    backend = scoring_backend(q.get("target", "cpu"))
    rows = {}
    for label, r, qq in (("new", run, q), ("baseline", base, bq)):
        dets = accuracy.predict_cached(r / qq["onnx"], pre.array, pre.key, cache, backend=backend, desc=f"vs baseline: {label}")
        rows[label] = accuracy.matched(dets, split, size)["all"]
    value = {k: 100 * (accuracy.map_of_rows(v)[0] or 0.0) for k, v in rows.items()}
    drop = value["baseline"] - value["new"]
    rng = np.random.default_rng(0)
    n = len(split.images)
    diffs = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        diffs.append(100 * ((accuracy.map_of_rows(rows["baseline"], idx)[0] or 0) - (accuracy.map_of_rows(rows["new"], idx)[0] or 0)))
    noise = float(np.std(diffs))
    regressed = drop > cfg.regress_map_max and drop > 2 * noise
    msg = (f"mAP50-95 {value['baseline'] / 100:.4f} (baseline) -> {value['new'] / 100:.4f}: "
           f"{'drop' if drop >= 0 else 'gain'} {abs(drop):.2f} points (paired-bootstrap noise {noise:.2f}, "
           f"{n} images, {backend}); regress_map_max {cfg.regress_map_max}")
    return _check("mAP50-95", regressed, msg, baseline=value["baseline"], new=value["new"], drop_points=round(drop, 4),
                  noise_points=round(noise, 4), images=n, backend=backend)


def latency_check(run: Path, base: Path, cfg: BaselineConfig, rounds: int = 21, block_s: float = 0.02) -> dict:
    """Return the latency check: both shipped engines at batch 1, timed interleaved in this process.

    Each round times a block of calls of one engine, then of the other (the order alternates), so a load change on the
    machine hits both alike; the per-round ratios new/baseline give the median and, by bootstrap over rounds, its
    one-sided 95% lower bound. Only a lower bound past `regress_latency_max` is a regression.
    """
    from ..runtimes.registry import open_runner

    (a, a_rt, _), (b, b_rt, _) = _shipped(run), _shipped(base)
    size = int(runs.read_result(run, "export")["imgsz"])
    if int(runs.read_result(base, "export")["imgsz"]) != size:
        return _check("latency", None, "not timed: the baseline takes another image size")
    try:
        ra, rb = open_runner(a_rt, a), open_runner(b_rt, b)
    except Exception as e:  # noqa: BLE001  a TensorRT engine on a CPU host: say so, do not guess
        return _check("latency", None, f"not timed here: {e}")
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    fa, fb = ra.prepare(x), rb.prepare(x)
    for f in (fa, fb, fa, fb):  # warm-up: first calls compile and allocate
        f()
    t0 = time.perf_counter()
    for f in (fa, fb, fa, fb):
        f()
    per_round = max(3, min(1000, int(block_s / max((time.perf_counter() - t0) / 4, 1e-6))))

    def timed(f) -> float:
        t = time.perf_counter()
        for _ in range(per_round):
            f()
        return (time.perf_counter() - t) / per_round

    ratios, ta, tb = [], [], []
    for i in range(rounds):
        if i % 2:
            tbi, tai = timed(fb), timed(fa)
        else:
            tai, tbi = timed(fa), timed(fb)
        ta.append(tai)
        tb.append(tbi)
        ratios.append(tai / tbi)
    r = np.array(ratios)
    ratio = float(np.median(r))
    boot = np.median(r[np.random.default_rng(0).integers(0, len(r), (500, len(r)))], axis=1)
    low = float(np.quantile(boot, 0.05))
    slower = float(np.mean(r > 1.0))
    regressed = low > cfg.regress_latency_max
    msg = (f"latency {np.median(tb) * 1e3:.2f} ms (baseline, {b_rt}) -> {np.median(ta) * 1e3:.2f} ms ({a_rt}) at batch 1: "
           f"{ratio:.2f}x, at least {low:.2f}x (95%) over {rounds} interleaved rounds of {per_round} calls; "
           f"regress_latency_max {cfg.regress_latency_max}")
    return _check("latency", regressed, msg, ratio=round(ratio, 4), ratio_low=round(low, 4), new_ms=float(np.median(ta) * 1e3),
                  baseline_ms=float(np.median(tb) * 1e3), rounds=rounds, calls_per_round=per_round, share_slower=slower)


def size_check(run: Path, base: Path, cfg: BaselineConfig) -> dict:
    """Return the size check: bytes of the shipped file, new over baseline."""
    (a, a_rt, na), (b, b_rt, nb) = _shipped(run), _shipped(base)
    ratio = na / nb if nb else float("inf")
    return _check("size", ratio > cfg.regress_size_max,
                  f"size {nb / 2**20:.2f} MB (baseline {b.name}) -> {na / 2**20:.2f} MB ({a.name}): {ratio:.3f}x; "
                  f"regress_size_max {cfg.regress_size_max}", ratio=round(ratio, 4), new_bytes=na, baseline_bytes=nb)


def compare(run_dir: str | Path, spec: dict, params: dict[str, Any]) -> dict:
    """Return the regression record for the manifest: the baseline, thresholds, each check, regressed or not."""
    run, base = Path(run_dir), Path(spec["run_dir"])
    cfg = BaselineConfig(**{k: spec[k] for k in ("baseline", *KEYS)})
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"baseline": str(base), "spec": cfg.baseline, "thresholds": {k: getattr(cfg, k) for k in KEYS}}
    try:
        checks = [map_check(run, base, params, cfg), latency_check(run, base, cfg), size_check(run, base, cfg)]
    except Exception as e:  # noqa: BLE001  an unreadable baseline fails the comparison, loudly, not the run's files
        log.error("comparison with the baseline %s failed: %s: %s", base.name, type(e).__name__, e)
        rec.update(error=f"could not compare with the baseline {base.name}: {type(e).__name__}: {e}", checks=[],
                   regressed=False, summary="comparison failed")
        return rec
    bad = [c for c in checks if c["status"] == "failed"]
    rec.update(checks=checks, regressed=bool(bad), seconds=round(time.perf_counter() - t0, 2),
               summary="; ".join(c["message"] for c in bad) if bad else f"no regression against {base.name}")
    return rec
