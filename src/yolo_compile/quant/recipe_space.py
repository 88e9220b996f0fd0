"""The quantize stage's recipe space: extra layer groups kept float x a calibration method per INT8 group.

Built from cached pieces only: ModelOpt places the Q/DQ nodes once per float set (one image, a few seconds), and
every method's scales come from the one statistics pass (`scales.collect`), so no recipe recalibrates. A
recipe's per-group methods are graph edits of its template (`scales.apply(..., only=)`). Tensors that share
one scale in ModelOpt's graph (its concat elimination) always take the same method, whichever group asked.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from yolo_compile.quant import scales
from yolo_compile.quant.recipe_search import Recipe

log = logging.getLogger(__name__)


class Space:
    """Groups, templates and scales of one FP32 model; `build(recipe, dst)` writes a recipe's Q/DQ ONNX."""

    def __init__(self, src: Path, template: Path, raw: scales.ActivationStats, exclude: list[str], exp: dict,
                 hp_dtype: str, data: np.ndarray, work: Path, methods: tuple[str, ...]):
        from yolo_compile.quant.graph import inspect_qdq
        from yolo_compile.quant.sensitivity import layer_groups

        self.src, self.raw, self.exclude, self.exp, self.hp_dtype = src, raw, exclude, exp, hp_dtype
        self.data, self.work, self.methods = data, work, methods
        self.groups = {g.name: g for g in layer_groups(inspect_qdq(template)[1], int(exp["head_index"]))}
        self.templates: dict[frozenset, tuple[Path, scales.ActivationStats, dict[str, set[str]]]] = {}
        self.templates[frozenset()] = self._describe(template)
        self.placement_s = 0.0

    def _describe(self, template: Path) -> tuple[Path, scales.ActivationStats, dict[str, set[str]]]:
        """Return (template, merged statistics, {group: activation tensors its quantized nodes read})."""
        import onnx

        from yolo_compile.quant.variants import complete

        groups = scales.shared_groups(self.src, template)
        tensors = list(scales.activation_qdq(template))
        stats = scales.merged(complete(self.raw, self.src, tensors, self.data), groups)
        graph = onnx.load(str(template), load_external_data=False).graph
        init = {i.name for i in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output}
        node_group = {n: g.name for g in self.groups.values() for n in g.nodes}
        shared = {t: set(g) for g in groups for t in g}
        reads: dict[str, set[str]] = {}
        for n in graph.node:
            if n.name not in node_group:
                continue
            for i in n.input:
                dq = producer.get(i)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in init:
                    t = scales.source_name(q.input[0])
                    reads.setdefault(node_group[n.name], set()).update(shared.get(t, {t}))
        return template, stats, reads

    def template_for(self, floats: frozenset) -> tuple[Path, scales.ActivationStats, dict[str, set[str]]]:
        """Return the float set's template (ModelOpt placement from one image, made once), statistics and reads."""
        if floats not in self.templates:
            from yolo_compile.quant.modelopt import modelopt_quantize

            t = time.perf_counter()
            path = self.work / f"template-{len(self.templates)}.onnx"
            modelopt_quantize(self.src, path, self.data[:1], self.exp, "max", self.hp_dtype,
                              exclude=self.exclude + self._patterns(floats))
            self.placement_s += time.perf_counter() - t
            self.templates[floats] = self._describe(path)
        return self.templates[floats]

    def build(self, recipe: Recipe, dst: Path) -> Path:
        """Write dst: the recipe's template, the base method's scales, then each override's scales on its groups."""
        template, stats, reads = self.template_for(recipe.floats)
        scales.apply(template, scales.thresholds(stats, recipe.base), dst)
        by_method: dict[str, set[str]] = {}
        for group, method in recipe.overrides:
            by_method.setdefault(method, set()).update(reads.get(group, set()))
        for method, tensors in sorted(by_method.items()):
            if tensors:
                scales.apply(dst, scales.thresholds(stats, method), dst, only=tensors)
        return dst

    def children(self, recipe: Recipe, max_floats: int) -> list[Recipe]:
        """Return the recipe's one-step neighbours, most promising first by the histogram error prior.

        A method change on one group ranks by how much it lowers its tensors' expected INT8 error
        (`scales.clip_error`, relative to their power); keeping a group float ranks by the error it removes.
        The two kinds alternate (a float group costs speed on the target; a method change costs nothing).
        """
        _, stats, reads = self.template_for(recipe.floats)
        err = {m: scales.clip_error(stats, scales.thresholds(stats, m)) for m in self.methods}
        moves, floats = [], []
        for name in self.groups:
            if name in recipe.floats or not reads.get(name):
                continue
            now = recipe.method_of(name)
            cost = lambda m: sum(err[m].get(t, 0.0) for t in reads[name])  # noqa: E731
            for m in self.methods:
                gain = cost(now) - cost(m)
                if m != now and gain > 0:
                    moves.append((-gain, name, m))
            if len(recipe.floats) < max_floats:
                floats.append((-cost(now), name))
        moves.sort()
        floats.sort()
        a = [recipe.with_method(name, m) for _, name, m in moves]
        b = [recipe.plus_float(name) for _, name in floats]
        out = [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]
        return list(dict.fromkeys(out))

    def patterns(self, recipe: Recipe) -> list[str]:
        """Return the regexes of the recipe's extra float groups (for keep_float= and the report)."""
        return self._patterns(recipe.floats)

    def _patterns(self, floats: frozenset) -> list[str]:
        return [p for g in sorted(floats) for p in self.groups[g].patterns]

