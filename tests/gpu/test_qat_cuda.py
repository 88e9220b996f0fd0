"""QAT on CUDA: a real (tiny) fine-tune whose checkpoint re-enters the compile. Skipped without CUDA."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)
pytest.importorskip("modelopt.torch.quantization", reason="ModelOpt's torch API (it imports huggingface_hub)")

from yolo_compile import fileio, runs
from yolo_compile.stages import export
from yolo_compile.qat import finetune as qat
from yolo_compile.pipeline import validate  # noqa: E402

from conftest import IMGSZ  # noqa: E402


def test_qat_writes_a_plain_checkpoint_the_compile_takes(run_copy, image_sets, tiny_checkpoint, tmp_path):
    from ultralytics import YOLO

    runs.init_manifest(run_copy, "default", {"model": str(tiny_checkpoint), "calib_dir": str(image_sets["calib"]),
                                             "eval_dir": str(image_sets["eval"]), "imgsz": IMGSZ, "target": "cpu"}, {})
    res = qat.run(qat.QatConfig(run_dir=str(run_copy), train_data=str(image_sets["data"]), out=str(tmp_path / "qat"),
                                epochs=2, batch=2, workers=0, calibration="entropy"))
    assert res.status == "passed" and len(res.losses) == 2 and res.calibration == "entropy"
    assert res.placement["int8"] > 0 and not res.placement["unmatched"]
    assert (tmp_path / "qat" / "qat.json").is_file() and fileio.sha256(res.checkpoint) == res.sha256
    ckpt = torch.load(res.checkpoint, weights_only=False, map_location="cpu")
    assert not ckpt.get("modelopt")  # a plain checkpoint: nothing of ModelOpt is needed to load it
    assert not any("quantizer" in k for k in ckpt["model"].state_dict())
    new, old = YOLO(res.checkpoint).model.state_dict(), YOLO(str(tiny_checkpoint)).model.state_dict()
    assert set(new) == set(old) and not torch.equal(new["model.1.conv.weight"].float(), old["model.1.conv.weight"].float())
    validate.model_file(Path(res.checkpoint))  # the compile's own check of a checkpoint: tensors and modules only
    out = export.run(export.ExportConfig(model=res.checkpoint, imgsz=IMGSZ), tmp_path / "run")  # the compile's first stage
    assert out.status == "passed"
    assert "--model" in res.compile_command and "calibration_method=entropy" in res.compile_command  # what QAT trained under
