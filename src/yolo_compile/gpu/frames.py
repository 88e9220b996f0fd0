"""Camera frames to detections on a GPU: decode, letterbox, upload, inference and NMS, serial or overlapped.

The throughput stage uses these pieces to time what a deployment moves, not only what it computes: JPEG
bytes in, detections out. Three preprocessing paths share one PyTorch model (FP16, CUDA graph, static batch):
  * cpu decode, float32 upload: cv2 decode + letterbox + /255 on the host, float32 over PCIe (4 bytes a pixel);
  * cpu decode, uint8 upload: cv2 decode + letterbox on the host, uint8 over PCIe, /255 and RGB on the GPU
    (what an engine built from export's uint8 ONNX takes);
  * gpu decode (nvJPEG): the JPEG bytes over PCIe, torchvision.io.decode_jpeg(device="cuda"), letterbox on the GPU.
Overlapped mode decodes batch i+1, infers batch i and runs NMS on batch i-1 on three CUDA streams with
preallocated ring buffers; serial mode does the same work one step after another.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from yolo_compile.images import PAD_VALUE, letterbox, list_images
from yolo_compile.runtimes.pytorch import cuda_graph

PATHS = ("cpu decode, float32 upload", "cpu decode, uint8 upload", "gpu decode (nvJPEG)")
SLOTS = 3  # ring depth: decode, infer and NMS each hold one batch


def read_jpegs(folder: str | Path, count: int) -> list[bytes]:
    """Return count JPEG files' bytes from folder (cycling when it holds fewer): the frames a camera would send."""
    files = [p for p in list_images(folder) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not files:
        raise ValueError(f"{folder}: no .jpg/.jpeg frames for the end-to-end check; pass eval_dir with JPEG images")
    data = [p.read_bytes() for p in files[:count]]
    return [data[i % len(data)] for i in range(count)]


def letterbox_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Return (new_h, new_w, top, left) exactly as images.letterbox rounds them."""
    r = min(size / h, size / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    return new_h, new_w, int(round((size - new_h) / 2 - 0.1)), int(round((size - new_w) / 2 - 0.1))


def letterbox_on_gpu(imgs: list, dst, size: int) -> None:
    """Letterbox CHW uint8 RGB CUDA images into dst (N, 3, size, size) FP16 in 0..1, pad 114 like images.letterbox.

    Frames of one shape (a camera's) are resized as one batch: one interpolate, one copy, whatever the batch.
    """
    import torch
    import torch.nn.functional as F

    dst.fill_(PAD_VALUE / 255.0)
    shapes = {tuple(i.shape[1:]) for i in imgs}
    groups = [(list(range(len(imgs))), shapes.pop())] if len(shapes) == 1 else \
        [([k], tuple(i.shape[1:])) for k, i in enumerate(imgs)]
    for idx, (h, w) in groups:
        nh, nw, top, left = letterbox_geometry(h, w, size)
        src = torch.stack([imgs[k] for k in idx]).half()
        if (nh, nw) != (h, w):
            src = F.interpolate(src, size=(nh, nw), mode="bilinear", align_corners=False)
        if len(idx) == dst.shape[0]:
            dst[:, :, top:top + nh, left:left + nw] = src / 255.0
        else:
            dst[idx, :, top:top + nh, left:left + nw] = src / 255.0


def cpu_letterboxed(jpeg: bytes, size: int) -> np.ndarray:
    """Return one JPEG decoded by cv2 and letterboxed: size x size x 3 uint8 BGR."""
    import cv2

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("a frame is not a decodable JPEG; remove it from the frames folder")
    return letterbox(img, size)


def torch_nms(pred, conf: float = 0.25, iou: float = 0.7, max_det: int = 300) -> list:
    """Return per-image (n, 6) tensors [x1, y1, x2, y2, score, class] from raw (B, 4 + classes, anchors) output.

    One NMS call for the whole batch (boxes offset per image and class) and one host sync to split it per image:
    a boolean mask per image costs a sync each, which the profile showed stalling the pipeline (issue 15).
    """
    import torch
    from torchvision.ops import nms as tv_nms

    x = pred.transpose(1, 2).float()
    scores, cls = x[..., 4:].max(-1)
    b, a = torch.nonzero(scores > conf, as_tuple=True)
    xywh = x[b, a, :4]
    boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    s, c = scores[b, a], cls[b, a]
    groups = b * x.shape[-1] + c  # one group per image and class
    offsets = groups.to(boxes.dtype) * (boxes.max() + 1 if boxes.numel() else 1)
    keep = tv_nms(boxes + offsets[:, None], s, iou)  # sorted by score, all images together
    kb = b[keep]
    order = torch.sort(kb, stable=True).indices  # by image, score order kept inside each image
    keep, kb = keep[order], kb[order]
    dets = torch.cat([boxes[keep], s[keep, None], c[keep, None].float()], 1)
    counts = torch.bincount(kb, minlength=pred.shape[0]).tolist()
    return [d[:max_det] for d in torch.split(dets, counts)]


class GpuPipeline:
    """One preprocessing path into a CUDA-graphed FP16 detector at a static batch, with preallocated buffers."""

    def __init__(self, net, path: str, batch: int, size: int, workers: int = 8):
        import torch

        if path not in PATHS:
            raise ValueError(f"pipeline path {path!r}: expected one of {', '.join(PATHS)}")
        self.path, self.batch, self.size = path, batch, size
        dev = torch.device("cuda")
        self.pool = ThreadPoolExecutor(max_workers=min(workers, batch))  # cv2 releases the GIL
        self.prefetch = ThreadPoolExecutor(max_workers=1)
        self.x = torch.zeros((batch, 3, size, size), dtype=torch.float16, device=dev)
        self.replay, self.y = cuda_graph(net, self.x)
        self.pre = [torch.empty_like(self.x) for _ in range(SLOTS)]
        self.out = [torch.empty_like(self.y) for _ in range(SLOTS)]
        if path.startswith("cpu decode, float32"):
            self.host = [torch.empty((batch, 3, size, size), dtype=torch.float32).pin_memory() for _ in range(SLOTS)]
        elif path.startswith("cpu decode, uint8"):
            self.host = [torch.empty((batch, size, size, 3), dtype=torch.uint8).pin_memory() for _ in range(SLOTS)]
        else:
            self.host = [None] * SLOTS
        self.staging = [h.to(dev) if h is not None else None for h in self.host]
        self.streams = {k: torch.cuda.Stream() for k in ("decode", "infer", "post")}
        self.ev_pre = [torch.cuda.Event() for _ in range(SLOTS)]

    def bytes_per_frame(self, jpegs: list[bytes]) -> float:
        """Return the bytes one frame moves host -> device on this path."""
        if self.path.startswith("gpu"):
            return float(np.mean([len(j) for j in jpegs]))
        return 3 * self.size * self.size * (4 if "float32" in self.path else 1)

    def host_part(self, frames: list, slot: int) -> None:
        """Decode and letterbox on the CPU into the slot's pinned buffer (no-op for the nvJPEG path)."""
        if self.host[slot] is None:
            return
        self.ev_pre[slot].synchronize()  # the previous upload from this pinned buffer has finished
        boxed = list(self.pool.map(lambda j: cpu_letterboxed(j, self.size), frames))
        buf = self.host[slot].numpy()
        for k, img in enumerate(boxed):
            if buf.dtype == np.uint8:
                buf[k] = img
            else:
                buf[k] = img[:, :, ::-1].transpose(2, 0, 1)
                buf[k] /= np.float32(255.0)

    def device_part(self, frames: list, slot: int) -> None:
        """Upload (or GPU-decode) into the slot's FP16 model-input buffer, on the current stream."""
        import torch
        from torchvision.io import decode_jpeg

        dst = self.pre[slot]
        if self.host[slot] is not None:
            st = self.staging[slot]
            st.copy_(self.host[slot], non_blocking=True)
            if st.dtype == torch.uint8:  # NHWC BGR -> NCHW RGB, /255 on the GPU
                dst.copy_(st.permute(0, 3, 1, 2).flip(1))
                dst.div_(255.0)
            else:
                dst.copy_(st)
            return
        imgs = decode_jpeg([torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in frames], device="cuda")
        letterbox_on_gpu(imgs, dst, self.size)

    def infer(self, slot: int) -> None:
        """Copy the slot into the graph input, replay the graph, copy its output into the slot."""
        self.x.copy_(self.pre[slot])
        self.replay()
        self.out[slot].copy_(self.y)

    def run_serial(self, batches: list[list[bytes]]) -> dict:
        """Run every batch start to finish before the next; return timings (component times per batch)."""
        import torch

        parts = {"host_decode_ms": [], "upload_or_gpu_decode_ms": [], "inference_ms": [], "nms_ms": []}
        lat = []
        torch.cuda.synchronize()
        t_all = time.perf_counter()
        for frames in batches:
            t0 = time.perf_counter()
            self.host_part(frames, 0)
            t1 = time.perf_counter()
            self.device_part(frames, 0)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            self.infer(0)
            torch.cuda.synchronize()
            t3 = time.perf_counter()
            torch_nms(self.out[0])
            torch.cuda.synchronize()
            t4 = time.perf_counter()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k].append(v * 1e3)
            lat.append(t4 - t0)
        wall = time.perf_counter() - t_all
        return _summary(lat, wall, len(batches) * self.batch) | {k: float(np.median(v)) for k, v in parts.items()}

    def run_overlapped(self, batches: list[list[bytes]]) -> dict:
        """Decode batch i+1, infer batch i and NMS batch i-1 on three CUDA streams, each fed by its own host thread.

        One host thread a stage because the stages block their thread (torchvision's GPU decode and NMS both wait
        on the device): on one thread they serialised what the three streams were meant to overlap (issue 15).
        The loop is overlap.run_ring; its figures add where the time went (graph ms, idle ms, decode call ms).
        """
        from yolo_compile.gpu.overlap import run_ring

        def stage(i, k):
            self.host_part(batches[i], k)
            self.device_part(batches[i], k)
            self.ev_pre[k].record()  # host_part waits on it before refilling this slot's pinned buffer

        def post(i, k):
            torch_nms(self.out[k])

        s = self.streams
        return run_ring(len(batches), SLOTS, self.batch, stage, lambda i, k: self.infer(k), post,
                        (s["decode"], s["infer"], s["post"]))

    def close(self) -> None:
        """Stop the worker threads."""
        self.pool.shutdown()
        self.prefetch.shutdown()


def _summary(latencies_s: list[float], wall_s: float, frames: int) -> dict:
    a = np.asarray(latencies_s) * 1e3
    return {"frames_per_s": frames / wall_s, "batch_latency_p50_ms": float(np.percentile(a, 50)),
            "batch_latency_p99_ms": float(np.percentile(a, 99))}


def cpu_end_to_end(runner, batches: list[list[bytes]], size: int, workers: int = 2,
                   max_seconds: float = float("inf")) -> dict:
    """Serial CPU pipeline: cv2 decode + letterbox + float32, inference on a backends.Runner, NMS; return timings.

    Stops after max_seconds (at least one timed batch), so a slow CPU engine cannot stretch the stage.
    """
    from yolo_compile.evaluate.detections import decode

    parts = {"host_decode_ms": [], "inference_ms": [], "nms_ms": []}
    lat, frames = [], 0
    t_all = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, batch in enumerate(batches[:1] + batches):  # pass 0 warms the runner up and is dropped
            t0 = time.perf_counter()
            boxed = list(pool.map(lambda j: cpu_letterboxed(j, size), batch))
            x = np.ascontiguousarray(np.stack(boxed)[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
            t1 = time.perf_counter()
            pred = runner.run(x)
            t2 = time.perf_counter()
            [decode(p, conf=0.25) for p in pred]  # NMS as `torch_nms` does it, in NumPy: no torch on a CPU target
            t3 = time.perf_counter()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(v * 1e3)
            lat.append(t3 - t0)
            frames += len(batch)
            if i == 0:
                parts, lat, frames, t_all = {k: [] for k in parts}, [], 0, time.perf_counter()
            elif t3 - t_all >= max_seconds:
                break
    out = _summary(lat, time.perf_counter() - t_all, frames)
    return out | {k: float(np.median(v)) for k, v in parts.items()} | {"batches": len(lat)}
