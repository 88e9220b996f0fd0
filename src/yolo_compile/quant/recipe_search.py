"""Best-first recipe search: which layer groups stay float, and which calibration each INT8 group takes.

A greedy search adds one step at a time and keeps it only if it helps; once a step is undone or kept, it never
returns. Measured on real inspection images, steps interact (keeping one group float can score worse until a
second one joins it), so greedy ends at dead ends. Here every scored candidate stays on the frontier, and the
search always extends the best candidate it has scored that still has untried children, its children taken in
the order of a cheap prior: when a step makes things worse, the next step is tried from the best candidate so
far (its parent, or anything scored earlier), never from the worse one. A step that left the score exactly
unchanged (the labeled split saw no difference) is not tried again from other candidates.

A candidate is a `Recipe`: a base calibration method, the groups kept float, and per-group overrides of the
method. Recipes are deduplicated by their canonical form (an override on a float group, or equal to the base,
is dropped), and the scorer may report a duplicate by content (two recipes that build the same file), which
costs no budget. The budget counts candidates scored.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A base calibration method, the groups kept float, and (group, method) overrides of the base (sorted)."""

    base: str = ""
    floats: frozenset = frozenset()
    overrides: tuple = ()

    @classmethod
    def of(cls, base: str, floats: Iterable[str] = (), overrides: dict | None = None) -> Recipe:
        """Return the canonical recipe: no override on a float group, none equal to the base."""
        floats = frozenset(floats)
        kept = tuple(sorted((g, m) for g, m in (overrides or {}).items() if g not in floats and m != base))
        return cls(base, floats, kept)

    def plus_float(self, group: str) -> Recipe:
        return Recipe.of(self.base, self.floats | {group}, dict(self.overrides))

    def with_method(self, group: str, method: str) -> Recipe:
        return Recipe.of(self.base, self.floats, {**dict(self.overrides), group: method})

    def method_of(self, group: str) -> str:
        return dict(self.overrides).get(group, self.base)

    def label(self) -> str:
        """Return a one-line description: 'max; percentile-99.999 on model.3; float model.5, model.7'."""
        parts = [self.base] if self.base else []
        by_method: dict[str, list[str]] = {}
        for g, m in self.overrides:
            by_method.setdefault(m, []).append(g)
        parts += [f"{m} on {', '.join(gs)}" for m, gs in sorted(by_method.items())]
        if self.floats:
            parts.append("float " + ", ".join(sorted(self.floats, key=_group_order)))
        return "; ".join(parts) or "as placed"


def _group_order(name: str) -> tuple:
    head = name.startswith("head")
    tail = name.split(".", 1)[1] if "." in name else name
    return (head, int(tail) if tail.isdigit() else 0, name)


@dataclass
class Outcome:
    """Every candidate the search scored (in order), the best, and why it stopped."""

    tried: list = field(default_factory=list)  # dicts: recipe, label, drop_points, parent, depth, duplicate_of
    best: Recipe | None = None
    best_drop: float = float("inf")
    stopped: str = ""
    scored: int = 0  # candidates that cost budget (duplicates by content do not)


def best_first(roots: list[tuple[Recipe, float]], children: Callable[[Recipe], list[Recipe]],
               score: Callable[[Recipe], tuple[float, str | None]], budget: int, *, accept: float | None = None,
               max_floats: int | None = None) -> Outcome:
    """Search from the scored roots; return every candidate scored, the best, and the reason it stopped.

    `children(recipe)` lists a candidate's one-step neighbours, most promising first; `score(recipe)` returns
    (drop in points, smaller is better; the label of an earlier candidate it duplicates by content, or None).
    Stops when `budget` candidates were scored, when one is within `accept`, or when no candidate has untried
    children. A recipe with more than `max_floats` float groups is never proposed.
    """
    out = Outcome()
    seen: dict[Recipe, float] = {}
    heap: list[tuple] = []
    pending: dict[Recipe, list[Recipe]] = {}
    inert: set[tuple] = set()
    seq = 0

    def push(recipe: Recipe, drop: float) -> None:
        nonlocal seq
        seen[recipe] = drop
        heapq.heappush(heap, (drop, len(recipe.floats), seq, recipe))
        seq += 1
        if drop < out.best_drop or (drop == out.best_drop and out.best is not None
                                    and len(recipe.floats) < len(out.best.floats)):
            out.best, out.best_drop = recipe, drop

    for recipe, drop in roots:
        if recipe not in seen:
            out.tried.append({"recipe": recipe, "label": recipe.label(), "drop_points": round(drop, 3), "parent": None,
                              "depth": 0, "duplicate_of": None, "root": True})
            push(recipe, drop)
    if accept is not None and out.best is not None and out.best_drop <= accept:
        out.stopped = f"a root is within {accept:g} points"
        return out
    depth = {r: 0 for r, _ in roots}
    while True:
        if out.scored >= budget:
            out.stopped = f"budget of {budget} candidates spent"
            break
        if not heap:
            out.stopped = "every candidate's children were tried"
            break
        parent = heap[0][3]
        if parent not in pending:
            pending[parent] = [c for c in children(parent)
                               if max_floats is None or len(c.floats) <= max_floats]
        queue = pending[parent]
        while queue and (queue[0] in seen or move(parent, queue[0]) in inert):
            queue.pop(0)
        if not queue:
            heapq.heappop(heap)
            continue
        child = queue.pop(0)
        drop, dup = score(child)
        out.scored += 0 if dup else 1
        depth[child] = depth[parent] + 1
        out.tried.append({"recipe": child, "label": child.label(), "drop_points": round(drop, 3),
                          "parent": parent.label(), "depth": depth[child], "duplicate_of": dup, "root": False})
        log.info("recipe search %d/%d: %s -> drop %.3f points (parent %.3f)%s", out.scored, budget, child.label(),
                 drop, seen[parent], f", same file as {dup}" if dup else "")
        push(child, drop)
        if drop == seen[parent]:  # the split saw no change: the same move elsewhere is not worth a candidate
            inert.add(move(parent, child))
        if accept is not None and drop <= accept:
            out.stopped = f"{child.label()} is within {accept:g} points"
            break
    return out


def move(parent: Recipe, child: Recipe) -> tuple:
    """Return the step from parent to child: (groups made float, (group, method) overrides added)."""
    return (child.floats - parent.floats, frozenset(set(child.overrides) - set(parent.overrides)))


def monotone_violations(outcome: Outcome, noise_of: Callable[[Recipe, Recipe], float], k: float = 2.0) -> list[dict]:
    """Return the candidates that keep strictly more groups float than their parent yet score worse beyond k x noise.

    `noise_of(child, parent)` is the paired-bootstrap sd of their difference. Keeping more of the network float
    moves it closer to FP32; a larger drop beyond the noise means a variant was built wrong (or error cancelled).
    """
    by_label = {t["label"]: t for t in outcome.tried}
    bad = []
    for t in outcome.tried:
        parent = by_label.get(t["parent"]) if t["parent"] else None
        if parent is None or t["duplicate_of"]:
            continue
        a, b = t["recipe"], parent["recipe"]
        if not (a.floats > b.floats and a.base == b.base
                and all(a.method_of(g) == b.method_of(g) for g, _ in a.overrides + b.overrides if g not in a.floats)):
            continue
        noise = noise_of(a, b)
        t["noise_vs_parent"] = noise
        if t["drop_points"] > parent["drop_points"] + k * noise:
            bad.append({"candidate": t["label"], "drop_points": t["drop_points"], "parent": parent["label"],
                        "parent_drop_points": parent["drop_points"], "noise_points": noise})
    return bad


def report(outcome: Outcome, noise_of: Callable[[Recipe, Recipe], float]) -> tuple[list[dict], dict]:
    """Return (one JSON row per candidate tried, a summary): each step's paired noise against its parent, how
    many steps moved by more than twice it, the non-monotone steps, and why the search stopped."""
    violations = monotone_violations(outcome, noise_of)
    by_label = {t["label"]: t for t in outcome.tried}
    for t in outcome.tried:
        if t["parent"] and not t["duplicate_of"] and "noise_vs_parent" not in t:
            t["noise_vs_parent"] = noise_of(t["recipe"], by_label[t["parent"]]["recipe"])
    steps = [t for t in outcome.tried if "noise_vs_parent" in t]
    noise = [t["noise_vs_parent"] for t in steps]
    moved = [t for t in steps if abs(t["drop_points"] - by_label[t["parent"]]["drop_points"]) > 2 * t["noise_vs_parent"]]
    rows = [{**{k: v for k, v in t.items() if k != "recipe"}, "base": t["recipe"].base,
             "float_groups": sorted(t["recipe"].floats, key=_group_order),
             "overrides": dict(t["recipe"].overrides)} for t in outcome.tried]
    summary = {"scored": outcome.scored, "stopped": outcome.stopped,
               "best": outcome.best.label() if outcome.best else None, "best_drop_points": round(outcome.best_drop, 3),
               "step_noise_points": {"median": round(float(np.median(noise)), 3), "max": round(max(noise), 3)} if noise else {},
               "steps_beyond_twice_noise": f"{len(moved)} of {len(steps)}",
               "duplicates": [{"candidate": t["label"], "same_file_as": t["duplicate_of"]} for t in outcome.tried
                              if t["duplicate_of"]],
               "non_monotone": violations}
    return rows, summary
