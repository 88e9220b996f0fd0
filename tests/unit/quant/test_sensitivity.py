import pytest

from conftest import activation_scales
from yolo_compile.stages import quantize
from yolo_compile.quant import graph as qgraph
from yolo_compile.quant import sensitivity


@pytest.fixture(scope="module")
def int8_all(quantized_run, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(quantized_run, run)
    quantize.run(quantize.QuantizeConfig(target="cpu", recipe="int8", calibration_method="max", quantizer="modelopt"), run)
    return run


def test_layer_groups_follow_modules_and_split_the_head(int8_all):
    _, quantized = qgraph.inspect_qdq(int8_all / "quantize" / "model.quant.onnx")
    groups = sensitivity.layer_groups(quantized, 22)
    names = [g.name for g in groups]
    assert names[0] == "model.0" and "head cv2.0" in names and "head cv3.2" in names
    assert names.index("model.21") < names.index("head cv2.0")
    assert sum(len(g.nodes) for g in groups) == len(quantized)


def test_search_keeps_the_fewest_ranked_groups_that_pass():
    groups = [sensitivity.Group(n, (f"/{n}/Conv",)) for n in ("a", "b", "c")]
    ranked = [{"group": "b"}, {"group": "a"}, {"group": "c"}]
    tried = []

    def drop_of(exclude):  # the mAP drop falls as more groups stay float: 3.0, 1.5, 0.4 points
        tried.append(list(exclude))
        return {0: 3.0, 1: 1.5, 2: 0.4}[len(exclude)]

    res = sensitivity.search(ranked, groups, drop_of, max_drop=1.0, max_steps=3)
    assert res["passed"] and res["float_groups"] == ["b", "a"]
    assert [s["passes"] for s in res["steps"]] == [False, False, True]
    assert [s["parent"] for s in res["steps"]] == [None, [], ["b"]]
    assert res["nodes_to_exclude"] == [r"/b/Conv$", r"/a/Conv$"] == tried[-1]
    assert not sensitivity.search(ranked, groups, lambda e: 5.0, 1.0, 2)["passed"]


def test_an_fp16_head_model_quantizes_the_cast_copy_of_its_input(quantized_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quantized_run, run)
    res = quantize.run(quantize.QuantizeConfig(target="tensorrt", recipe="int8", calibration_method="max", quantizer="modelopt"), run)
    assert "images_cast_to_fp16" in activation_scales(run / res.onnx)


def test_search_backtracks_from_a_step_that_makes_things_worse():
    """Greedy undoes b and a (each worse than all-INT8) and gives up; best-first extends c, then finds a + c."""
    groups = [sensitivity.Group(n, (f"/{n}/Conv",)) for n in ("a", "b", "c")]
    ranked = [{"group": "b"}, {"group": "a"}, {"group": "c"}]
    drops = {(): 3.0, ("b",): 3.6, ("a",): 3.2, ("a", "b"): 3.5, ("a", "c"): 0.4, ("c",): 2.9, ("b", "c"): 2.0}

    def drop_of(exclude):  # keeping b float scores worse than its parent (error cancellation elsewhere)
        return drops[tuple(sorted(p.strip("/").split("/")[0] for p in exclude))]

    res = sensitivity.search(ranked, groups, drop_of, max_drop=1.0, max_steps=2, noise=0.2, budget=6)
    assert res["passed"] and sorted(res["float_groups"]) == ["a", "c"]
    # root, its three children in rank order, then the best of them (c, 2.9) is extended: b+c, then a+c passes
    assert [s["float_groups"] for s in res["steps"]] == [[], ["b"], ["a"], ["c"], ["b", "c"], ["a", "c"]]
    assert [s["parent"] for s in res["steps"][4:]] == [["c"], ["c"]]
    assert len({tuple(sorted(s["float_groups"])) for s in res["steps"]}) == len(res["steps"])  # nothing twice
    # b float from all-INT8 scores 0.6 worse than its parent, beyond twice the 0.2 noise: flagged
    assert [v["candidate"] for v in res["non_monotone"]] == ["float b"]
    # the budget bounds the candidates scored after the root
    short = sensitivity.search(ranked, groups, drop_of, max_drop=1.0, max_steps=2, budget=2)
    assert len(short["steps"]) == 3 and not short["passed"] and "budget" in short["stopped"]
