"""The latency rule on numbers: fastest within the bar, the smaller drop among speed ties, why each other lost."""

from yolo_compile.quant import choose


def row(name, drop, ips, noise=0.03):
    return {"quantizer": "q", "calibration": name, "drop_points": drop, "images_per_s": ips, "speed_noise": noise}


def test_fastest_within_the_bar_wins_and_a_speed_tie_goes_to_the_smaller_drop():
    over, fast, tie, slow = row("over", 0.9, 130), row("fast", 0.25, 100), row("tie", 0.05, 98.5), row("slow", 0.0, 80)
    best, runner = choose.by_latency([over, fast, tie, slow], 0.3)
    assert best is tie and runner is fast  # 98.5 vs 100 is within 3% noise: the smaller drop wins
    choose.why_lost([over, fast, tie, slow], best, 0.3)
    assert "accept_drop=0.3" in over["lost"] and "as fast within noise" in fast["lost"] and "slower" in slow["lost"]
    rows = [over, fast, tie, slow, {"quantizer": "nncf", "calibration": "speed proxy", "images_per_s": 50.0,
                                    "proxy_of": "nncf mixed preset"}, {"quantizer": "m", "calibration": "x", "not_tried": "."}]
    done = choose.tally(rows)
    assert done == ("4 scored on the full split, 1 timed through a speed proxy, not built, 1 not tried")
    why = choose.explain(best, runner, {"images_per_s": 99.0, "speed_noise": 0.03}, 0.3, done)
    assert "runner-up q fast: 100.0 images/s, drop 0.250" in why and "INT8 buys no speed" in why and done in why


def test_nothing_within_the_bar_leaves_the_choice_to_accuracy_and_fp32_is_a_point():
    assert choose.by_latency([row("a", 1.0, 100), row("b", 2.0, 120)], 0.3) == (None, None)
    fp32 = {"images_per_s": 50.0, "speed_noise": 0.03}
    best = row("a", 0.1, 100)
    verdict = choose.int8_verdict(best, fp32)
    assert verdict["int8_buys_speed"] and verdict["speedup_vs_fp32"] == 2.0
    pts = choose.pareto([best, {"quantizer": "q", "calibration": "untimed"}], fp32, best)
    assert [p["candidate"] for p in pts] == ["fp32", "q a"] and pts[1]["chosen"]


def test_the_report_draws_the_front_and_lists_it_as_a_table(tmp_path):
    from yolo_compile import plots
    from yolo_compile.report import html

    best = {**row("nncf mixed", 0.1, 100), "drop_noise": 0.05, "lost": ""}
    pts = choose.pareto([best, {**row("max", 0.9, 90), "lost": "drop 0.900 points > accept_drop=0.3"},
                         {"quantizer": "modelopt", "calibration": "entropy", "images_per_s": 80.0, "speed_noise": 0.04,
                          "lost": "not scored"}], {"images_per_s": 70.0, "speed_noise": 0.03}, best)
    svg = plots.pareto_chart(pts, 0.3, "front")
    assert svg.startswith("<svg") and "accept_drop 0.3" in svg and ">chosen<" in svg and ">FP32<" in svg
    assert "not scored" in svg and svg.count("<circle") == 2 and svg.count("<rect") == 1
    table = html.stage_html(tmp_path, "", {"status": "passed", "pareto": pts})
    assert "The front: mAP drop vs images/s" in table and "nncf mixed" in table and "images_per_s" in table


def test_the_report_lists_the_front_and_f1_at_the_threshold_as_tables():
    from yolo_compile.report.tables import decision_html

    best = {**row("nncf performance", 0.15, 70), "drop_noise": 0.09}
    slow = {**row("nncf performance, INT8 stem", None, 69), "lost": "not scored: not faster beyond noise"}
    del slow["drop_points"]
    quant = {"objective": "latency", "pareto": choose.pareto([best, slow], {"images_per_s": 29.0}, best),
             "chosen": {"accept_drop": 0.3, "latency": "OpenVINO on this CPU, batch 1", "says": "INT8 is 2.41x FP32"}}
    cls = {"class": 0, "targets": 10, "precision_fp32": 1.0, "precision_quantized": 0.9, "recall_fp32": 1.0,
           "recall_quantized": 0.8, "f1_fp32": 1.0, "f1_quantized": 0.847, "detections_fp32": 10, "detections_quantized": 9,
           "f1_drop_points": 15.3}
    at = {"conf": 0.25, "iou": 0.5, "fp32": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "detections": 10, "targets": 10},
          "quantized": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "detections": 9, "targets": 10},
          "f1_drop_points": 15.3, "per_class": [cls], "f1_drop_max": 5.0, "passed": False}
    page = decision_html({"quantize": quant, "compare": {"accuracy": {"at_threshold": at}},
                          "export": {"class_names": {"0": "short"}}})
    assert page.count("<tr class=chosen>") == 1 and "q nncf performance" in page and "not scored" in page
    assert "<td>fp32</td><td>0</td>" in page and "INT8 is 2.41x FP32" in page
    assert "<td>short</td><td>10</td>" in page and "gated: f1_drop_max 5.0" in page and "FAILED" in page
    assert decision_html({"quantize": {}, "compare": {}, "export": {}}) == ""


def test_a_pair_timed_side_by_side_is_judged_by_its_own_ratio():
    """The proxy timed beside the pace: 0.86x with noise 0.05 is slower, whatever noise the pace had against FP32."""
    from yolo_compile.quant.latency import tied

    pace = {**row("perf", 0.15, 70.0, noise=0.20), "file": "perf.onnx", "paired_with": "fp32", "speedup_vs_paired": 2.4}
    proxy = {**row("proxy", None, 60.2, noise=0.05), "file": "proxy.onnx", "paired_with": "perf.onnx",
             "speedup_vs_paired": 0.86}
    assert not tied(proxy, pace) and not tied(pace, proxy)  # the pace's 0.20 against FP32 does not widen this pair
    close = {**proxy, "speedup_vs_paired": 0.97, "images_per_s": 67.9}
    assert tied(close, pace)
    assert tied(row("x", 0.1, 100, noise=0.2), row("y", 0.1, 85, noise=0.03))  # no direct pair: the larger noise
