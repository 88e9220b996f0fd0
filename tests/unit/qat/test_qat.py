"""QAT on CPU: config, the refusal without CUDA, and the ONNX recipe mapped onto the torch model's quantizers."""

import shlex

import numpy as np
import onnx
import pytest

from yolo_compile import fileio, runs
from yolo_compile.qat import finetune as qat
from yolo_compile.qat import recipe as qat_recipe
from yolo_compile import errors
from yolo_compile.errors import CompileError, ConfigError

from conftest import IMGSZ


def _with_manifest(run_dir, checkpoint, image_sets):
    params = {"model": str(checkpoint), "calib_dir": str(image_sets["calib"]), "eval_dir": str(image_sets["eval"]),
              "data": str(image_sets["data"]), "target": "cpu", "recipe": "mixed", "imgsz": IMGSZ,
              "calibration_method": "max", "quantizer": "modelopt", "calib_sweep": [], "trusted_models": "abc"}
    runs.init_manifest(run_dir, "default", params, {})
    return run_dir


def _nodes(run_dir):
    exp = runs.read_result(run_dir, "export")
    return {n.name: n.op_type for n in onnx.load(str(run_dir / exp["onnx"]), load_external_data=False).graph.node}


def test_module_of_folds_onnx_scopes_back_to_module_paths():
    assert qat_recipe.module_of("/model.0/conv/Conv") == "model.0.conv"
    assert qat_recipe.module_of("/model.22/cv2.0/cv2.0.2/Conv") == "model.22.cv2.0.2"
    assert qat_recipe.module_of("/model.22/cv3.1/cv3.1.0/conv/Conv") == "model.22.cv3.1.0.conv"
    assert qat_recipe.module_of("/model.4/m.1/cv2/conv/Conv") == "model.4.m.1.cv2.conv"
    assert qat_recipe.module_of("/model.9/m_2/MaxPool") == "model.9.m_2"  # placement() folds the repeated call


@pytest.fixture(scope="module")
def tiny_net(tiny_checkpoint):
    pytest.importorskip("modelopt.torch.quantization", reason="ModelOpt's torch API (it imports huggingface_hub)")
    from ultralytics import YOLO

    return YOLO(str(tiny_checkpoint)).model.float().eval()


def test_placement_follows_the_onnx_recipe(quantized_run, tiny_net):
    quant = runs.read_result(quantized_run, "quantize")
    nodes = _nodes(quantized_run)
    plan = qat_recipe.placement(nodes, quant["quantized_nodes"], qat.quantizable(tiny_net))
    head = int(runs.read_result(quantized_run, "export")["head_index"])
    # every Conv and MaxPool of the graph is a torch module with quantizers; nothing torch quantizes is missing
    assert not plan.unmatched
    assert all(nodes[n] not in ("Conv", "MaxPool") for n in plan.onnx_only), plan.onnx_only
    assert {nodes[n] for n in plan.onnx_only} <= {"Add", "Concat", "Resize"}
    int8_convs = [n for n in quant["quantized_nodes"] if nodes[n] == "Conv"]
    assert len(plan.int8) == len(int8_convs) + 1  # + SPPF's MaxPool module, called three times in the graph
    assert "model.9.m" in plan.int8
    # the recipe's float nodes are float in torch: the stem conv, the head's output convs and the DFL
    want_float = {"model.0.conv", f"model.{head}.dfl.conv"} | {f"model.{head}.cv{b}.{k}.2" for b in (2, 3) for k in range(3)}
    assert set(plan.float) == want_float
    assert f"model.{head}.cv2.0.0.conv" in plan.int8  # the head's 3x3 branch convs are INT8 in 'mixed'


@pytest.mark.parametrize("method", ["max", "entropy"])
def test_fake_quant_is_on_exactly_where_the_recipe_is_int8(quantized_run, tiny_net, method):
    import copy

    import torch

    quant = runs.read_result(quantized_run, "quantize")
    plan = qat_recipe.placement(_nodes(quantized_run), quant["quantized_nodes"], qat.quantizable(tiny_net))
    calib = qat.calibration_array(quantized_run)
    qnet = qat.insert_fake_quant(copy.deepcopy(tiny_net), plan, method, [calib[:4], calib[4:]], device="cpu")
    assert qat.enabled_quantizers(qnet) == plan.int8
    amax = {n: m.amax for n, m in qnet.named_modules() if n.endswith("input_quantizer") and m.is_enabled}
    assert len(amax) == len(plan.int8) and all(bool(torch.isfinite(a).all()) and float(a.max()) > 0 for a in amax.values())
    x = torch.from_numpy(calib[:2].astype(np.float32) / 255)
    with torch.no_grad():
        ref, out = tiny_net(x)[0], qnet(x)[0]
    assert 0 < float((ref - out).abs().max())  # the fake-quant acts
    plain = copy.deepcopy(tiny_net)
    plain.load_state_dict(qat.plain_state(qnet))  # strict: the weights alone load into the plain model


def test_calibration_array_rereads_the_listed_images_and_checks_them(run_copy, image_sets, tmp_path):
    cal = runs.read_result(run_copy, "calibrate")
    arr = qat.calibration_array(run_copy, str(image_sets["calib"]))
    assert np.array_equal(np.asarray(arr), np.load(cal["array"]))
    other = tmp_path / "other"
    other.mkdir()
    for f in cal["files"]:
        (other / f["file"]).write_bytes((image_sets["eval"] / sorted(p.name for p in image_sets["eval"].iterdir())[0]).read_bytes())
    with pytest.raises(errors.QatError, match="differ"):
        qat.calibration_array(run_copy, str(other))


def test_config_refuses_bad_input(run_copy, image_sets, tiny_checkpoint, tmp_path):
    run = _with_manifest(run_copy, tiny_checkpoint, image_sets)
    with pytest.raises(errors.QatError, match="not a compile run"):
        qat.QatConfig(run_dir=str(tmp_path), train_data=str(image_sets["data"]))
    with pytest.raises(errors.QatError, match="data.yaml not found"):
        qat.QatConfig(run_dir=str(run), train_data=str(tmp_path / "none.yaml"))
    with pytest.raises(errors.QatError, match="one method"):
        qat.QatConfig(run_dir=str(run), train_data=str(image_sets["data"]), calibration="max backbone + entropy")
    with pytest.raises(ConfigError, match="epochs"):
        qat.QatConfig(run_dir=str(run), train_data=str(image_sets["data"]), epochs=0)
    assert qat.torch_method("percentile-99.999") == ("percentile", {"percentile": 99.999})


def test_refuses_without_cuda_in_one_line(run_copy, image_sets, tiny_checkpoint, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/gpu/test_qat_cuda.py runs the real thing")
    from yolo_compile.cli import main

    run = _with_manifest(run_copy, tiny_checkpoint, image_sets)
    with pytest.raises(CompileError, match="needs a CUDA GPU"):
        qat.run(qat.QatConfig(run_dir=str(run), train_data=str(image_sets["data"])))
    assert main(["qat", str(run), "--data", str(image_sets["data"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err


def test_compile_command_reenters_the_ordinary_compile(run_copy, image_sets, tiny_checkpoint, tmp_path):
    from yolo_compile.pipeline.workflow import load_workflow, resolve_params

    run = _with_manifest(run_copy, tiny_checkpoint, image_sets)
    new = tmp_path / "tiny-qat.pt"
    new.write_bytes(tiny_checkpoint.read_bytes())
    words = shlex.split(qat_recipe.compile_command(run, new))
    assert words[:5] == ["yolo-compile", "run", "default", "--model", str(new)]
    sets = dict(w.split("=", 1) for w in words[words.index("--set") + 1::2])
    assert sets["calibration_method"] == "max" and sets["quantizer"] == "modelopt" and sets["target"] == "cpu"
    assert "trusted_models" not in sets  # it would refuse the new checkpoint
    flags = dict(zip(words[5::2], words[6::2]))
    overrides = {**{k: v for k, v in sets.items()}, "model": str(new), "calib_dir": flags["--calib"],
                 "eval_dir": flags["--eval"]}
    params = resolve_params(load_workflow("default"), overrides)  # every name is a known, well-typed parameter
    assert params["calibration_method"] == "max" and params["imgsz"] == IMGSZ
    assert "reference_map" not in sets  # this run's compare measured no mAP: nothing to judge against
    from yolo_compile import runs

    fileio.write_json(run / "compare" / "result.json", {"status": "failed", "accuracy": {"fp32": {"map50_95": 0.79471}}})
    words = shlex.split(qat_recipe.compile_command(run, new))
    sets = dict(w.split("=", 1) for w in words[words.index("--set") + 1::2])
    assert sets["reference_map"] == "0.7947"  # the QAT compile's gate: the original model's mAP, not its own FP32
    assert resolve_params(load_workflow("default"), {**overrides, "reference_map": 0.7947})["reference_map"] == 0.7947


def test_qat_command_trains_on_a_train_split_only_when_it_is_not_the_gates(image_sets, tmp_path):
    assert qat_recipe.qat_command("runs/r", str(image_sets["data"])).endswith("--data TRAIN_DATA.yaml")  # train: == val:
    data = tmp_path / "data.yaml"
    data.write_text("train: train/images\nval: val/images\nnames: {0: a}\n")
    assert qat_recipe.qat_command("runs/r", str(data)) == f"yolo-compile qat runs/r --data {data}"
    assert "yolo-compile qat runs/r" in qat_recipe.next_step("runs/r") and "could not pass" in qat_recipe.next_step("runs/r")


def test_finetune_loop_trains_the_fake_quant_model_on_cpu(quantized_run, tiny_net, image_sets):
    """The loop `run` drives on CUDA, here on CPU for two epochs: weights and ranges move, BatchNorm statistics do not."""
    import copy

    import torch

    quant = runs.read_result(quantized_run, "quantize")
    plan = qat_recipe.placement(_nodes(quantized_run), quant["quantized_nodes"], qat.quantizable(tiny_net))
    calib = qat.calibration_array(quantized_run)
    qnet = qat.insert_fake_quant(copy.deepcopy(tiny_net), plan, "entropy", [calib[:8]], device="cpu")
    bn = [m for m in qnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and [type(m).__name__ for m in bn][0] == "QuantBatchNorm2d"  # ModelOpt's wrapper is still a BatchNorm2d
    before = {k: v.clone() for k, v in qat.plain_state(qnet).items()}
    cfg = qat.QatConfig.__new__(qat.QatConfig)  # the fields finetune reads, without a run folder
    for k, v in {"epochs": 2, "lr": 1e-3, "batch": 2, "workers": 0, "mosaic": 0.0, "seed": 0}.items():
        object.__setattr__(cfg, k, v)
    amax = qnet.model[1].conv.input_quantizer.amax.clone()
    losses, n = qat.finetune(qnet, str(image_sets["data"]), cfg, IMGSZ, device="cpu", recalibrate=([calib[:8]], "entropy"))
    after = qat.plain_state(qnet)
    assert n == 6 and len(losses) == 2 and np.isfinite(losses).all() and min(losses) > 0
    assert not torch.equal(amax, qnet.model[1].conv.input_quantizer.amax)  # ranges set again for the trained weights
    assert not torch.equal(before["model.1.conv.weight"], after["model.1.conv.weight"])
    assert torch.equal(before["model.1.bn.running_mean"], after["model.1.bn.running_mean"])
    assert not qnet.training


def test_a_gate_that_fails_after_the_search_names_the_qat_command(run_copy, image_sets, monkeypatch, capsys):
    """compare's result, its error, the report and the CLI carry the study's next step (the study itself is slow)."""
    import json

    from yolo_compile.stages import compare
    from yolo_compile.quant import study
    from yolo_compile.cli import _print_next_step
    from yolo_compile.errors import CompareError
    from yolo_compile.report.html import write_report

    failed = {"search": {"passed": False, "steps": [], "next_step": qat_recipe.next_step(run_copy, str(image_sets["data"]))}}
    monkeypatch.setattr(study.Study, "run", lambda self, deep: ([], failed if deep else {}, []))
    cfg = compare.CompareConfig(eval_dir=str(image_sets["eval"]), eval_images=3, score_atol=1e-12, study="auto")
    with pytest.raises(CompareError, match="could not pass.*yolo-compile qat"):
        compare.run(cfg, run_copy)
    res = json.loads((run_copy / "compare" / "result.json").read_text())
    assert qat_recipe.reference_map(run_copy) is None  # no labeled split here; with one, the FP32 mAP QAT must be judged by
    assert res["next_step"].endswith(f"yolo-compile qat {run_copy} --data TRAIN_DATA.yaml")
    runs.init_manifest(run_copy, "default", {}, {})
    assert "yolo-compile qat" in write_report(run_copy, "failed").read_text()
    capsys.readouterr()
    _print_next_step(run_copy)
    assert capsys.readouterr().out.startswith("next step: post-training quantization could not pass")
