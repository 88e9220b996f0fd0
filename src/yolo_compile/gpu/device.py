"""CUDA device facts: whether PyTorch sees a GPU, and its clocks, temperature and power (nvidia-smi)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cuda_device() -> tuple[bool, str]:
    """Return (usable, reason) for PyTorch CUDA on this machine."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia")):
        return False, "no NVIDIA driver (/dev/nvidiactl absent)"  # and no 2-3 s torch import to learn it
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, torch.cuda.get_device_name(0)


def gpu_clocks() -> dict:
    """Return nvidia-smi's clocks, temperature, power and performance state of GPU 0 (empty without one)."""
    fields = ("name", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "temperature.gpu", "power.draw",
              "pstate")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode or not lines:
        return {}
    return dict(zip(fields, (v.strip() for v in lines[0].split(","))))
