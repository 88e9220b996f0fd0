"""The best-first recipe search and its space, on the tiny model with confident scores (real variants, real scores)."""

import re
import shutil

import numpy as np
import pytest

from conftest import IMGSZ, make_confident_run
from yolo_compile import fileio, images, runs
from yolo_compile.evaluate import scorer as scorer_mod
from yolo_compile.stages import quantize
from yolo_compile.quant import graph as qgraph, modelopt
from yolo_compile.quant import scales
from yolo_compile.quant.recipe_search import Recipe, best_first, monotone_violations
from yolo_compile.quant.recipe_space import Space


@pytest.fixture(scope="module")
def confident(tiny_checkpoint, image_sets, tmp_path_factory):
    """(run folder, held-out image folder): the confident tiny model quantized (CPU target), its statistics saved."""
    run, data = make_confident_run(tiny_checkpoint, image_sets["calib"], tmp_path_factory.mktemp("confident"))
    return run, image_sets["eval"], data.parent / "val" / "images"


@pytest.fixture(scope="module")
def space(confident, tmp_path_factory):
    """A Space over the confident model (mixed recipe, FP32 float part) and a label-free scorer on 10 images."""
    import onnx

    run, held_out, more = confident
    exp = runs.read_result(run, "export")
    work = tmp_path_factory.mktemp("space")
    src = work / "model.onnx"
    shutil.copyfile(run / exp["onnx"], src)
    graph = onnx.load(str(src), load_external_data=False).graph
    head = qgraph.find_head(graph, int(exp["head_index"]))
    exclude = [re.escape(n) + "$" for n in head.kept_float + qgraph.find_stem(graph, exp["input_name"])]
    data = np.load(run / runs.read_result(run, "calibrate")["array"], mmap_mode="r")
    template = work / "template.onnx"
    modelopt.modelopt_quantize(src, template, data[:1], exp, "max", "fp32", exclude=exclude)
    raw = scales.ActivationStats.load(run / "quantize" / "activations.npz")
    sp = Space(src, template, raw, exclude, exp, "fp32", data, work, ("max", "entropy", "percentile-99.99"))
    arr = np.stack([images.load_tensor(p, IMGSZ) for p in images.list_images(held_out) + images.list_images(more)])
    names = {int(k): v for k, v in exp["class_names"].items()}
    scorer = scorer_mod.Scorer(src, arr, IMGSZ, names)
    files: dict[Recipe, str] = {}
    drops: dict[Recipe, float] = {}

    def score(recipe: Recipe) -> tuple[float, str | None]:
        if recipe not in files:
            files[recipe] = f"r{len(files)}.onnx"
            sp.build(recipe, work / files[recipe])
            drops[recipe] = scorer.score(work / files[recipe], files[recipe])
        return drops[recipe], None

    sp.score, sp.scorer, sp.files = score, scorer, files
    return sp


def test_recipes_are_canonical_and_equal_recipes_build_the_same_file(space, tmp_path):
    g = next(iter(space.groups))
    assert Recipe.of("max", overrides={g: "max"}) == Recipe.of("max")
    assert Recipe.of("max", floats={g}, overrides={g: "entropy"}) == Recipe.of("max", floats={g})
    assert Recipe.of("max").with_method(g, "entropy").with_method(g, "max") == Recipe.of("max")
    # every INT8 group overridden to one method builds the very bytes of that method applied everywhere: the
    # search's content deduplication (sha256 of the file) then scores it once
    every = Recipe.of("max", overrides={name: "percentile-99.99" for name in space.groups})
    space.build(every, tmp_path / "every.onnx")
    space.build(Recipe.of("percentile-99.99"), tmp_path / "uniform.onnx")
    assert fileio.sha256(tmp_path / "every.onnx") == fileio.sha256(tmp_path / "uniform.onnx")
    # one override changes only the scales of the tensors that group reads
    one = Recipe.of("max", overrides={"model.2": "percentile-99.99"})
    space.build(one, tmp_path / "one.onnx")
    space.build(Recipe.of("max"), tmp_path / "max.onnx")
    a, b = (scales.activation_qdq(tmp_path / "one.onnx"), scales.activation_qdq(tmp_path / "max.onnx"))
    from conftest import activation_scales

    sa, sb = activation_scales(tmp_path / "one.onnx"), activation_scales(tmp_path / "max.onnx")
    changed = {t for t in sa if sa[t] != sb[t]}
    assert a.keys() == b.keys() and changed and changed <= space.templates[frozenset()][2]["model.2"]


def test_a_variant_with_more_float_groups_does_not_score_worse_beyond_the_noise(space):
    """Keeping groups float moves the model towards FP32: no child may lose more than its parent beyond 2 x noise."""
    parent = Recipe.of("max")
    kids = [c for c in space.children(parent, max_floats=2) if c.floats][:4]
    kids += [k.plus_float(next(g for g in space.groups if g not in k.floats)) for k in kids[:2]]  # two floats
    p_drop, _ = space.score(parent)
    assert p_drop > 0.5  # the tiny model's INT8 error is visible, so the check below has something to see
    for kid in kids:
        base = Recipe.of("max", floats=set(list(kid.floats)[:-1])) if len(kid.floats) > 1 else parent
        b_drop, _ = space.score(base)
        k_drop, _ = space.score(kid)
        noise = space.scorer.noise(space.files[kid], space.files[base])
        assert k_drop <= b_drop + 2 * noise + 1e-9, (kid.label(), k_drop, base.label(), b_drop, noise)


def test_best_first_backtracks_on_real_scores_and_keeps_its_budget(space):
    """On real variants: a step that scored worse than its parent is not extended next; duplicates are skipped."""
    roots = [(Recipe.of(m), space.score(Recipe.of(m))[0]) for m in ("max", "entropy")]
    out = best_first(roots, lambda r: space.children(r, 2), space.score, budget=6, max_floats=2)
    steps = [t for t in out.tried if not t["root"]]
    assert out.scored == len(steps) == 6 and "budget" in out.stopped
    assert len({t["recipe"] for t in out.tried}) == len(out.tried)  # nothing scored twice
    drop = {t["label"]: t["drop_points"] for t in out.tried}
    for i, t in enumerate(steps[:-1]):
        # every step extends the best candidate that still had untried children; a child worse than its parent
        # is extended next only if it is also better than everything else on the frontier (it then is the best)
        nxt = steps[i + 1]
        if nxt["parent"] == t["label"]:
            assert t["drop_points"] <= min(drop[s["label"]] for s in out.tried[: len(roots) + i + 1]) + 1e-9
    assert out.best_drop == min(t["drop_points"] for t in out.tried)
    assert all(len(t["recipe"].floats) <= 2 for t in out.tried)
    monotone_violations(out, lambda a, b: space.scorer.noise(space.files[a], space.files[b]))


def test_quantize_stage_search_reports_every_candidate_budget_and_noise(confident, tmp_path):
    run, held_out, _ = confident
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    res = quantize.run(quantize.QuantizeConfig(target="cpu", quantizer="modelopt", eval_dir=str(held_out),
                                               accept_drop=0, search_budget=3, search_floats=1), dst)
    search = res.chosen["search"]
    searched = [r for r in res.candidates if "search" in r]
    assert search["scored"] == len(searched) <= 3 and search["budget"] == 3
    assert len(res.candidates) == 4 + len(searched) and all("drop_points" in r for r in res.candidates)
    assert all(len(r["float_groups"]) <= 1 and "noise_vs_parent" in r["search"] for r in searched)
    assert {"median", "max"} <= set(search["step_noise_points"]) and "non_monotone" in search
    assert res.chosen["drop_points"] == min(r["drop_points"] for r in res.candidates)
    assert "recipe search scored" in res.chosen["why"]


def test_a_step_that_changed_nothing_is_not_repeated_from_other_candidates():
    base = Recipe.of("max")
    inert, helps = base.with_method("model.2", "entropy"), base.plus_float("model.1")
    scores = {base: 1.0, inert: 1.0, helps: 0.8}

    def children(r):  # the same three steps from every candidate
        return [r.with_method("model.2", "entropy"), r.plus_float("model.1"), r.plus_float("model.3")]

    out = best_first([(base, 1.0)], children, lambda r: (scores.get(r, 0.9), None), budget=3, max_floats=2)
    # the override left the score unchanged from max: from "float model.1" it is skipped, model.3 comes next
    assert [t["label"] for t in out.tried] == ["max", "max; entropy on model.2", "max; float model.1",
                                               "max; float model.1, model.3"]
    assert out.best == helps and out.scored == 3
