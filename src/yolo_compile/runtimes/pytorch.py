"""PyTorch: loading an Ultralytics checkpoint offline, the fused detector, CUDA graphs, and the runner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from yolo_compile.errors import ExportError
from yolo_compile.runtimes.base import BaseRunner

NAME, MODULE, INSTALL = "pytorch", "torch", "pip install torch"


def offline_ultralytics() -> None:
    """Stop Ultralytics from reaching the network: no auto-installs, no hub checks, no downloads."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    import sys

    if "ultralytics" not in sys.modules:
        import ultralytics  # noqa: F401  (reads the variables above once, at import)
    for name, mod in list(sys.modules.items()):
        # Every place it could fetch something from the network (fonts, yolo*.pt for AMP checks, assets) goes
        # through these two functions; our compile needs none of them, so any call is a bug worth a clear error.
        if name.startswith("ultralytics") and mod is not None:
            for fn in ("safe_download", "attempt_download_asset"):
                if callable(getattr(mod, fn, None)) and getattr(getattr(mod, fn), "__module__", "") != __name__:
                    setattr(mod, fn, _refuse_download)


def _refuse_download(*args, **kwargs):
    """Stand-in for Ultralytics' downloaders: a compile never fetches anything."""
    target = kwargs.get("url") or kwargs.get("file") or (args[0] if args else "?")
    if isinstance(target, (str, Path)) and Path(target).is_file():  # a local file: nothing to fetch
        return str(target)
    raise ExportError(f"Ultralytics tried to download {target}; yolo-compile runs offline: put the file in place or "
                      "pass a local path")


def check_model_path(path: Path) -> None:
    """Raise ExportError unless path is an existing .pt or a .yaml (Ultralytics resolves its own yamls by name)."""
    if path.suffix not in (".pt", ".yaml", ".yml"):
        raise ExportError(f"{path}: expected an Ultralytics .pt checkpoint or model .yaml, got '{path.suffix}'")
    if path.suffix == ".pt" and not path.is_file():
        raise ExportError(f"{path}: no such checkpoint; pass --model PATH to an existing .pt")


def load_model(path: Path, shown: Path | None = None):
    """Return an ultralytics.YOLO for a .pt or .yaml; errors name `shown` (the user's file) or path."""
    offline_ultralytics()
    from ultralytics import YOLO

    shown = shown or path
    check_model_path(path)
    try:
        model = YOLO(str(path), task="detect")
    except Exception as e:  # ultralytics raises many types for bad files
        raise ExportError(f"{shown}: could not be loaded as an Ultralytics detector ({type(e).__name__}: {e})") from e
    if getattr(model, "task", None) != "detect":
        raise ExportError(f"{shown}: task is {model.task!r}; yolo-compile compiles detection models only")
    return model


def load_torch_detector(checkpoint: str | Path, device: str, half: bool):
    """Return the checkpoint's DetectionModel, fused, in eval mode, on device (FP16 when half)."""
    net = load_model(Path(checkpoint)).model.float().fuse().eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.half() if half else net


def raw_output(out):
    """Return the decoded (B, 4 + classes, anchors) tensor of an Ultralytics forward (eval returns a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def cuda_graph(net, x):
    """Return (replay, static_output): net(x) captured as a CUDA graph on x's static buffer."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):  # lets cuDNN pick kernels and Ultralytics cache its anchors before capture
            net(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = raw_output(net(x))
    return graph.replay, out


class PyTorchRunner(BaseRunner):
    """The checkpoint a user would otherwise deploy: Ultralytics' DetectionModel, fused, eager or CUDA-graphed."""

    name = "pytorch"

    def __init__(self, checkpoint: Path, device: str = "cpu", half: bool = False, graph: bool = False):
        import torch

        self.model, self.device, self.half, self.graph = checkpoint, device, half, graph
        self.dtype = torch.float16 if half else torch.float32
        self.net = load_torch_detector(checkpoint, device, half)
        self.input_name, self.static_batch = "images", None
        if device == "cuda":
            torch.backends.cudnn.benchmark = True

    def _tensor(self, x: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return raw_output(self.net(self._tensor(x))).float().cpu().numpy()

    def prepare(self, x: np.ndarray) -> Callable[[], object]:
        import torch

        xd = self._tensor(x)
        if self.graph:
            replay, _ = cuda_graph(self.net, xd)  # static batch: one graph per prepared input
            return replay

        def call():
            with torch.inference_mode():
                return self.net(xd)

        return call

    def describe(self) -> dict:
        import torch

        variant = ("fp16" if self.half else "fp32") + (" + cuda graph" if self.graph else " eager")
        return {"backend": self.name, "version": torch.__version__, "device": self.device, "model": str(self.model),
                "variant": variant}
