"""objective=latency: the fastest candidate within accept_drop, built, timed and scored in the order of expected speed.

Building an NNCF candidate costs ~12 s here, timing one ~2 s, scoring one a pass over the labeled split. So:
1. Candidates in the plan's order (fastest expected first: NNCF's performance preset) are built, timed on the
   runtime that ships and scored on the full split until one is within the bar: it sets the pace.
2. A variant of the pace that is faster by construction (its stem conv INT8 too: a graph edit, no calibration) is
   timed; it is scored only where it is faster beyond noise (it quantizes a superset of the pace's nodes, so as
   fast it could only tie the pace's drop up to noise, and ties go to the smaller drop).
3. Each later plan step (the mixed preset, the peer's) is first timed through a speed proxy (the pace with
   asymmetric activations: the same Q/DQ placement, the mixed preset's kernels) and built and scored only where
   that ties the pace: slower beyond noise, it cannot win whatever its drop. ModelOpt's candidates (symmetric INT8,
   TensorRT's kind) are the accuracy fallback and are not tried once a candidate is within the bar.
Where nothing is within the bar, the accuracy rule takes over (the recipe search, then the smallest drop).
"""

from __future__ import annotations

import logging

from yolo_compile.quant import choose, explain
from yolo_compile.quant.latency import load_summary, tied

log = logging.getLogger(__name__)


def _faster(row: dict, than: dict) -> bool:
    return row["images_per_s"] > than["images_per_s"] and not tied(row, than)


def run_latency(search, steps) -> dict:
    """Return the winning row of a Search under the latency rule; set search.rows, .chosen and .pareto."""
    accept, b = search.cfg.accept_drop, search.builders
    rows: list[dict] = []
    pace, pending = None, list(steps)
    while pending and pace is None:  # 1. until one candidate is within the bar
        label, build = pending.pop(0)
        if label.startswith("modelopt") and any(r["quantizer"] == "nncf" for r in rows):
            pending.insert(0, (label, build))
            break  # NNCF missed the bar: the ModelOpt candidates and the recipe search are the accuracy fallback
        for r in build():
            rows.append(search.score(r))
            if r["drop_points"] <= accept and (pace is None or _faster(r, pace)):
                pace = r
    if pace is None:
        return _fallback(search, rows, pending)
    if pace["quantizer"] == "nncf" and b.groups.get("stem") and not pace.get("int8_groups"):  # 2. faster by construction
        v = b.nncf_int8(pace, ("stem",))[0]
        b.finalize(v)
        search.time(v)
        rows.append(v)
        if _faster(v, pace):
            search.score(v)
            if v["drop_points"] <= accept:
                pace = v
        else:
            v["lost"] = (f"not scored: {v['images_per_s']:.1f} images/s, not faster beyond noise than "
                         f"{choose.label(pace)} ({pace['images_per_s']:.1f}), whose INT8 nodes it extends: as fast, "
                         "its drop could only tie up to noise")
    untried = []
    for label, build in pending:  # 3. later steps: timed through a proxy before they cost a build
        if not label.startswith("nncf"):
            untried.append(label)
            continue
        base = next(r for r in rows if r["quantizer"] == "nncf" and not r.get("int8_groups"))
        proxy = b.speed_proxy(base, label)
        search.time(proxy)
        if not (tied(proxy, pace) or _faster(proxy, pace)):
            rows.append({**proxy, "lost": (f"not built: its kernels, timed through a speed proxy ({base['calibration']} "
                                           f"with asymmetric activations), ran {proxy['images_per_s']:.1f} images/s, "
                                           f"slower beyond noise than {choose.label(pace)} "
                                           f"({pace['images_per_s']:.1f}): it could not win whatever its drop")})
            continue
        for r in build():
            rows.append(search.score(r))
    return _choose(search, rows, untried)


def _choose(search, rows: list[dict], untried: list[str] = ()) -> dict:
    """The latency rule over the scored rows (one is within the bar): the winner, why each other lost, the runner-up
    (FP32 where no other candidate has both numbers), and the plan steps not tried."""
    accept = search.cfg.accept_drop
    best, runner = choose.by_latency([r for r in rows if "drop_points" in r], accept)
    choose.why_lost(rows, best, accept)
    for label in untried:
        rows.append({"quantizer": label.split()[0], "calibration": label.split(" ", 1)[1],
                     "not_tried": f"{choose.label(best)} was within accept_drop={accept:g}: ModelOpt's candidates "
                                  "(symmetric INT8 like it) are the accuracy fallback"})
    runner = runner or {**search.fp32, "drop_points": 0.0, "lost": "the float model: INT8 was asked for"}
    return _finish(search, rows, best, runner, choose.explain(best, runner, search.fp32, accept, choose.tally(rows)))


def _fallback(search, rows: list[dict], pending) -> dict:
    """No candidate within the bar: the remaining steps and the recipe search, the smallest drop wins."""
    accept = search.cfg.accept_drop
    for _, build in pending:
        for r in build():
            rows.append(search.score(r))
    mo = sorted((r for r in rows if r["quantizer"] == "modelopt"), key=lambda r: r["drop_points"])
    if mo and mo[0]["drop_points"] > accept and search.cfg.search_budget > 0:
        rows += search.recipe_search(mo)
    scored = [r for r in rows if "drop_points" in r]
    if any(r["drop_points"] <= accept for r in scored):  # the recipe search (or ModelOpt) reached the bar
        return _choose(search, rows)
    best = search.smallest_drop(scored, key=lambda r: (r["drop_points"], -r.get("images_per_s", 0)))
    runner = min((r for r in scored if r is not best), key=lambda r: r["drop_points"], default=None)
    why = (f"no candidate within accept_drop={accept:g} points: the smallest drop wins, "
           f"{best['drop_points']:.3f} at {best['images_per_s']:.1f} images/s"
           + (f"; runner-up {choose.label(runner)}: drop {runner['drop_points']:.3f}, "
              f"{runner['images_per_s']:.1f} images/s" if runner else ""))
    for r in rows:
        if r is not best:
            r["lost"] = f"larger drop: {r['drop_points']:.3f} vs {best['drop_points']:.3f} points"
    return _finish(search, rows, best, runner, why)


def _finish(search, rows: list[dict], best: dict, runner: dict | None, why: str) -> dict:
    accept = search.cfg.accept_drop
    why += explain.stopped_note(rows)
    noise = (search.scorer.noise(best["file"], runner["file"]) if runner and "file" in runner and "drop_points" in runner
             else best["drop_noise"])
    verdict = choose.int8_verdict(best, search.fp32)
    load = load_summary(search.bench)
    if load["under_load"]:  # pairing cancels a load that slows both alike; a noisier timing widens the ties
        why += (f"; timed while other processes used {load['others_cores']:.2f} cores: speed noise widened, ties went "
                "to the smaller drop")
    search.rows = [explain.public(r) for r in sorted(rows, key=lambda r: -r.get("images_per_s", 0))]
    search.chosen = {**explain.public(best), "objective": "latency", "score": search.scorer.kind,
                     "images": search.scorer.where, "backend": search.scorer.backend,
                     "fp32_value": round(search.scorer.base, 3), "noise_points": noise, "accept_drop": accept,
                     "runner_up": (f"{choose.label(runner)} (drop {runner.get('drop_points', float('nan')):+.3f}, "
                                   f"{runner['images_per_s']:.1f} images/s)" if runner else ""),
                     "latency": search.timing_why, "fp32_images_per_s": search.fp32["images_per_s"],
                     "timing_s": round(search.bench.seconds, 1), "timing_waited_s": round(search.bench.waited_s, 1),
                     "timing_load": load, **verdict, "why": why}
    if search.search_summary:
        search.chosen["search"] = search.search_summary
    if "performance preset" in best["calibration"]:
        from yolo_compile.runs import int8_isa

        search.chosen["portability"] = (
            f"symmetric INT8 activations, chosen on a CPU with {int8_isa()}: a CPU without VNNI (AVX2) shifts them into "
            "the full u8 range and saturates (vpmaddubsw); measured on the reference detector such a CPU loses "
            "more (README, 'The latency objective'). Compile on the target CPU, or set objective=accuracy for the "
            "mixed preset, which holds on both")
    search.pareto = choose.pareto([r for r in rows if "proxy_of" not in r], search.fp32, best)
    log.info("quantize (latency): %s", why)
    return best
