"""GPU input paths side by side (issue 15): JPEG frames to detections on a CUDA GPU.

    python bench/gpu_input.py [--frames-dir data/aoi/val/images] [--resolutions 960x720,1920x1080]
                              [--batches 4,32] [--steps 20] [--profile] [--out docs/bandwidth/gpu_input.md]

NOT RUN YET: written on a machine without a GPU, with no device time in that round. Expect to fix API details
(DALI, nvImageCodec) on the first run; every path also reports its preprocessed tensor's largest difference from
the CPU letterbox (`max_abs_vs_cpu`), so a wrong pad value or channel order shows up as a number, not a guess.

Paths: the three of `yolo_compile.frames` (CPU decode + float32 upload, CPU decode + uint8 upload, torchvision
nvJPEG) and, where importable, NVIDIA DALI (mixed decode, GPU resize, crop_mirror_normalize to FP16 CHW) and
nvImageCodec (GPU decode; letterbox as the nvJPEG path). Each runs serial and overlapped (decode next / infer
current / NMS previous on three CUDA streams, preallocated ring buffers) into the reference checkpoint in FP16
with a CUDA graph (no TensorRT here; say so when quoting). Per row: frames/s, batch latency p50/p99,
host-to-device bytes a frame counted (what the code copies) and measured (NVML RX sampled every 20 ms, divided by
frames/s), GPU memory peak, model-only frames/s at the same batch and the end-to-end / model-only ratio (goal
>= 0.70). --profile writes a PyTorch profiler trace of one overlapped nvJPEG run beside the table.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def frames_at(folder: Path, count: int, size: tuple[int, int] | None, quality: int = 80) -> list[bytes]:
    """Return count JPEGs from folder, re-encoded at size (w, h) when given (what a camera of that size sends)."""
    import cv2

    from yolo_compile.frames import read_jpegs

    jpegs = read_jpegs(folder, count)
    if size is None:
        return jpegs
    out = []
    for j in jpegs:
        img = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    return out


class NvmlSampler:
    """Samples NVML's PCIe RX/TX throughput (KB/s over 20 ms windows) on a thread while the block runs."""

    def __init__(self):
        from yolo_compile.linkcheck import nvml_link

        self.handle, self.link, self.why = nvml_link()
        self.rx, self.tx, self._stop = [], [], threading.Event()

    def _loop(self):
        import pynvml

        while not self._stop.is_set():
            self.rx.append(pynvml.nvmlDeviceGetPcieThroughput(self.handle, pynvml.NVML_PCIE_UTIL_RX_BYTES) * 1e3)
            self.tx.append(pynvml.nvmlDeviceGetPcieThroughput(self.handle, pynvml.NVML_PCIE_UTIL_TX_BYTES) * 1e3)
            time.sleep(0.02)

    def __enter__(self):
        if self.handle is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._thread.join()

    def mean_rx(self) -> float | None:
        """Mean host-to-device bytes/s over the block (None without NVML)."""
        return float(np.mean(self.rx)) if self.rx else None


def letterbox_into(dst, imgs: list, size: int) -> None:
    """Letterbox CHW uint8 CUDA tensors into dst (N, 3, size, size) FP16 in 0..1, pad 114 (as pipeline's nvJPEG path)."""
    import torch.nn.functional as F

    from yolo_compile.images import PAD_VALUE
    from yolo_compile.frames import letterbox_geometry

    dst.fill_(PAD_VALUE / 255.0)
    for k, img in enumerate(imgs):
        h, w = img.shape[1:]
        nh, nw, top, left = letterbox_geometry(h, w, size)
        src = img[None].half()
        if (nh, nw) != (h, w):
            src = F.interpolate(src, size=(nh, nw), mode="bilinear", align_corners=False)
        dst[k, :, top:top + nh, left:left + nw] = src[0] / 255.0


def nvimgcodec_decoder(size: int):
    """Return device_part(frames, dst) decoding with nvImageCodec on the GPU, or raise ImportError."""
    import torch
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder()

    def part(frames, dst):
        imgs = decoder.decode(list(frames))  # device images, HWC uint8 RGB, __cuda_array_interface__
        letterbox_into(dst, [torch.as_tensor(i, device="cuda").permute(2, 0, 1) for i in imgs], size)
    return part


def dali_decoder(batch: int, size: int):
    """Return device_part(frames, dst) running a DALI pipeline (mixed decode, resize, pad, normalize), or raise ImportError."""
    import torch
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import feed_ndarray

    from yolo_compile.images import PAD_VALUE

    @pipeline_def(batch_size=batch, num_threads=4, device_id=0, prefetch_queue_depth=1)
    def pipe():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        imgs = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
        imgs = fn.resize(imgs, resize_longer=size, interp_type=types.INTERP_LINEAR, antialias=False)
        # centred square crop beyond the image = letterbox; fill_values are in output units (after normalization)
        return fn.crop_mirror_normalize(imgs, dtype=types.FLOAT16, output_layout="CHW", crop=(size, size),
                                        crop_pos_x=0.5, crop_pos_y=0.5, out_of_bounds_policy="pad",
                                        fill_values=[PAD_VALUE / 255.0] * 3, mean=[0.0], std=[255.0])

    p = pipe()
    p.build()

    def part(frames, dst):
        p.feed_input("jpegs", [np.frombuffer(j, np.uint8) for j in frames])
        (out,) = p.run()
        feed_ndarray(out.as_tensor(), dst, cuda_stream=torch.cuda.current_stream())
    return part


def make_pipeline(net, label: str, batch: int, size: int):
    """Return a frames.GpuPipeline for a label (the three built-in paths, DALI or nvImageCodec)."""
    from yolo_compile import frames as pipeline

    if label in pipeline.PATHS:
        return pipeline.GpuPipeline(net, label, batch, size)
    part = dali_decoder(batch, size) if "DALI" in label else nvimgcodec_decoder(size)
    pipe = pipeline.GpuPipeline(net, "gpu decode (nvJPEG)", batch, size)  # JPEG bytes up, no host decode
    pipe.path = label
    pipe.device_part = lambda frames, slot: part(frames, pipe.pre[slot])
    return pipe


def model_only(pipe, iters: int = 50) -> float:
    """Return frames/s of the CUDA-graphed model alone at the pipeline's batch."""
    import torch

    for _ in range(5):
        pipe.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        pipe.replay()
    end.record()
    end.synchronize()
    return pipe.batch * iters / (start.elapsed_time(end) / 1e3)


def max_abs_vs_cpu(pipe, frames: list[bytes]) -> float:
    """Return the largest |difference| between this path's preprocessed batch and the CPU letterbox."""
    import torch

    from yolo_compile.frames import cpu_letterboxed

    pipe.host_part(frames, 0)
    pipe.device_part(frames, 0)
    torch.cuda.synchronize()
    ref = np.stack([cpu_letterboxed(j, pipe.size)[:, :, ::-1].transpose(2, 0, 1) for j in frames]).astype(np.float32) / 255
    return float(np.abs(pipe.pre[0].float().cpu().numpy() - ref).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames-dir", type=Path, default=REPO / "data" / "aoi" / "val" / "images")
    ap.add_argument("--checkpoint", type=Path, default=REPO / "models" / "aoi_yolov8n.pt")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--resolutions", default="native,1920x1080")
    ap.add_argument("--batches", default="4,32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bandwidth" / "gpu_input.md")
    args = ap.parse_args()
    import torch

    from yolo_compile import frames as pipeline
    from yolo_compile.bandwidth import LINKS

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures GPU input paths and has nothing to run here")
        return 2
    net = pipeline.load_torch_detector(args.checkpoint, "cuda", half=True)
    labels = list(pipeline.PATHS) + ["gpu decode (DALI)", "gpu decode (nvImageCodec)"]
    rows, skipped = [], []
    for res in args.resolutions.split(","):
        size_wh = None if res == "native" else tuple(int(v) for v in res.lower().split("x"))
        for b in (int(v) for v in args.batches.split(",")):
            jpegs = frames_at(args.frames_dir, b * args.steps, size_wh)
            batches = [jpegs[i * b:(i + 1) * b] for i in range(args.steps)]
            for label in labels:
                try:
                    pipe = make_pipeline(net, label, b, args.imgsz)
                except ImportError as e:
                    skipped.append(f"{label}: {e}")
                    continue
                try:
                    diff = max_abs_vs_cpu(pipe, batches[0])
                    fps_model = model_only(pipe)
                    for mode, fn in (("serial", pipe.run_serial), ("overlapped", pipe.run_overlapped)):
                        fn(batches[:2])  # warm-up
                        torch.cuda.reset_peak_memory_stats()
                        with NvmlSampler() as nv:
                            r = fn(batches)
                        rx = nv.mean_rx()
                        link = LINKS.get(f"pcie{nv.link.get('generation')}_x{nv.link.get('width')}") if nv.link else None
                        rows.append({"frames": res, "path": label, "mode": mode, "batch": b,
                                     "frames_per_s": round(r["frames_per_s"], 1),
                                     "p50_ms": round(r["batch_latency_p50_ms"], 2), "p99_ms": round(r["batch_latency_p99_ms"], 2),
                                     "h2d_bytes_counted": round(pipe.bytes_per_frame(jpegs)),
                                     "h2d_bytes_nvml": round(rx / r["frames_per_s"]) if rx else "",
                                     "pcie_util_pct": round(100 * rx / (link[1] * 1e9), 1) if rx and link else "",
                                     "gpu_mem_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                                     "model_only_fps": round(fps_model), "e2e_over_model": round(r["frames_per_s"] / fps_model, 3),
                                     "max_abs_vs_cpu": round(diff, 4)})
                        print(rows[-1], flush=True)
                    if args.profile and label == "gpu decode (nvJPEG)" and b == max(int(v) for v in args.batches.split(",")):
                        from torch.profiler import ProfilerActivity, profile

                        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                            pipe.run_overlapped(batches)
                        prof.export_chrome_trace(str(args.out.with_suffix(f".{res}.trace.json")))
                        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
                finally:
                    pipe.close()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    text = (f"# GPU input paths ({torch.cuda.get_device_name(0)}, PyTorch FP16 + CUDA graph, no TensorRT)\n\n"
            f"Command: python bench/gpu_input.py {' '.join(sys.argv[1:])}\n\n" + "\n".join(lines) + "\n\n"
            + "".join(f"- skipped {s}\n" for s in skipped))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
