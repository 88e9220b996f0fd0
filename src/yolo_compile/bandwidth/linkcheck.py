"""Cross-check of the bandwidth arithmetic where a CUDA GPU is present: timed copies and NVML's PCIe counters.

For each input path, a batch of that path's bytes a frame is copied host (pinned) -> device repeatedly; the
copy rate is compared with the modelled payload rate of the link the GPU negotiated (NVML's current PCIe
generation and width), and NVML's receive throughput, sampled while the copies run, is compared with the
bytes we counted. Without a GPU every row is skipped with its reason; nothing is estimated in its place.
"""

from __future__ import annotations

import logging
import statistics
import time

log = logging.getLogger(__name__)


def nvml_link() -> tuple[object, dict, str]:
    """Return (NVML device handle or None, {generation, width}, reason when unavailable)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None, {}, "nvidia-ml-py is not installed (pip install 'yolo-compile[bandwidth]')"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info = {"generation": int(pynvml.nvmlDeviceGetCurrPcieLinkGeneration(handle)),
                "width": int(pynvml.nvmlDeviceGetCurrPcieLinkWidth(handle))}
    except Exception as e:  # NVML raises its own error types per call
        return None, {}, f"NVML failed: {type(e).__name__}: {e}"
    return handle, info, ""


def crosscheck(paths: list[dict], batch: int, size: int, jpeg: dict, seconds: float = 0.5) -> tuple[list[dict], list[str]]:
    """Return (rows, skipped): per input path, measured host-to-device rate and NVML receive rate vs the model."""
    from pathlib import Path

    from yolo_compile.bandwidth.links import LINKS
    from yolo_compile.gpu.device import cuda_device

    gpus = Path("/proc/driver/nvidia/gpus")
    if not (gpus.is_dir() and any(gpus.iterdir())):  # answer without importing torch (seconds) where no driver is
        return [], ["GPU cross-check (timed host-to-device copies, NVML PCIe counters): no NVIDIA GPU is visible "
                    "(/proc/driver/nvidia/gpus is empty)"]
    ok, why = cuda_device()
    if not ok:
        return [], [f"GPU cross-check (timed host-to-device copies, NVML PCIe counters): {why}"]
    import torch

    handle, link, nvml_why = nvml_link()
    skipped = [f"NVML PCIe counters: {nvml_why}"] if nvml_why else []
    modelled = LINKS.get(f"pcie{link.get('generation')}_x{link.get('width')}") if link else None
    rows = []
    for p in paths:
        nbytes = int(p["link_in_bytes"]) * batch
        host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        for _ in range(3):
            dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters = max(3, int(seconds * 20e9 / max(nbytes, 1)))  # ~seconds at 20 GB/s
        start.record()
        for _ in range(iters):
            dev.copy_(host, non_blocking=True)
        end.record()
        samples = []
        while handle is not None and not end.query():  # NVML reports KB/s over its last 20 ms window
            import pynvml

            samples.append(pynvml.nvmlDeviceGetPcieThroughput(handle, pynvml.NVML_PCIE_UTIL_RX_BYTES) * 1e3)
            time.sleep(0.02)
        end.synchronize()
        rate = nbytes * iters / (start.elapsed_time(end) / 1e3)
        row = {"path": p["path"], "batch": batch, "bytes_per_frame_counted": p["link_in_bytes"],
               "copy_gb_per_s": round(rate / 1e9, 2), "copy_us_per_frame": round(1e6 * nbytes / batch / rate, 2)}
        if link:
            row["pcie"] = f"Gen{link['generation']} x{link['width']}"
        if modelled:
            row["modelled_gb_per_s"] = round(modelled[1], 2)
            row["measured_over_modelled"] = round(rate / 1e9 / modelled[1], 3)
        if samples:
            row["nvml_rx_gb_per_s_median"] = round(statistics.median(samples) / 1e9, 2)
        rows.append(row)
        del host, dev
    if not jpeg:
        skipped.append("GPU cross-check of the JPEG path: no JPEG frames were measured")
    log.info("GPU cross-check: %s", rows)
    return rows, skipped
