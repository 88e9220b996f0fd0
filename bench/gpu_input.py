"""GPU input paths side by side (issue 15): JPEG frames to detections on a CUDA GPU.

    python bench/gpu_input.py [--frames-dir data/aoi/val/images] [--resolutions native,1920x1080]
                              [--batches 4,32] [--frames 640] [--profile] [--linkcheck] [--out-dir DIR]

Paths: the three of `yolo_compile.gpu.frames` (CPU decode + float32 upload, CPU decode + uint8 upload, torchvision
nvJPEG) and, where importable, NVIDIA DALI (mixed decode, GPU resize, crop_mirror_normalize to FP16 CHW) and
nvImageCodec (GPU decode, hardware JPEG engines first; letterbox as the nvJPEG path). Each runs serial and
overlapped (decode next / infer current / NMS previous on three CUDA streams, preallocated ring buffers) into the
reference checkpoint in FP16 with a CUDA graph (no TensorRT here; say so when quoting). Per row: frames/s, batch
latency p50/p99, host-to-device bytes a frame counted (what the code copies) and measured (NVML RX sampled on a
thread, divided by frames/s), PCIe RX utilisation of the negotiated link, GPU memory peak (PyTorch's allocator and
NVML's device total), model-only frames/s at the same batch and the end-to-end / model-only ratio (goal >= 0.70).
Serial rows also give the per-batch time of each part (host decode, upload or GPU decode, inference, NMS). Every
path reports its preprocessed tensor's largest and mean difference from the CPU letterbox (`max_abs_vs_cpu`).
--profile writes PyTorch profiler tables (and one trace) of the overlapped GPU-decode runs at the largest batch.
Writes gpu_input.md, gpu_input.json (and profile files) into --out-dir.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

NVJPEG = "gpu decode (nvJPEG)"
DALI = "gpu decode (DALI)"
NVIMGCODEC = "gpu decode (nvImageCodec)"
REFERENCE = {"before": {"memory_gb": 6.2, "pcie_pct": 92, "latency_ms": 68, "frames_per_s": 110},
             "after": {"memory_gb": 4.3, "pcie_pct": 58, "latency_ms": 23, "frames_per_s": 270}}


def frames_at(folder: Path, count: int, size: tuple[int, int] | None, quality: int = 80) -> list[bytes]:
    """Return count JPEGs from folder (cycling), re-encoded at size (w, h) when given (what a camera of that size sends)."""
    import cv2

    from yolo_compile.gpu.frames import read_jpegs
    from yolo_compile.images import list_images

    unique = read_jpegs(folder, min(count, len(list_images(folder))))  # each file once; cycled below
    if size is not None:
        out = []
        for j in unique:
            img = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
        unique = out
    return [unique[i % len(unique)] for i in range(count)]


class NvmlSampler:
    """Samples NVML's PCIe RX/TX throughput (bytes/s over its 20 ms windows) and device memory used on a thread."""

    def __init__(self):
        from yolo_compile.bandwidth.linkcheck import nvml_link

        self.handle, self.link, self.why = nvml_link()
        self.rx, self.tx, self.mem, self.errors = [], [], [], []
        self._stop = threading.Event()

    def _loop(self):
        import pynvml

        while not self._stop.is_set():
            try:
                self.rx.append(pynvml.nvmlDeviceGetPcieThroughput(self.handle, pynvml.NVML_PCIE_UTIL_RX_BYTES) * 1e3)
                self.tx.append(pynvml.nvmlDeviceGetPcieThroughput(self.handle, pynvml.NVML_PCIE_UTIL_TX_BYTES) * 1e3)
                self.mem.append(pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
            except Exception as e:  # NVML's own error types; keep the first reason, stop sampling
                self.errors.append(f"{type(e).__name__}: {e}")
                return
            time.sleep(0.005)

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
        """Mean host-to-device bytes/s over the block (None without NVML samples)."""
        return float(np.mean(self.rx)) if self.rx else None

    def mem_peak(self) -> int | None:
        """Largest device memory used (all processes, bytes) seen during the block."""
        return int(max(self.mem)) if self.mem else None


def nvimgcodec_decoder(size: int, slots: int):
    """Return device_part(frames, dst, slot) decoding with nvImageCodec on the GPU, or raise ImportError."""
    import torch
    from nvidia import nvimgcodec

    from yolo_compile.gpu.frames import letterbox_on_gpu

    decoder = nvimgcodec.Decoder()
    keep = [None] * slots  # decoded images stay alive until their slot is reused (stream-ordered after use)

    def part(frames, dst, slot):
        stream = torch.cuda.current_stream().cuda_stream
        try:
            imgs = decoder.decode(list(frames), cuda_stream=stream)
        except TypeError:  # versions that take only CodeStream objects
            imgs = decoder.decode([nvimgcodec.CodeStream(f) for f in frames], cuda_stream=stream)
        if any(i is None for i in imgs):
            raise RuntimeError("nvImageCodec could not decode a frame")
        keep[slot] = imgs
        letterbox_on_gpu([torch.as_tensor(i, device="cuda").permute(2, 0, 1) for i in imgs], dst, size)
    return part


def dali_decoder(batch: int, size: int):
    """Return device_part(frames, dst, slot) running a DALI pipeline (mixed decode, resize, pad, normalize), or raise ImportError."""
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

    def part(frames, dst, slot):
        p.feed_input("jpegs", [np.frombuffer(j, np.uint8) for j in frames])
        (out,) = p.run()
        feed_ndarray(out.as_tensor(), dst, cuda_stream=torch.cuda.current_stream())
    return part


def make_pipeline(net, label: str, batch: int, size: int):
    """Return a frames.GpuPipeline for a label (the three built-in paths, DALI or nvImageCodec)."""
    from yolo_compile.gpu import frames

    from yolo_compile.runtimes import pytorch

    if label in frames.PATHS:
        return frames.GpuPipeline(net, label, batch, size)
    part = dali_decoder(batch, size) if label == DALI else nvimgcodec_decoder(size, frames.SLOTS)
    pipe = frames.GpuPipeline(net, NVJPEG, batch, size)  # JPEG bytes up, no host decode
    pipe.path = label
    pipe.device_part = lambda batch_frames, slot: part(batch_frames, pipe.pre[slot], slot)
    return pipe


def model_only(pipe, iters: int = 100) -> float:
    """Return frames/s of the CUDA-graphed model alone at the pipeline's batch (graph replays back to back)."""
    import torch

    for _ in range(10):
        pipe.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        pipe.replay()
    end.record()
    end.synchronize()
    return pipe.batch * iters / (start.elapsed_time(end) / 1e3)


def diff_vs_cpu(pipe, frames: list[bytes]) -> tuple[float, float]:
    """Return (max, mean) |difference| between this path's preprocessed batch and the CPU letterbox (0..1 units)."""
    import torch

    from yolo_compile.gpu.frames import cpu_letterboxed

    pipe.host_part(frames, 0)
    pipe.device_part(frames, 0)
    torch.cuda.synchronize()
    ref = np.stack([cpu_letterboxed(j, pipe.size)[:, :, ::-1].transpose(2, 0, 1) for j in frames]).astype(np.float32) / 255
    d = np.abs(pipe.pre[0].float().cpu().numpy() - ref)
    return float(d.max()), float(d.mean())


def measure(pipe, label: str, res: str, batches: list, jpegs: list, fps_model: float, diff: tuple, link) -> list[dict]:
    """Return the serial and overlapped rows of one pipeline."""
    import torch

    rows = []
    for mode, fn in (("serial", pipe.run_serial), ("overlapped", pipe.run_overlapped)):
        fn(batches[:3])  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with NvmlSampler() as nv:
            r = fn(batches)
        rx = nv.mean_rx()
        row = {"frames": res, "path": label, "mode": mode, "batch": pipe.batch,
               "frames_per_s": round(r["frames_per_s"], 1),
               "p50_ms": round(r["batch_latency_p50_ms"], 2), "p99_ms": round(r["batch_latency_p99_ms"], 2),
               "h2d_bytes_counted": round(pipe.bytes_per_frame(jpegs)),
               "h2d_bytes_nvml": round(rx / r["frames_per_s"]) if rx else None,
               "pcie_rx_gb_s": round(rx / 1e9, 3) if rx else None,
               "pcie_rx_util_pct": round(100 * rx / (link[1] * 1e9), 2) if rx and link else None,
               "torch_mem_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
               "nvml_mem_peak_mib": round(nv.mem_peak() / 2**20) if nv.mem_peak() else None,
               "model_only_fps": round(fps_model), "e2e_over_model": round(r["frames_per_s"] / fps_model, 3),
               "max_abs_vs_cpu": round(diff[0], 4), "mean_abs_vs_cpu": round(diff[1], 5),
               "nvml_samples": len(nv.rx)}
        for k in ("host_decode_ms", "upload_or_gpu_decode_ms", "inference_ms", "nms_ms"):
            if k in r:
                row[k] = round(r[k], 3)
        if nv.errors or nv.why:
            row["nvml_error"] = (nv.errors or [nv.why])[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def profile_run(pipe, batches, out_dir: Path, tag: str, trace: bool) -> str:
    """Profile one overlapped run; write its tables (and trace when asked); return the tables' text."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r = pipe.run_overlapped(batches)
    ka = prof.key_averages()
    try:
        by_device = ka.table(sort_by="self_device_time_total", row_limit=30)
    except (AttributeError, KeyError):  # torch before the cuda -> device rename
        by_device = ka.table(sort_by="self_cuda_time_total", row_limit=30)
    text = (f"## {tag}: {r['frames_per_s']:.0f} frames/s under the profiler, {len(batches)} batches\n\n"
            "### by device time\n" + by_device +
            "\n### by host time\n" + ka.table(sort_by="self_cpu_time_total", row_limit=30) + "\n")
    if trace:
        tmp = out_dir / f"trace-{tag}.json"
        prof.export_chrome_trace(str(tmp))
        with open(tmp, "rb") as f, gzip.open(str(tmp) + ".gz", "wb") as g:
            g.write(f.read())
        tmp.unlink()
    return text


def table(rows: list[dict], keys: list[str]) -> str:
    """Return rows as a markdown table over keys."""
    fmt = lambda v: "" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows])


def reference_table(rows: list[dict]) -> str:
    """Return the multi-stream before/after table (batch 4 = 8 streams in 2 batches of 4) beside the reference case."""
    keys = ["case", "memory", "pcie_rx_util_pct", "p50_ms", "p99_ms", "frames_per_s"]
    out = [{"case": "reference, before (FP32, CPU decode, serial)", "memory": "6.2 GB", "pcie_rx_util_pct": "92",
            "p50_ms": "68", "p99_ms": "", "frames_per_s": "~110"},
           {"case": "reference, after (INT8, DALI, 3 streams, pool)", "memory": "4.3 GB", "pcie_rx_util_pct": "58",
            "p50_ms": "23", "p99_ms": "", "frames_per_s": "270"}]
    for r in rows:
        if r["batch"] != 4:
            continue
        if (r["path"].startswith("cpu decode, float32") and r["mode"] == "serial") or \
                (r["path"].startswith("gpu") and r["mode"] == "overlapped") or r["path"].startswith("cpu decode, uint8"):
            out.append({"case": f"{r['frames']}: {r['path']}, {r['mode']}",
                        "memory": f"{r['torch_mem_peak_mib']} MiB (torch) / {r['nvml_mem_peak_mib']} MiB (NVML)",
                        **{k: r[k] for k in keys[2:]}})
    return table(out, keys)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames-dir", type=Path, default=REPO / "data" / "aoi" / "val" / "images")
    ap.add_argument("--checkpoint", type=Path, default=REPO / "models" / "aoi_yolov8n.pt")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--resolutions", default="native,1920x1080")
    ap.add_argument("--batches", default="4,32")
    ap.add_argument("--frames", type=int, default=640, help="frames a timed run (steps = frames / batch)")
    ap.add_argument("--paths", default="", help="comma-separated substrings; only matching paths run")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--linkcheck", action="store_true", help="also run linkcheck.crosscheck (timed copies + NVML)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "docs" / "bandwidth")
    args = ap.parse_args()
    import torch

    from yolo_compile.gpu import frames
    from yolo_compile.stages.bandwidth import LINKS
    from yolo_compile.bandwidth.linkcheck import nvml_link

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures GPU input paths and has nothing to run here")
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _, link_info, why = nvml_link()
    link = LINKS.get(f"pcie{link_info.get('generation')}_x{link_info.get('width')}") if link_info else None
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, PCIe {link_info or why}", flush=True)
    net = pytorch.load_torch_detector(args.checkpoint, "cuda", half=True)
    labels = list(frames.PATHS) + [DALI, NVIMGCODEC]
    if args.paths:
        labels = [lb for lb in labels if any(s.strip() in lb for s in args.paths.split(","))]
    bsizes = [int(v) for v in args.batches.split(",")]
    rows, skipped, failed, profiles = [], [], [], []
    for res in args.resolutions.split(","):
        size_wh = None if res == "native" else tuple(int(v) for v in res.lower().split("x"))
        jpegs = frames_at(args.frames_dir, args.frames + 3 * max(bsizes), size_wh)
        import cv2

        h, w = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
        res_name = f"{w}x{h}"
        print(f"{res_name}: {len(set(jpegs))} distinct frames, {np.mean([len(j) for j in jpegs]):,.0f} bytes a frame", flush=True)
        for b in bsizes:
            steps = max(args.frames // b, 4)
            batches = [jpegs[i * b:(i + 1) * b] for i in range(steps)]
            for label in labels:
                try:
                    pipe = make_pipeline(net, label, b, args.imgsz)
                except ImportError as e:
                    if not any(s.startswith(label) for s in skipped):
                        skipped.append(f"{label}: {e}")
                    continue
                except Exception as e:
                    failed.append(f"{res_name} b{b} {label} (setup): {type(e).__name__}: {e}")
                    traceback.print_exc()
                    continue
                try:
                    diff = diff_vs_cpu(pipe, batches[0])
                    fps_model = model_only(pipe)
                    rows += measure(pipe, label, res_name, batches, jpegs, fps_model, diff, link)
                    if args.profile and label.startswith("gpu") and b == max(bsizes):
                        tag = f"{res_name}-b{b}-{label.split('(')[1].rstrip(')')}"
                        profiles.append(profile_run(pipe, batches, args.out_dir, tag,
                                                    trace=label == NVJPEG and size_wh is not None))
                except Exception as e:
                    failed.append(f"{res_name} b{b} {label}: {type(e).__name__}: {e}")
                    traceback.print_exc()
                finally:
                    pipe.close()
                    del pipe
                    torch.cuda.empty_cache()
    checks, check_skips = [], []
    if args.linkcheck:
        from yolo_compile.bandwidth.linkcheck import crosscheck

        s = args.imgsz
        paths = [{"path": "fp32 + cpu decode", "link_in_bytes": 3 * s * s * 4},
                 {"path": "uint8 upload", "link_in_bytes": 3 * s * s},
                 {"path": "jpeg to gpu", "link_in_bytes": int(np.mean([len(j) for j in jpegs]))}]
        try:
            checks, check_skips = crosscheck(paths, 8, s, {"bytes": paths[2]["link_in_bytes"]})
        except Exception as e:
            failed.append(f"linkcheck: {type(e).__name__}: {e}")
            traceback.print_exc()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = (f"# GPU input paths ({torch.cuda.get_device_name(0)}, PyTorch {torch.__version__} FP16 + CUDA graph, "
            f"no TensorRT)\n\nCommand: python bench/gpu_input.py {' '.join(sys.argv[1:])}\n"
            f"PCIe link reported by NVML: {link_info or why}\n\n")
    text = (head + table(rows, keys) + "\n\n## Multi-stream schedule at batch 4 (8 streams = 2 batches of 4)\n\n"
            + reference_table(rows) + "\n\n" + (("## linkcheck\n\n" + table(checks, list(checks[0])) + "\n\n") if checks else "")
            + "".join(f"- skipped {s}\n" for s in skipped + check_skips) + "".join(f"- FAILED {s}\n" for s in failed))
    (args.out_dir / "gpu_input.md").write_text(text)
    (args.out_dir / "gpu_input.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "pcie": link_info, "rows": rows,
         "linkcheck": checks, "skipped": skipped + check_skips, "failed": failed}, indent=1))
    if profiles:
        (args.out_dir / "gpu_input-profile.txt").write_text("\n".join(profiles))
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
