"""Layer sensitivity: which layer groups hurt when quantized, and the smallest float set that passes the gate.

All variants reuse the scales of one full calibration (written as a TensorRT-style calibration cache that
ModelOpt reads), so a variant costs one ModelOpt pass over a single image instead of a new calibration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from yolo_compile.evaluate.detections import agreement, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """A layer group: one backbone/neck module, one head branch, or the DFL."""

    name: str
    nodes: tuple[str, ...]

    @property
    def patterns(self) -> list[str]:
        """Exact-name regexes for ModelOpt's nodes_to_exclude / nodes_to_quantize."""
        return [re.escape(n) + "$" for n in self.nodes]


def layer_groups(quantized_nodes: list[str], head_index: int) -> list[Group]:
    """Group quantized node names by Ultralytics module (/model.i/), splitting the head into branches."""
    groups: dict[str, list[str]] = {}
    head = re.compile(rf"/model\.{head_index}/(cv[23]\.\d+|dfl)/")
    module = re.compile(r"/model\.(\d+)/")
    for name in quantized_nodes:
        if m := head.match(name):
            groups.setdefault(f"head {m.group(1)}", []).append(name)
        elif m := module.match(name):
            groups.setdefault(f"model.{m.group(1)}", []).append(name)
    order = lambda k: (k.startswith("head"), int(k.split(".")[1]) if not k.startswith("head") else 0, k)  # noqa: E731
    return [Group(k, tuple(groups[k])) for k in sorted(groups, key=order)]


class OutputJudge:
    """Scores a model's raw outputs on a few held-out images against FP32's, without labels."""

    def __init__(self, fp32_outputs: np.ndarray, names: dict, conf: float = 0.25):
        self.ref = fp32_outputs
        self.names, self.conf = names, conf
        self.ref_dets = [decode(o, conf=conf) for o in fp32_outputs]
        self.floor = 0.0
        self.floor = self.judge(fp32_outputs)["loss"]  # FP32 against itself: AP interpolation tops out below 1

    def judge(self, outputs: np.ndarray) -> dict:
        """Return loss (100 x (1 - mAP50-95 against FP32's detections), FP32's own floor removed), agreement, errors."""
        from yolo_compile.evaluate.accuracy import agreement_map

        low = [decode(o) for o in outputs]
        agree = agreement(self.ref_dets, low, self.names, conf=self.conf)["all"]
        mask = self.ref[:, 4:].max(1) >= self.conf
        box = np.abs(self.ref[:, :4] - outputs[:, :4]).transpose(0, 2, 1)[mask]
        return {"loss": round(100 * (1 - agreement_map(self.ref_dets, low, self.conf)) - self.floor, 3),
                "recall": agree["recall"], "precision": agree["precision"],
                "box_p99": float(np.quantile(box, 0.99)) if box.size else 0.0,
                "score_p99": float(np.quantile(np.abs(self.ref[:, 4:] - outputs[:, 4:]), 0.99))}


def rank(groups: list[Group], outputs_of: Callable[[list[str], list[str]], np.ndarray], judge: OutputJudge,
         baseline_loss: float) -> list[dict]:
    """For each group: the loss when only it is kept float (from all-INT8), and when only it is quantized.

    `outputs_of(exclude, include)` quantizes a variant and returns its raw outputs on the judge's images.
    Rows are sorted by how much keeping the group float recovers (gain = all-INT8 loss - loss with the
    group in float), largest first.
    """
    from tqdm.auto import tqdm

    verdicts = {}
    for g in tqdm(groups, desc="layer sensitivity", unit="group"):
        verdicts[g.name] = (judge.judge(outputs_of(g.patterns, [])), judge.judge(outputs_of([], g.patterns)))
    return rows(groups, verdicts, baseline_loss)


def rows(groups: list[Group], verdicts: dict[str, tuple[dict, dict]], baseline_loss: float) -> list[dict]:
    """Return rank()'s sorted rows from each group's judge verdicts (kept float, only it INT8), however they were run."""
    out = []
    for g in groups:
        kept, alone = verdicts[g.name]
        out.append({"group": g.name, "nodes": len(g.nodes), "gain_if_float": round(baseline_loss - kept["loss"], 3),
                    "loss_if_float": kept["loss"], "loss_if_only_int8": alone["loss"],
                    "box_p99_if_only_int8": round(alone["box_p99"], 3), "score_p99_if_only_int8": round(alone["score_p99"], 4)})
    out.sort(key=lambda r: (-r["gain_if_float"], -r["loss_if_only_int8"]))
    return out


def search(ranked: list[dict], groups: list[Group], drop_of: Callable[[list[str]], float], max_drop: float,
           max_steps: int, noise: float = 0.0, budget: int | None = None) -> dict:
    """Best-first recipe search over float groups: the fewest-step set found that passes the gate, or None.

    From all-INT8 (the root), each candidate adds one ranked group float to the best candidate scored so far
    that still has untried groups (`recipe_search.best_first`): a step that makes things worse is never built
    upon unless nothing better is left, and the next step goes from the best set found, not from the worse one.
    At most `max_steps` groups float, `budget` candidates scored (default max_steps, the greedy search's cost).
    `noise` (the paired-bootstrap sd of a step's score) flags a step that kept more float yet scored worse
    beyond twice the noise. Returns every candidate tried, the passing set (or None) and its regexes.
    """
    from yolo_compile.quant.recipe_search import Recipe, best_first, monotone_violations

    by_name = {g.name: g for g in groups}
    order = [r["group"] for r in ranked]
    rank = {name: i for i, name in enumerate(order)}
    names = lambda r: sorted(r.floats, key=rank.__getitem__)  # noqa: E731
    patterns = lambda ns: [p for name in ns for p in by_name[name].patterns]  # noqa: E731
    root = Recipe.of("")
    children = lambda r: [r.plus_float(g) for g in order if g not in r.floats]  # noqa: E731
    out = best_first([(root, drop_of([]))], children, lambda r: (drop_of(patterns(names(r))), None),
                     max_steps if budget is None else budget, accept=max_drop, max_floats=max_steps)
    labels = {t["label"]: names(t["recipe"]) for t in out.tried}
    steps = [{"float_groups": names(t["recipe"]), "map50_95_drop_points": t["drop_points"],
              "passes": t["drop_points"] <= max_drop, "parent": labels.get(t["parent"])} for t in out.tried]
    bad = monotone_violations(out, lambda a, b: noise)
    passing = [t for t in out.tried if t["drop_points"] <= max_drop]
    res = {"steps": steps, "stopped": out.stopped, "non_monotone": bad}
    if passing:
        kept = names(min(passing, key=lambda t: (len(t["recipe"].floats), t["drop_points"]))["recipe"])
        return {**res, "passed": True, "float_groups": kept, "nodes_to_exclude": patterns(kept)}
    return {**res, "passed": False, "float_groups": None, "nodes_to_exclude": None}


def plot(ranked: list[dict], path: Path, top: int = 15) -> Path:
    """Bar chart of the top groups by gain when kept float, and the loss when each alone is INT8."""
    from yolo_compile import plots

    rows = ranked[:top]
    fig, ax = plots.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["gain_if_float"] for r in rows], 0.4, label="gain if kept float (from all-INT8)")
    ax.barh(y + 0.2, [r["loss_if_only_int8"] for r in rows], 0.4, label="loss if only it is INT8")
    ax.set_yticks(y, [r["group"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("disagreement with FP32: 100 x (1 - mAP50-95 against FP32 detections)")
    ax.legend(fontsize=7)
    return plots.save(fig, path)
