import json

import onnx
import pytest

from yolo_compile.stages import quantize
from yolo_compile.quant import graph as qgraph
from yolo_compile.errors import QuantizeError


def test_mixed_recipe_quantizes_backbone_and_keeps_head_float(quantized_run):
    res = json.loads((quantized_run / "quantize" / "result.json").read_text())
    assert res["recipe"] == "mixed" and res["high_precision_dtype"] == "fp32" and res["calibration_images"] == 8
    assert res["op_counts"]["QuantizeLinear"] > 50
    ops, quantized = qgraph.inspect_qdq(quantized_run / res["onnx"])
    assert any(n.startswith("/model.1/") for n in quantized)
    graph = onnx.load(str(quantized_run / "export" / "model.onnx")).graph
    head = qgraph.find_head(graph, 22)
    assert not set(quantized) & set(head.kept_float)
    assert res["stem_nodes"] == list(qgraph.find_stem(graph, "images")) == ["/model.0/conv/Conv"]
    assert "/model.0/conv/Conv" not in quantized
    assert len(head.output_convs) == 6 and head.dfl and any("Softmax" in n for n in head.dfl + head.decode)


def test_int8_recipe_quantizes_the_head_too(run_copy):
    res = quantize.run(quantize.QuantizeConfig(target="cpu", recipe="int8", calibration_method="max", quantizer="modelopt"), run_copy)
    assert any("/model.22/cv2.0/cv2.0.2/" in n for n in res.quantized_nodes)
    assert res.head_nodes == []


def test_tensorrt_target_keeps_the_head_in_fp16(run_copy):
    res = quantize.run(quantize.QuantizeConfig(target="tensorrt", recipe="mixed", calibration_method="max", quantizer="modelopt"), run_copy)
    assert res.high_precision_dtype == "fp16"
    model = onnx.load(str(run_copy / res.onnx))
    init = {i.name: i.data_type for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.name == "/model.22/cv3.0/cv3.0.2/Conv")
    assert init[conv.input[1]] == onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays fp32
    # the decode (box corners in pixels) computes in FP32: FP16's 0.25-0.5 px spacing at 320-640 px costs mAP50-95
    typed = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.value_info) + list(typed.graph.output)}
    head = qgraph.find_head(model.graph, 22)
    decode_out = [o for n in model.graph.node if n.name in head.decode and n.op_type in ("Sub", "Add", "Mul", "Div")
                  for o in n.output]
    assert decode_out and all(elem[o] == onnx.TensorProto.FLOAT for o in decode_out)
    dfl = next(o for n in model.graph.node if n.name in head.dfl and n.op_type == "Conv" for o in n.output)
    assert elem[dfl] == onnx.TensorProto.FLOAT16


def test_float_recipe_has_no_qdq(run_copy):
    res = quantize.run(quantize.QuantizeConfig(target="cpu", recipe="float"), run_copy)
    assert "QuantizeLinear" not in res.op_counts and res.calibration_images == 0


def test_refuses_to_quantize_without_calibration_data(run_copy):
    res = json.loads((run_copy / "calibrate" / "result.json").read_text())
    (run_copy / "calibrate" / "result.json").write_text(json.dumps({**res, "array": str(run_copy / "gone.npy")}))
    with pytest.raises(QuantizeError, match="no calibration array.*random data is refused"):
        quantize.run(quantize.QuantizeConfig(target="cpu"), run_copy)


def test_head_lookup_refuses_a_non_ultralytics_graph(quantized_run):
    graph = onnx.load(str(quantized_run / "export" / "model.onnx")).graph
    with pytest.raises(QuantizeError, match="/model.99/"):
        qgraph.find_head(graph, 99)


def test_check_recipe_catches_a_leaked_head_node():
    head = qgraph.HeadNodes(("/model.22/cv2.0/cv2.0.2/Conv",), (), (), ())
    from collections import Counter

    ops = Counter({"QuantizeLinear": 3, "DequantizeLinear": 3})
    with pytest.raises(QuantizeError, match="head or stem nodes were quantized"):
        qgraph.check_recipe("mixed", ops, ["/model.22/cv2.0/cv2.0.2/Conv"], head, "m.onnx")
    with pytest.raises(QuantizeError, match="no Q/DQ"):
        qgraph.check_recipe("int8", Counter(), [], head, "m.onnx")


def test_keep_float_applies_a_searched_recipe(run_copy, tmp_path):
    recipe = tmp_path / "nodes_to_exclude.json"
    recipe.write_text('["/model\\\\.1/conv/Conv$"]')
    res = quantize.run(quantize.QuantizeConfig(target="cpu", keep_float=str(recipe), calibration_method="max", quantizer="modelopt"), run_copy)
    assert "/model.1/conv/Conv" not in res.quantized_nodes and "/model.2/cv1/conv/Conv" in res.quantized_nodes
    with pytest.raises(QuantizeError, match="not a regular expression"):
        quantize.QuantizeConfig(keep_float="/model.0/(")
    with pytest.raises(QuantizeError, match="keep_float file not found"):
        quantize.QuantizeConfig(keep_float=str(tmp_path / "missing.json"))


def test_auto_measures_every_candidate_and_stores_int8_weights(run_copy, image_sets):
    res = quantize.run(quantize.QuantizeConfig(target="cpu", data=str(image_sets["data"]), accept_drop=0), run_copy)
    got = {(r["quantizer"], r["calibration"].split()[0]) for r in res.candidates}
    assert {("modelopt", "max"), ("modelopt", "entropy"), ("modelopt", "percentile-99.99"), ("nncf", "nncf")} <= got
    assert all("drop_points" in r for r in res.candidates)
    best = min(r["drop_points"] for r in res.candidates)
    assert res.chosen["drop_points"] == best and "smallest drop" in res.chosen["why"] and "noise_points" in res.chosen
    assert "6 labeled images" in res.chosen["images"]
    assert res.size_ratio <= 0.35 and (run_copy / "quantize" / "activations.npz").is_file()
    assert not list((run_copy / "export").glob("*.quant*")) and not list((run_copy / "export").glob("*calib*"))
    assert res.chosen["backend"] == "openvino"  # scored on the runtime a CPU target ships


def test_auto_stops_at_the_first_candidate_within_accept_drop(run_copy, image_sets):
    """A generous accept_drop takes the first candidate (NNCF on a CPU target) and lists the rest as not tried."""
    res = quantize.run(quantize.QuantizeConfig(target="cpu", data=str(image_sets["data"]), accept_drop=50,
                                               objective="accuracy"), run_copy)
    scored = [r for r in res.candidates if "drop_points" in r]
    assert [r["quantizer"] for r in scored] == ["nncf"] and res.quantizer == "nncf"
    assert {r["calibration"] for r in res.candidates if "not_tried" in r} == {"max", "entropy", "percentile-99.99",
                                                                              "percentile-99.999"}
    assert "first candidate within accept_drop=50" in res.chosen["why"] and res.chosen["noise_points"] >= 0
    # the shipped file is the very file that was scored: its detections are in the cache under its content hash
    assert res.size_ratio <= 0.35


def test_latency_objective_takes_the_fastest_within_the_bar_and_says_why_each_other_lost(run_copy, image_sets):
    """objective=latency (the default): NNCF's performance preset first, timed on OpenVINO beside FP32; its INT8-stem
    variant timed and scored only if faster; the mixed preset timed through a speed proxy and built only if that ties;
    the winner is the fastest scored within accept_drop (ties: the smaller drop); FP32 is on the front."""
    from yolo_compile.quant.latency import tied

    res = quantize.run(quantize.QuantizeConfig(target="cpu", data=str(image_sets["data"]), accept_drop=50), run_copy)
    assert res.objective == "latency" and res.chosen["backend"] == "openvino"
    rows = {r["calibration"]: r for r in res.candidates}
    perf = rows["nncf performance preset, fast bias correction"]
    stem = rows["nncf performance preset, fast bias correction, INT8 stem"]
    assert perf["drop_points"] <= 50 and perf["images_per_s"] > 0 and perf["paired_with"]  # timed beside FP32 or faster
    assert stem["images_per_s"] > 0 and ("drop_points" in stem or stem["lost"].startswith("not scored"))
    proxy = rows.get("speed proxy of nncf mixed preset")
    mixed = rows.get("nncf mixed preset, fast bias correction")
    assert (proxy and proxy["lost"].startswith("not built")) or (mixed and "drop_points" in mixed)
    assert {r["calibration"] for r in res.candidates if "not_tried" in r} == {"max", "entropy", "percentile-99.99",
                                                                              "percentile-99.999"}
    scored = [r for r in res.candidates if "drop_points" in r]
    fastest = max(scored, key=lambda r: r["images_per_s"])
    chosen = res.chosen
    assert tied(chosen, fastest) and chosen["drop_points"] == min(r["drop_points"] for r in scored if tied(r, fastest))
    assert "fastest candidate within accept_drop=50" in chosen["why"] and "scored on the full split" in chosen["why"]
    assert "images/s" in chosen["runner_up"] and "drop" in chosen["runner_up"]  # both its numbers
    assert all(r.get("lost") or r.get("not_tried") for r in res.candidates if r["calibration"] != chosen["calibration"])
    assert chosen["fp32_images_per_s"] > 0 and "FP32" in chosen["says"] and isinstance(chosen["int8_buys_speed"], bool)
    assert chosen["timing_load"]["watched"] and chosen["timing_load"]["others_cores"] >= 0  # others' use, recorded
    points = {p["candidate"]: p for p in res.pareto}
    assert points["fp32"]["drop_points"] == 0 and sum(p["chosen"] for p in res.pareto) == 1
    assert not any("proxy" in p for p in points)  # a proxy is timed, never a point one could ship
    # a chosen variant that made the stem INT8 passes the recipe check: it is INT8 on purpose
    assert ("/model.0/conv/Conv" in res.quantized_nodes) == ("stem" in chosen.get("int8_groups", []))
    assert not any("/dfl/" in n for n in res.quantized_nodes)


def test_tensorrt_target_says_latency_was_not_measured(run_copy, image_sets):
    res = quantize.run(quantize.QuantizeConfig(target="tensorrt", data=str(image_sets["data"]), accept_drop=50,
                                               calibration_method="auto", quantizer="modelopt"), run_copy)
    assert res.objective == "accuracy" and "latency not measured" in res.chosen["latency"]
    assert "first candidate within accept_drop" in res.chosen["why"] and not res.pareto
    assert not any("images_per_s" in r for r in res.candidates)


def test_deploy_batch_times_each_candidate_there_and_at_batch_1(run_copy, image_sets):
    """deploy_batch=4: the choice's figures are at batch 4 (images/s = 4 / p50), batch 1 is timed beside them, and the
    front and its table say which batch they are."""
    from yolo_compile.report.tables import front_table

    res = quantize.run(quantize.QuantizeConfig(target="cpu", data=str(image_sets["data"]), accept_drop=50,
                                               deploy_batch=4), run_copy)
    timed = [r for r in res.candidates if "images_per_s" in r]
    assert timed and all(r["batch"] == 4 and r["batch1"]["images_per_s"] > 0 for r in timed)
    assert all(abs(r["images_per_s"] - 4e3 / r["p50_ms"]) / r["images_per_s"] < 0.5 for r in timed if "paired_with" not in r)
    assert "batch 4" in res.chosen["latency"] and "batch 1" in res.chosen["latency"]
    assert all(p["batch"] == 4 and p["batch1_images_per_s"] > 0 for p in res.pareto)
    html = front_table({"pareto": res.pareto, "chosen": res.chosen, "objective": res.objective})
    assert "images/s at batch 4" in html and "images/s at batch 1" in html


def test_deploy_batch_is_checked_before_anything_runs(run_copy):
    with pytest.raises(QuantizeError, match="deploy_batch"):
        quantize.QuantizeConfig(deploy_batch=0)
    exp_path = run_copy / "export" / "result.json"
    exp = json.loads(exp_path.read_text())
    exp["input_shape"] = [1, *exp["input_shape"][1:]]  # an export with a fixed batch of 1
    exp_path.write_text(json.dumps(exp))
    with pytest.raises(QuantizeError, match=r"model.onnx: deploy_batch=2 but the exported model's batch is fixed at 1"):
        quantize.run(quantize.QuantizeConfig(target="cpu", deploy_batch=2), run_copy)

