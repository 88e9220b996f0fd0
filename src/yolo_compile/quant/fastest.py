"""objective=latency: build every candidate, time them all (cheap), score accuracy only where it can change the choice.

Timing a candidate costs ~2 s; scoring it costs a pass over the labeled split. So candidates are timed first and
scored fastest first, on the full split (the gate's figure): once one is within accept_drop it sets the pace, and
only the candidates that tie with it in speed are still scored (one of them may have a smaller drop); the slower
ones cannot win whatever their drop and are listed as not scored, with their speed (but for the runner-up: its drop
is measured so that the result names both its numbers). Where no candidate is within
the bar, the accuracy rule takes over (the recipe search, then the smallest drop), as with objective=accuracy.
"""

from __future__ import annotations

import logging

from yolo_compile.quant import choose, explain
from yolo_compile.quant.latency import tied

log = logging.getLogger(__name__)


def run_latency(search, steps) -> dict:
    """Return the winning row of a Search under the latency rule; set search.rows, .chosen and .pareto."""
    accept = search.cfg.accept_drop
    rows = [r for _, build in steps for r in build()]
    for r in rows:
        search.builders.finalize(r)
        search.time(r)
    pace = None
    for r in sorted(rows, key=lambda r: -r["images_per_s"]):
        if pace is not None and not tied(r, pace):
            continue  # slower than a candidate within the bar beyond noise: it cannot win
        search.score(r)
        if pace is None and r["drop_points"] <= accept:
            pace = r
    best, runner = choose.by_latency(rows, accept)
    if best is not None and runner is None:  # the runner-up's drop is measured too: the result names both its numbers
        nxt = next((r for r in sorted(rows, key=lambda r: -r["images_per_s"]) if "drop_points" not in r), None)
        if nxt is not None:
            search.score(nxt)
            best, runner = choose.by_latency(rows, accept)
    scored = [r for r in rows if "drop_points" in r]
    if best is None:  # nothing within the bar: the most accurate, with the recipe search where it can help
        mo = sorted((r for r in scored if r["quantizer"] == "modelopt"), key=lambda r: r["drop_points"])
        if mo and mo[0]["drop_points"] > 0 and search.cfg.search_budget > 0:
            rows += search.recipe_search(mo)
            scored = [r for r in rows if "drop_points" in r]
        best = min(scored, key=lambda r: (r["drop_points"], -r.get("images_per_s", 0)))
        runner = min((r for r in scored if r is not best), key=lambda r: r["drop_points"], default=None)
        why = (f"no candidate within accept_drop={accept:g} points: the smallest drop wins, "
               f"{best['drop_points']:.3f} at {best['images_per_s']:.1f} images/s"
               + (f"; runner-up {choose.label(runner)}: drop {runner['drop_points']:.3f}, "
                  f"{runner['images_per_s']:.1f} images/s" if runner else ""))
        for r in rows:
            if r is not best:
                r["lost"] = (f"larger drop: {r['drop_points']:.3f} vs {best['drop_points']:.3f} points" if "drop_points" in r
                             else "not scored")
    else:
        choose.why_lost(rows, best, accept)
        why = choose.explain(best, runner, search.fp32, accept, len(scored), len(rows))
    noise = search.scorer.noise(best["file"], runner["file"]) if runner and "drop_points" in runner else best["drop_noise"]
    verdict = choose.int8_verdict(best, search.fp32)
    search.rows = [explain.public(r) for r in sorted(rows, key=lambda r: -r["images_per_s"])]
    search.chosen = {**explain.public(best), "objective": "latency", "score": search.scorer.kind,
                     "images": search.scorer.where, "backend": search.scorer.backend,
                     "fp32_value": round(search.scorer.base, 3), "noise_points": noise, "accept_drop": accept,
                     "runner_up": (f"{choose.label(runner)} (drop {runner.get('drop_points', float('nan')):+.3f}, "
                                   f"{runner['images_per_s']:.1f} images/s)" if runner else ""),
                     "latency": search.timing_why, "fp32_images_per_s": search.fp32["images_per_s"],
                     "timing_s": round(search.bench.seconds, 1), "timing_waited_s": round(search.bench.waited_s, 1),
                     **verdict, "why": why}
    if search.search_summary:
        search.chosen["search"] = search.search_summary
    search.pareto = choose.pareto(rows, search.fp32, best)
    log.info("quantize (latency): %s", why)
    return best
