"""Why the quantize stage chose its candidate: the rows as the result shows them, and the explanation."""

from __future__ import annotations


def public(row: dict) -> dict:
    """Return a candidate row without its work-folder file names."""
    return {k: v for k, v in row.items() if k not in ("file", "final")}


def stopped_note(rows: list[dict]) -> str:
    """Return '; N stopped early ...' for candidates the sequential rule stopped before the full split, or ''."""
    stopped = [r for r in rows if r.get("scored_images")]
    if not stopped:
        return ""
    return (f"; {len(stopped)} stopped early, decisively outside the bar on part of the images ("
            + ", ".join(f"{r['calibration']}: {r['drop_points']:.3f} on {r['scored_images']}" for r in stopped) + ")")


def only_candidate(row: dict) -> tuple[list[dict], dict]:
    """Return (rows, chosen) when one candidate was asked for: nothing measured."""
    return [public(row)], {**public(row), "why": "the only candidate asked for (no measurement needed)"}


def choice(cfg, rows: list[dict], best: dict, second: dict | None, accepted: dict | None, untried: list[str],
           noise: float, scorer, search_summary: dict) -> tuple[list[dict], dict]:
    """Return (the rows as the result lists them, the chosen candidate with the score it won on and why)."""
    listed = [public(r) for r in rows] + [{"quantizer": lbl.split()[0], "calibration": lbl.split(" ", 1)[1],
                                           "not_tried": f"{accepted['quantizer']} {accepted['calibration']} was "
                                                        f"within accept_drop={cfg.accept_drop:g}"}
                                          for lbl in untried]
    if accepted is not None:
        why = (f"first candidate within accept_drop={cfg.accept_drop:g} points: {best['drop_points']:.3f} "
               f"(paired-bootstrap noise {noise:.3f}); {len(untried)} more not tried "
               "(accept_drop=0 measures every candidate)")
    else:
        why = (f"smallest drop of {len(rows)} candidates"
               + (f" (a recipe search scored {search_summary['scored']}: {search_summary['stopped']})"
                  if search_summary else "") + f": {best['drop_points']:.3f} points"
               + (f" vs {second['drop_points']:.3f} for the runner-up; the difference "
                  f"{'exceeds' if second['drop_points'] - best['drop_points'] > 2 * noise else 'is within'}"
                  f" twice its paired-bootstrap noise ({noise:.3f})" if second else ""))
    why += stopped_note(rows)
    chosen = {**public(best), "score": scorer.kind, "images": scorer.where,
              "backend": scorer.backend, "fp32_value": round(scorer.base, 3),
              "runner_up": (f"{second['quantizer']} {second['calibration']} ({second['drop_points']:+.3f})"
                            if second else ""),
              "noise_points": noise, "accept_drop": cfg.accept_drop, "why": why}
    if search_summary:
        chosen["search"] = search_summary
    return listed, chosen
