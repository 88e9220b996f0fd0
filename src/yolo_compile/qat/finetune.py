"""Quantization-aware fine-tuning (QAT): the next step when post-training quantization cannot pass the gate.

A compile run holds all that QAT must follow: the checkpoint, the calibration images and the quantize stage's
recipe (which ONNX nodes became INT8, by which calibration). `run` inserts ModelOpt's fake-quant into the
PyTorch model at the same places (`placement`: ONNX node names -> module names), calibrates it by the same
method on the same images, fine-tunes a few epochs on a labeled training split on CUDA, then writes a plain
Ultralytics checkpoint (trained weights, fake-quant stripped) that the ordinary compile takes again:
`yolo-compile run <workflow> --model qat.pt ...` (`compile_command` gives the line).

Ultralytics 8.4's own `train(quantize=8)` also fine-tunes with ModelOpt, but with its placement (max
calibration on training batches, the stem INT8); ours is the recipe the compile measured.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from yolo_compile import fileio, images, runs
from yolo_compile.config import check_positive
from yolo_compile.errors import QatError
from yolo_compile.qat.recipe import Placement, compile_command, onnx_nodes, placement, reference_map

log = logging.getLogger(__name__)
TORCH_METHODS = ("max", "entropy", "percentile")  # ModelOpt's torch calibrators: max, or histogram + method


@dataclass(frozen=True)
class QatConfig:
    run_dir: str  # a compile run whose quantize stage ran: its model, calibration images and recipe are followed
    train_data: str  # Ultralytics data.yaml whose 'train' split is labeled training images (never the gate's split)
    out: str = ""  # folder for the checkpoint and qat.json; default artifacts/qat/<run name> beside the runs
    epochs: int = 3  # fine-tuning epochs (a few: ~10% of the original training)
    lr: float = 1e-4  # AdamW peak learning rate, cosine to 0 (~10% of the from-scratch rate)
    batch: int = 32  # training batch size
    workers: int = 8  # data loader processes
    mosaic: float = 0.0  # Ultralytics mosaic probability (0: whole frames, as the line sees them)
    calibration: str = "run"  # run: the quantize stage's method | max | entropy | percentile-<p>
    calib_dir: str = ""  # where the run's calibration images are when its cached array is gone (checked by sha256)
    train_fraction: float = 1.0  # share of the train split used (Ultralytics' fraction)
    seed: int = 0  # training seed
    recalibrate: bool = True  # reset the ranges from the calibration images before each epoch (the compile recalibrates)
    fused_kernels: bool = False  # ModelOpt's CUDA fake-quant kernels (JIT-built with nvcc, minutes) instead of torch ops

    def __post_init__(self) -> None:
        check_positive("epochs", self.epochs)
        check_positive("lr", self.lr)
        check_positive("batch", self.batch)
        if not 0 < self.train_fraction <= 1:
            raise QatError(f"parameter 'train_fraction' = {self.train_fraction}: give a share in (0, 1]")
        if not (Path(self.run_dir) / runs.MANIFEST).is_file():
            raise QatError(f"{self.run_dir}: not a compile run folder (no {runs.MANIFEST}); pass artifacts/runs/<run>")
        if not Path(self.train_data).is_file():
            raise QatError(f"{self.train_data}: training data.yaml not found; pass --data with a labeled 'train' split")
        torch_method(self.calibration if self.calibration != "run" else "max")


@dataclass
class QatResult:
    status: str
    checkpoint: str
    sha256: str
    source_model: str
    run_dir: str
    calibration: str
    epochs: int
    lr: float
    batch: int
    train_images: int
    calibration_images: int
    losses: list = field(default_factory=list)  # mean training loss per epoch (box + cls + dfl)
    placement: dict = field(default_factory=dict)
    device: str = ""
    seconds: dict = field(default_factory=dict)
    compile_command: str = ""
    # the original model's FP32 mAP50-95 from the failed run: the new compile's gate measures against the QAT
    # checkpoint's own FP32, which fine-tuning can lower, so judge its INT8 mAP against this one
    reference_map50_95: float | None = None


def torch_method(name: str) -> tuple[str, dict]:
    """Return (ModelOpt torch calibrator method, its kwargs) for a quantize-stage calibration name."""
    if name == "max":
        return name, {}
    if name == "entropy":  # every 16th bin from 128, as the compile's own entropy (scales.entropy_bin); 16x faster
        return name, {"stride": 16, "start_bin": 128}
    m = re.fullmatch(r"percentile(?:-([0-9.]+))?", name)
    if m:
        return "percentile", {"percentile": float(m.group(1) or 99.99)}
    raise QatError(f"calibration {name!r}: QAT calibrates one method for the whole model; give --calibration "
                   "max, entropy or percentile-<p> (a per-group mix or NNCF's ranges have no torch counterpart)")


def quantizable(net) -> list[str]:
    """Return the names of the modules ModelOpt gives quantizers to (its registry: Conv, Linear, pooling...).

    BatchNorm is left out: the export folds it into the conv before it, and ModelOpt's INT8 config disables it.
    """
    import torch
    from modelopt.torch.quantization.nn import QuantModuleRegistry

    return [n for n, m in net.named_modules()
            if n and type(m) in QuantModuleRegistry and not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def insert_fake_quant(net, plan: Placement, method: str, batches, device: str = "cuda"):
    """Fake-quantize net at plan.int8 (INT8 per-channel weights, per-tensor inputs), calibrated on batches."""
    import modelopt.torch.quantization as mtq

    kind, _ = torch_method(method)
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    if kind != "max":  # entropy and percentile read a histogram of each input (TensorRT's calibrators)
        cfg["quant_cfg"] = [{**e, "cfg": {**e["cfg"], "calibrator": "histogram"}}
                            if e.get("quantizer_name") == "*input_quantizer" else e for e in cfg["quant_cfg"]]
    off = [{"quantizer_name": f"{m}.*", "enable": False} for m in plan.float + plan.unmatched]
    cfg["quant_cfg"] = cfg["quant_cfg"] + off
    cfg["algorithm"] = None  # calibrated below, by `calibrate`: ModelOpt's max algorithm cannot finish a histogram
    net = mtq.quantize(net, cfg)
    calibrate(net, batches, method, device)
    return net


def calibrate(net, batches, method: str, device: str = "cuda") -> None:
    """(Re)set every enabled quantizer's range from batches: weights per-channel max, inputs by `method`."""
    import torch
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.nn import TensorQuantizer

    kind, kw = torch_method(method)
    quantizers = [q for q in net.modules() if isinstance(q, TensorQuantizer) and q.is_enabled]
    training = net.training
    net.eval()  # calibration sees BatchNorm as inference does
    for q in quantizers:
        q._calibrator.reset()
        q.disable_quant()
        q.enable_calib()
    with torch.no_grad():
        for x in batches:
            net(torch.from_numpy(images.to_float(x)).to(device))
    for q in quantizers:
        if isinstance(q._calibrator, HistogramCalibrator):
            q.load_calib_amax(kind, **kw)
        else:  # max: the weights' per-channel range, or every input's with method max
            q.load_calib_amax()
        q.enable_quant()
        q.disable_calib()
    net.train(training)


def enabled_quantizers(net) -> list[str]:
    """Return the names of the modules whose quantizers are on."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sorted({n.rsplit(".", 1)[0] for n, m in net.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled})


def finetune(net, train_data: str, cfg: QatConfig, imgsz: int, device: str = "cuda",
             recalibrate=None) -> tuple[list[float], int]:
    """Train net (fake-quant in, BatchNorm statistics frozen) on the data.yaml's train split; return (losses, images).

    recalibrate (batches, method), when given, sets the ranges again from the calibration images before every
    epoch after the first, so the last epoch trains under the ranges the compile will calibrate for these weights.
    """
    import torch
    from tqdm.auto import tqdm
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    args = get_cfg(overrides={"imgsz": imgsz, "batch": cfg.batch, "mosaic": cfg.mosaic, "workers": cfg.workers,
                              "seed": cfg.seed, "cache": False, "plots": False})
    data = check_det_dataset(train_data, autodownload=False)
    dataset = build_yolo_dataset(args, data["train"], cfg.batch, data, mode="train", stride=int(net.stride.max()),
                                 fraction=cfg.train_fraction)
    loader = build_dataloader(dataset, cfg.batch, cfg.workers, shuffle=True, device=device)
    net.args = args  # the loss reads its box/cls/dfl gains from here
    for name, p in net.named_parameters():  # a trained checkpoint comes frozen; the DFL's fixed conv stays so
        p.requires_grad_(".dfl" not in name)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = cfg.epochs * len(loader)
    warm = max(1, steps // 20)  # linear warm-up over 5% of the steps, then cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warm if i < warm else
                                              0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm))))
    torch.manual_seed(cfg.seed)
    losses = []
    for epoch in range(cfg.epochs):
        if recalibrate and epoch:
            calibrate(net, *recalibrate, device)
        net.train()
        for m in net.modules():  # the deployed graph folds BatchNorm with these statistics: keep them
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        total = 0.0
        for batch in tqdm(loader, desc=f"QAT epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            batch["img"] = batch["img"].float() / 255
            loss, items = net.loss(batch)  # loss: (box, cls, dfl) x batch size; items: {name: per-image value}
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            total += float(sum(items.values()))
        losses.append(round(total / len(loader), 4))
        log.info("QAT epoch %d: mean loss %.4f", epoch + 1, losses[-1])
    net.eval()
    return losses, len(dataset)


def plain_state(qat_net) -> dict:
    """Return the trained weights without the quantizers' buffers (what a plain Ultralytics model loads)."""
    return {k: v for k, v in qat_net.state_dict().items() if "_quantizer" not in k}


def run(cfg: QatConfig, device: str = "cuda") -> QatResult:
    """Fine-tune the run's model with fake-quant at the recipe's places; write <out>/<model>-qat.pt and qat.json.

    QAT is GPU work (the CLI offers no other device); device="cpu" exists for small checks on a CPU machine.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QatError("qat needs a CUDA GPU (torch.cuda.is_available() is False): run it on an NVIDIA host")
    run_dir = Path(cfg.run_dir).resolve()
    manifest = runs.read_manifest(run_dir)
    exp, quant = runs.require_passed(run_dir, "export"), runs.require_passed(run_dir, "quantize")
    if quant.get("recipe") == "float":
        raise QatError(f"{run_dir}: its recipe is 'float' (no INT8): nothing to fine-tune for")
    method = quant.get("calibration_method", "max") if cfg.calibration == "run" else cfg.calibration
    if quant.get("quantizer") == "nncf" and cfg.calibration == "run":
        raise QatError(f"{run_dir}: NNCF quantized this run; give --calibration max|entropy|percentile-<p> for ModelOpt's")
    torch_method(method)
    source = Path(manifest["parameters"]["model"])
    out = Path(cfg.out or run_dir.parent.parent / "qat" / run_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    calib = calibration_array(run_dir, cfg.calib_dir)
    if not cfg.fused_kernels:  # ModelOpt falls back to its torch ops when its CUDA extension is absent
        from modelopt.torch.quantization import extensions

        extensions.get_cuda_ext.extension = None
    from ultralytics import YOLO

    t = {}
    with runs.Timer() as tq:
        model = YOLO(str(source))
        net = model.model.to(device).float()
        plan = placement(onnx_nodes(run_dir / exp["onnx"]), quant["quantized_nodes"], quantizable(net))
        batches = [calib[i:i + 8] for i in range(0, len(calib), 8)]
        qnet = insert_fake_quant(copy.deepcopy(net), plan, method, batches, device)
    t["calibrate_s"] = round(tq.seconds, 1)
    with runs.Timer() as tt:
        losses, n_train = finetune(qnet, cfg.train_data, cfg, int(exp["imgsz"]), device,
                                   recalibrate=(batches, method) if cfg.recalibrate else None)
    t["train_s"] = round(tt.seconds, 1)
    net.load_state_dict(plain_state(qnet))  # strict: every weight of the plain model, no quantizer left
    ckpt = out / f"{source.stem}-qat.pt"
    model.model = net.cpu()
    with fileio.atomic_path(ckpt) as tmp:
        model.save(str(tmp))
    result = QatResult(
        status="passed", checkpoint=str(ckpt), sha256=fileio.sha256(ckpt), source_model=str(source), run_dir=str(run_dir),
        calibration=method, epochs=cfg.epochs, lr=cfg.lr, batch=cfg.batch, train_images=n_train,
        calibration_images=int(len(calib)), losses=losses,
        placement={"int8": len(plan.int8), "float": plan.float, "onnx_only": plan.onnx_only, "unmatched": plan.unmatched},
        device=torch.cuda.get_device_name(0) if device.startswith("cuda") else device, seconds=t,
        compile_command=compile_command(run_dir, ckpt, method), reference_map50_95=reference_map(run_dir),
    )
    fileio.write_json(out / "qat.json", {**asdict(result), "config": asdict(cfg)})
    return result


def calibration_array(run_dir: Path, calib_dir: str = "") -> np.ndarray:
    """Return the run's calibration tensors: its cached array, else its listed files re-read (sha256-checked)."""
    cal = runs.require_passed(run_dir, "calibrate")
    if not calib_dir and Path(cal["array"]).is_file():
        return np.load(cal["array"], mmap_mode="r")
    folder = Path(calib_dir or cal["calib_dir"])
    paths = [folder / f["file"] for f in cal["files"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise QatError(f"{missing[0]}: a calibration image of {run_dir} is missing; pass --calib with the run's calib_dir")
    exp = runs.read_result(run_dir, "export")
    got = images.preprocessed(paths, int(exp["imgsz"]), runs.cache_root(run_dir), desc="calibration images")
    if got.hashes != [f["sha256"] for f in cal["files"]]:
        raise QatError(f"{folder}: its images differ from those {run_dir} calibrated on (sha256); pass the run's calib_dir")
    return got.array
