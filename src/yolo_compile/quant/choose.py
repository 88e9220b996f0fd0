"""The latency objective's rule over timed, scored rows: the fastest within the bar, the smaller drop among ties.

Pure functions of the rows (no models run here), so the rule is tested on numbers and explained in words: every
candidate that did not win gets `lost`, the winner's explanation names the runner-up's drop and speed, and FP32
is a point on the same front (where INT8 buys no speed on this CPU, the result says so).
"""

from __future__ import annotations

from yolo_compile.quant.latency import tied


def label(row: dict) -> str:
    """Return a candidate's name as the result lists it."""
    cal = row["calibration"]
    return cal if cal.startswith(row["quantizer"]) else f"{row['quantizer']} {cal}"


def _speed(row: dict) -> str:
    return f"{row['images_per_s']:.1f} images/s"


def by_latency(rows: list[dict], accept: float) -> tuple[dict | None, dict | None]:
    """Return (winner, runner-up) under the latency rule, or (None, None) when no scored row is within accept.

    The fastest row within accept sets the pace; among the rows within accept that tie with it in speed (within
    noise) the smallest drop wins (then the faster). Rows not scored (slower than the pace beyond noise) never win.
    """
    ok = [r for r in rows if "drop_points" in r and r["drop_points"] <= accept and "images_per_s" in r]
    if not ok:
        return None, None
    pace = max(ok, key=lambda r: r["images_per_s"])
    rank = lambda r: (not tied(r, pace), r["drop_points"], -r["images_per_s"])  # noqa: E731
    ordered = sorted(ok, key=rank)
    runner = ordered[1] if len(ordered) > 1 else next(
        (r for r in sorted(rows, key=lambda r: -r.get("images_per_s", 0)) if r is not ordered[0] and "drop_points" in r),
        None)
    return ordered[0], runner


def why_lost(rows: list[dict], best: dict, accept: float) -> None:
    """Set `lost` on every row but the winner: over the bar, slower beyond noise, or as fast with a larger drop."""
    ok = [r for r in rows if r.get("drop_points") is not None and r["drop_points"] <= accept and "images_per_s" in r]
    pace = max(ok, key=lambda r: r["images_per_s"], default=best)  # the fastest within the bar
    for r in rows:
        if r is best:
            continue
        if "drop_points" not in r:
            r.setdefault("lost", f"not scored: {_speed(r)}, slower beyond noise than {label(pace)} ({_speed(pace)}, "
                                 f"the fastest within the bar), so it could not win whatever its drop")
        elif r["drop_points"] > accept:
            r["lost"] = f"drop {r['drop_points']:.3f} points > accept_drop={accept:g}"
        elif "images_per_s" in r and not tied(r, best) and r["images_per_s"] < best["images_per_s"]:
            r["lost"] = (f"slower: {_speed(r)} vs {_speed(best)} (beyond speed noise "
                         f"{max(r.get('speed_noise', 0), best.get('speed_noise', 0)):.0%})")
        else:
            r["lost"] = (f"as fast within noise ({_speed(r)} vs {_speed(best)}) with "
                         + (f"a larger drop: {r['drop_points']:.3f} vs {best['drop_points']:.3f} points"
                            if r["drop_points"] > best["drop_points"] else
                            f"the same drop ({r['drop_points']:.3f} points) and a lower speed"))


def tally(rows: list[dict]) -> str:
    """Return what the search did with its candidates: scored, timed only, timed through a proxy, not tried."""
    n = {"scored on the full split": sum("drop_points" in r for r in rows),
         "timed, not scored (not faster beyond noise)": sum("drop_points" not in r and "images_per_s" in r
                                                            and "proxy_of" not in r for r in rows),
         "timed through a speed proxy, not built": sum("proxy_of" in r for r in rows),
         "not tried": sum("not_tried" in r for r in rows)}
    return ", ".join(f"{v} {k}" for k, v in n.items() if v)


def explain(best: dict, runner: dict | None, fp32: dict, accept: float, done: str) -> str:
    """Return why the latency objective chose best, with the runner-up's drop and speed; done: `tally`'s words."""
    text = (f"fastest candidate within accept_drop={accept:g} points: {label(best)}, {_speed(best)}, drop "
            f"{best['drop_points']:.3f}")
    if runner is not None:
        text += (f"; runner-up {label(runner)}: {_speed(runner)}, drop {runner['drop_points']:.3f} "
                 f"({runner.get('lost', '')})")
    return text + f"; candidates: {done}; " + int8_verdict(best, fp32)["says"]


def int8_verdict(best: dict, fp32: dict) -> dict:
    """Return {speedup, buys_speed, says}: the winner's speed over the FP32 model on the same runtime."""
    speedup = round(best["images_per_s"] / fp32["images_per_s"], 3)
    buys = speedup > 1 and not tied(best, fp32)
    says = (f"INT8 is {speedup:.2f}x FP32 ({fp32['images_per_s']:.1f} images/s) on this CPU" if buys else
            f"INT8 buys no speed on this CPU: {speedup:.2f}x FP32 ({fp32['images_per_s']:.1f} images/s, within "
            f"noise or slower); the float engine is offered (recipe=float), it ships only if asked")
    return {"speedup_vs_fp32": speedup, "int8_buys_speed": buys, "says": says}


def pareto(rows: list[dict], fp32: dict, best: dict | None) -> list[dict]:
    """Return the front's points: one per timed candidate and FP32 (drop, images/s, their noises, chosen, lost)."""
    pts = [{"candidate": "fp32", "drop_points": 0.0, "images_per_s": fp32["images_per_s"],
            "speed_noise": fp32.get("speed_noise", 0), "drop_noise": 0.0, "chosen": False, "why": "the float model",
            **_batch1(fp32)}]
    for r in rows:
        if "images_per_s" in r:
            pts.append({"candidate": label(r), "drop_points": r.get("drop_points"), "images_per_s": r["images_per_s"],
                        "speed_noise": r.get("speed_noise", 0), "drop_noise": r.get("drop_noise"),
                        "chosen": r is best, "why": "chosen" if r is best else r.get("lost", ""), **_batch1(r)})
    return pts


def _batch1(row: dict) -> dict:
    """The point's batch and, where the deployment batch is larger, its batch-1 images/s."""
    out = {"batch": row.get("batch", 1)}
    if "batch1" in row:
        out["batch1_images_per_s"] = row["batch1"]["images_per_s"]
    return out
