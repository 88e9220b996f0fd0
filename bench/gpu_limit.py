"""GPU input at the pipeline's physical limit (issue 25): JPEG frames to detections on one CUDA GPU.

    python bench/gpu_limit.py [--out-dir docs/bandwidth] [--resolutions native,1920x1080] [--batches 4,32]
                              [--seconds 1.5] [--paths SUBSTR,...] [--quick]

Every decode path is named by the backend that decodes:
  * CPU (cv2, 16 threads): decode + letterbox on the host into reused pinned uint8 buffers, uint8 over PCIe;
  * torchvision nvJPEG: `torchvision.io.decode_jpeg(list, device="cuda")` (nvJPEG's batched CUDA decoder);
  * nvImageCodec HW_GPU_ONLY: the NVJPG hardware JPEG engines (no SMs, no host Huffman);
  * nvImageCodec HYBRID_CPU_GPU: Huffman on host threads, IDCT and colour on the SMs;
  * split: the first n of each batch to the NVJPG engines, the rest to the faster CUDA decoder, concurrently
    (two host threads, two streams), n tuned by end-to-end measurement around the standalone rates' ratio;
  * DALI mixed: `fn.decoders.image(device="mixed", hw_decoder_load=L)` (L = share to the NVJPG engines), resize
    and pad on the GPU inside DALI (the seed's own tool).
All but DALI letterbox with one fused Triton kernel (bench/gpu_letterbox.py) into uint8; the uint8 batch is
normalised (/255, FP16) inside the model's CUDA graph, one graph per ring slot (no input copy). The overlapped
pipeline runs decode, infer and NMS on three CUDA streams ordered by events, one host thread each, over a ring of
4 slots. In the same run, each stage is timed alone at the same batch: decode only, the decode stream's whole
work (decode + letterbox), the model graph, NMS; the pipeline's limit is the slowest of the three stream stages,
and every end-to-end figure is shown against it (and against model-only).

PCIe: NVML's counters are first calibrated against copies of known size (pinned and pageable, both directions,
large and small): the cumulative byte counters (field values PCIE_COUNT_RX/TX_BYTES) where the driver has them and
the 20 ms throughput samples. Per path, PCIe receive bytes a frame are reported raw, then corrected (idle rate and
the model + NMS stage's own traffic subtracted, divided by the calibrated factor) beside the bytes the code copies.

Also the seed's before/after table (8 streams as 2 x 4: FP32 model, CPU decode, float32 upload, serial vs uint8,
GPU decode, overlapped) beside the seed's Orin figures, and the bandwidth stage's link prediction checked against
the measurement. Model: the reference checkpoint in PyTorch (FP16, CUDA graph); no TensorRT on the lent machines.
Writes gpu_limit.md and gpu_limit.json into --out-dir; prints the short table last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for _p in (Path.cwd() / "src", HERE.parent / "src"):  # the last inserted wins: this bench's own checkout
    if (_p / "yolo_compile").is_dir() and str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
sys.path.insert(0, str(HERE))

SEED = {"before": {"memory_gb": 6.2, "pcie_pct": 92, "latency_ms": 68, "frames_per_s": 110},
        "after": {"memory_gb": 4.3, "pcie_pct": 58, "latency_ms": 23, "frames_per_s": 270}}
SLOTS = 4
PAD = 114
MiB = 1 << 20


# ----------------------------------------------------------------------------------------------- environment

def versions() -> dict:
    """Device, driver and library versions of this run."""
    import importlib.metadata as md

    import torch

    v = {"gpu": torch.cuda.get_device_name(0), "python": platform.python_version(), "torch": torch.__version__,
         "torch_cuda": torch.version.cuda,
         "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", "unset (driver default 8)")}
    for dist in ("torchvision", "triton", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "nvidia-dali-cuda130",
                 "nvidia-ml-py", "opencv-python-headless", "opencv-python", "numpy"):
        try:
            v[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        s = lambda x: x.decode() if isinstance(x, bytes) else x  # noqa: E731
        v["driver"] = s(pynvml.nvmlSystemGetDriverVersion())
        cv = pynvml.nvmlSystemGetCudaDriverVersion()
        v["cuda_driver_api"] = f"{cv // 1000}.{cv % 1000 // 10}"
        v["pcie_link"] = (f"Gen{pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h)} x{pynvml.nvmlDeviceGetCurrPcieLinkWidth(h)}"
                          f" (max Gen{pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h)} x{pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)})")
        v["pcie_gen"] = int(pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h))
        v["pcie_width"] = int(pynvml.nvmlDeviceGetCurrPcieLinkWidth(h))
        try:
            v["nvjpg_engines_util_pct"] = pynvml.nvmlDeviceGetJpgUtilization(h)[0]
        except Exception:
            pass
    except Exception as e:  # NVML's own error types
        v["nvml_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    try:
        v["host_cpus"] = os.cpu_count()
    except Exception:
        pass
    return v


# ----------------------------------------------------------------------------------------------- PCIe counters

_FV = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


class Pcie:
    """NVML PCIe traffic over blocks of work: cumulative byte counters and 20 ms throughput samples (on a thread)."""

    RX_FIELD, TX_FIELD = 198, 197  # NVML_FI_DEV_PCIE_COUNT_RX_BYTES / _TX_BYTES

    def __init__(self):
        self.handle, self.why = None, ""
        try:
            import pynvml

            self.nv = pynvml
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:
            self.why = f"NVML unavailable: {type(e).__name__}: {str(e)[:300]}"
        self.has_counters = self.handle is not None and self.counters() is not None

    def counters(self):
        """Return (rx_bytes, tx_bytes) from the cumulative counters, or None where the driver lacks them."""
        try:
            vals = self.nv.nvmlDeviceGetFieldValues(self.handle, [self.RX_FIELD, self.TX_FIELD])
            out = []
            for v in vals:
                if v.nvmlReturn != 0:
                    return None
                out.append(int(getattr(v.value, _FV.get(v.valueType, "ullVal"))))
            return tuple(out)
        except Exception:
            return None

    def block(self):
        return _PcieBlock(self)


class _PcieBlock:
    def __init__(self, p: Pcie):
        self.p, self.rx, self.tx, self.mem, self._stop = p, [], [], [], threading.Event()
        self.result = {}

    def _loop(self):
        nv, h = self.p.nv, self.p.handle
        while not self._stop.is_set():
            try:
                self.rx.append(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES) * 1e3)
                self.tx.append(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES) * 1e3)
                self.mem.append(nv.nvmlDeviceGetMemoryInfo(h).used)
            except Exception:
                return

    def __enter__(self):
        if self.p.handle is not None:
            self.c0 = self.p.counters()
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        r = {"seconds": dt}
        if self.p.handle is not None:
            c1 = self.p.counters()
            self._stop.set()
            self._t.join()
            if self.c0 and c1:
                r["rx_counter"], r["tx_counter"] = c1[0] - self.c0[0], c1[1] - self.c0[1]
            if self.rx:
                r["rx_sampled"], r["tx_sampled"] = float(np.mean(self.rx)) * dt, float(np.mean(self.tx)) * dt
                r["samples"] = len(self.rx)
            if self.mem:
                r["nvml_mem_peak_mib"] = round(max(self.mem) / MiB)
        self.result = r


USE = "rx_sampled"  # the calibration decides (calibrate() sets it): the 20 ms samples, or the cumulative counter


def rx_bytes(r: dict) -> float | None:
    """The block's receive (host -> device) bytes by the calibrated method."""
    return r.get(USE)


def calibrate(pcie: Pcie, seconds: float) -> dict:
    """Copies of known size, each direction, pinned and pageable, large and small, against NVML's counters."""
    import torch

    out = {"method": "cumulative counters (NVML_FI_DEV_PCIE_COUNT_RX/TX_BYTES)" if pcie.has_counters
           else "20 ms throughput samples (nvmlDeviceGetPcieThroughput)", "rows": []}
    with pcie.block() as idle:
        time.sleep(seconds)
    r = idle.result
    out["idle"] = {k: r.get(k) for k in ("seconds", "rx_counter", "tx_counter", "rx_sampled", "tx_sampled", "samples")}
    idle_rate = {k: (r[k] / r["seconds"]) if r.get(k) is not None else 0.0
                 for k in ("rx_counter", "tx_counter", "rx_sampled", "tx_sampled")}
    out["idle_rate"] = idle_rate
    for nbytes in (64 * MiB, 256 * 1024):
        dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        for mem in ("pinned", "pageable"):
            host = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
            if mem == "pinned":
                host = host.pin_memory()
            for direction in ("h2d", "d2h"):
                def step():
                    if direction == "h2d":
                        dev.copy_(host, non_blocking=True)
                    else:
                        host.copy_(dev, non_blocking=True)
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(4):
                    step()
                torch.cuda.synchronize()
                per = (time.perf_counter() - t0) / 4
                n = max(8, int(seconds / per))
                with pcie.block() as b:
                    for i in range(n):
                        step()
                        if i % 16 == 15:
                            torch.cuda.synchronize()
                    torch.cuda.synchronize()
                r = b.result
                true = n * nbytes
                row = {"copy": f"{direction} {mem} {nbytes // 1024} KiB", "copies": n, "bytes": true,
                       "gb_per_s": round(true / r["seconds"] / 1e9, 2)}
                for k in ("rx_counter", "tx_counter", "rx_sampled", "tx_sampled"):
                    if r.get(k) is not None:
                        row[k + "_over_true"] = round((r[k] - idle_rate[k] * r["seconds"]) / true, 4)
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
        del dev
    # the factor for host -> device data: large pinned h2d, receive side
    big = next(r for r in out["rows"] if r["copy"].startswith("h2d pinned 65536"))
    global USE
    cnt = big.get("rx_counter_over_true")
    USE = "rx_counter" if cnt is not None and 0.8 <= cnt <= 1.3 else "rx_sampled"
    key = USE + "_over_true"
    out["rx_factor"] = big.get(key)
    out["rx_factor_key"] = key
    out["used"] = USE
    if USE == "rx_sampled" and cnt is not None:
        out["counters_rejected"] = (f"the cumulative counters gave {cnt} of the bytes of large pinned copies: not a byte "
                                    "count of the copies; the 20 ms throughput samples are used")
    return out


# ----------------------------------------------------------------------------------------------- model

class Model:
    """The detector at one batch: one CUDA graph per ring slot, reading that slot's input buffer in place.

    uint8 (N, 3, S, S) RGB in, normalised inside the graph (FP16 model); with fp32=True a float32 input and model.
    """

    def __init__(self, net, batch: int, size: int, slots: int, fp32: bool = False):
        import torch

        from yolo_compile.runtimes.pytorch import cuda_graph

        self.batch, self.size, self.fp32 = batch, size, fp32
        if fp32:
            self.inp = [torch.full((batch, 3, size, size), PAD / 255.0, dtype=torch.float32, device="cuda")
                        for _ in range(slots)]
            fn = net
        else:
            self.inp = [torch.full((batch, 3, size, size), PAD, dtype=torch.uint8, device="cuda") for _ in range(slots)]
            fn = lambda x: net(x.half().div_(255.0))  # noqa: E731  normalisation inside the graph
        self.graphs, self.out = [], []
        for k in range(slots):
            replay, y = cuda_graph(fn, self.inp[k])
            self.graphs.append(replay)
            self.out.append(y)

    def replay(self, k: int) -> None:
        self.graphs[k]()


# ----------------------------------------------------------------------------------------------- decoders

class Pre:
    """A preprocessing path: decode(frames) -> [(source uint8 tensor, layout)], stage(frames, k, dst) on the current stream."""

    name = backend = ""
    counted = "jpeg"  # what crosses PCIe on purpose: the JPEG bytes

    def __init__(self, size: int):
        self.size = size
        self.keep = {}

    def decode(self, frames):
        raise NotImplementedError

    def stage(self, frames, k, dst):
        """Decode and letterbox into dst (N, 3, S, S) uint8 on the current stream."""
        from gpu_letterbox import letterbox

        parts = self.decode(frames)
        self.keep[k] = parts
        at = 0
        for src, layout in parts:
            n = src.shape[0]
            letterbox(src, dst[at:at + n], layout)
            at += n

    def counted_bytes(self, frames) -> float:
        return float(np.mean([len(f) for f in frames]))

    def close(self):
        pass


class TorchvisionNvjpeg(Pre):
    name, backend = "torchvision nvJPEG", "nvJPEG batched CUDA decoder (torchvision.io.decode_jpeg, device='cuda')"

    def decode(self, frames):
        import torch
        from torchvision.io import decode_jpeg

        imgs = decode_jpeg([torch.frombuffer(f, dtype=torch.uint8) for f in frames], device="cuda")
        return [(torch.stack(imgs), "NCHW")]


class NvImgCodec(Pre):
    def __init__(self, size: int, kind: str):
        super().__init__(size)
        from nvidia import nvimgcodec

        self.nvimgcodec = nvimgcodec
        self.kind = kind
        self.decoder = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
        self.name = {"HW_GPU_ONLY": "nvImageCodec HW (NVJPG)", "HYBRID_CPU_GPU": "nvImageCodec hybrid (CUDA)",
                     "GPU_ONLY": "nvImageCodec GPU_ONLY (CUDA)"}[kind]
        self.backend = f"nvImageCodec {getattr(nvimgcodec, '__version__', '')} Backend(BackendKind.{kind})"

    def stage(self, frames, k, dst):
        self.stage_in_place(frames, k, dst)

    def stage_in_place(self, frames, k, dst):
        """Decode into slot k's own images (the decoder's buffers, reused from the slot's last batch: no allocation
        a frame once warm) and letterbox them where they lie (byte offsets from the first frame; no stacking copy)."""
        import torch

        from gpu_letterbox import letterbox_gather

        stream = torch.cuda.current_stream().cuda_stream
        prev = self.slot_imgs.get(k) if hasattr(self, "slot_imgs") else None
        if prev is not None and len(prev) == len(frames) and self.reuse is not False:
            try:
                imgs = self.decoder.decode(list(frames), images=prev, cuda_stream=stream)
                self.reuse = True
            except TypeError as e:  # an nvImageCodec without `images=` on the batch call: allocate a batch
                self.reuse, self.reuse_why = False, f"{type(e).__name__}: {str(e)[:200]}"
                imgs = self.decoder.decode(list(frames), cuda_stream=stream)
        else:
            imgs = self.decoder.decode(list(frames), cuda_stream=stream)
        if any(i is None for i in imgs):
            raise RuntimeError(f"{self.name}: a frame was not decoded")
        if not hasattr(self, "slot_imgs"):
            self.slot_imgs, self.slot_offs, self.reuse = {}, {}, None
        self.slot_imgs[k] = imgs
        ptrs = [i.__cuda_array_interface__["data"][0] for i in imgs]
        key, offs = self.slot_offs.get(k, (None, None))
        if key != ptrs:  # new buffers (first use of the slot, or the decoder did not reuse them)
            offs = torch.tensor([p - ptrs[0] for p in ptrs], dtype=torch.int64).to("cuda", non_blocking=True)
            self.slot_offs[k] = (ptrs, offs)
        first = torch.as_tensor(imgs[0], device="cuda")
        shapes = {tuple(i.__cuda_array_interface__["shape"]) for i in imgs}
        if len(shapes) != 1 or first.dim() != 3 or not first.is_contiguous():
            return Pre.stage(self, frames, k, dst)  # frames of several sizes: the stacked path
        letterbox_gather(first, offs, len(imgs), dst)

    def decode(self, frames):
        import torch

        stream = torch.cuda.current_stream()
        try:
            imgs = self.decoder.decode(list(frames), cuda_stream=stream.cuda_stream)
        except TypeError:
            imgs = self.decoder.decode([self.nvimgcodec.CodeStream(f) for f in frames], cuda_stream=stream.cuda_stream)
        if any(i is None for i in imgs):
            raise RuntimeError(f"{self.name}: a frame was not decoded")
        ts = [torch.as_tensor(i, device="cuda") for i in imgs]
        self._imgs = imgs  # alive until the next call; the stacked copy below is what the kernel reads
        return [(torch.stack(ts), "NHWC")]


class Split(Pre):
    """First n frames of a batch to the NVJPG engines, the rest to a CUDA decoder, concurrently."""

    def __init__(self, size: int, hw: NvImgCodec, cuda: Pre, n_hw: int):
        import torch

        super().__init__(size)
        self.hw, self.cuda, self.n = hw, cuda, n_hw
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.s_hw, self.s_cu = torch.cuda.Stream(), torch.cuda.Stream()
        self.name = f"split NVJPG {n_hw} + {cuda.name}"
        self.backend = f"{hw.backend} for {n_hw} of a batch, {cuda.backend} for the rest, concurrently"

    def decode(self, frames):
        import torch

        cur = torch.cuda.current_stream()

        def run(pre, part, s):
            with torch.cuda.stream(s):
                s.wait_stream(cur)
                out = pre.decode(part)
                ev = torch.cuda.Event()
                ev.record(s)
            return out, ev

        fut = self.pool.submit(run, self.cuda, frames[self.n:], self.s_cu)
        a, ev_a = run(self.hw, frames[:self.n], self.s_hw)
        b, ev_b = fut.result()
        cur.wait_event(ev_a)
        cur.wait_event(ev_b)
        for src, _ in a + b:
            src.record_stream(cur)
        return a + b

    def close(self):
        self.pool.shutdown()


class CpuDecode(Pre):
    """cv2 decode + letterbox on host threads into reused pinned buffers; uint8 (or float32) over PCIe."""

    def __init__(self, size: int, batch: int, slots: int, threads: int, fp32: bool = False):
        import torch

        super().__init__(size)
        self.fp32 = fp32
        self.counted = "fp32 tensor" if fp32 else "uint8 tensor"
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.name = f"CPU cv2 ({threads} threads), {'float32' if fp32 else 'uint8'} upload"
        self.backend = f"OpenCV imdecode + letterbox on {threads} host threads, pinned {'float32' if fp32 else 'uint8'} buffers"
        if fp32:
            self.host = [torch.empty((batch, 3, size, size), dtype=torch.float32).pin_memory() for _ in range(slots)]
        else:
            self.host = [torch.empty((batch, size, size, 3), dtype=torch.uint8).pin_memory() for _ in range(slots)]
        self.staging = [h.to("cuda") for h in self.host]
        self.ev_up = [torch.cuda.Event() for _ in range(slots)]

    def decode(self, frames):
        import cv2

        return list(self.pool.map(lambda j: cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), frames))

    def stage(self, frames, k, dst):
        import torch

        from yolo_compile.gpu.frames import cpu_letterboxed

        self.ev_up[k].synchronize()  # the previous upload from this pinned buffer has finished
        buf = self.host[k].numpy()

        def one(i):
            img = cpu_letterboxed(frames[i], self.size)
            if self.fp32:
                buf[i] = img[:, :, ::-1].transpose(2, 0, 1)
                buf[i] /= np.float32(255.0)
            else:
                buf[i] = img
        list(self.pool.map(one, range(len(frames))))
        st = self.staging[k]
        st.copy_(self.host[k], non_blocking=True)
        self.ev_up[k].record(torch.cuda.current_stream())
        if self.fp32:
            dst.copy_(st)
        else:
            dst.copy_(st.permute(0, 3, 1, 2).flip(1))  # NHWC BGR -> NCHW RGB, still uint8

    def counted_bytes(self, frames) -> float:
        return 3 * self.size * self.size * (4 if self.fp32 else 1)

    def close(self):
        self.pool.shutdown()


class Dali(Pre):
    """DALI: mixed decoder (hw_decoder_load = share to the NVJPG engines), resize and pad on the GPU, uint8 CHW."""

    def __init__(self, size: int, batch: int, shape_hw: tuple[int, int], hw_load: float, threads: int):
        super().__init__(size)
        from nvidia.dali import fn, pipeline_def, types
        import nvidia.dali as dali

        from gpu_letterbox import geometry

        nh, nw, top, left = geometry(shape_hw[0], shape_hw[1], size)
        px = left / (size - nw) if size != nw else 0.5
        py = top / (size - nh) if size != nh else 0.5
        self.name = f"DALI mixed (hw_decoder_load={hw_load})"
        self.backend = (f"DALI {dali.__version__} fn.decoders.image(device='mixed', hw_decoder_load={hw_load}), "
                        "fn.resize + fn.crop_mirror_normalize (pad) on the GPU")

        @pipeline_def(batch_size=batch, num_threads=threads, device_id=0, prefetch_queue_depth=1)
        def full():
            j = fn.external_source(name="jpegs", dtype=types.UINT8)
            im = fn.decoders.image(j, device="mixed", output_type=types.RGB, hw_decoder_load=hw_load)
            im = fn.resize(im, resize_x=nw, resize_y=nh, interp_type=types.INTERP_LINEAR, antialias=False)
            return fn.crop_mirror_normalize(im, dtype=types.UINT8, output_layout="CHW", crop=(size, size),
                                            crop_pos_x=px, crop_pos_y=py, out_of_bounds_policy="pad",
                                            fill_values=[float(PAD)] * 3)

        @pipeline_def(batch_size=batch, num_threads=threads, device_id=0, prefetch_queue_depth=1)
        def dec():
            j = fn.external_source(name="jpegs", dtype=types.UINT8)
            return fn.decoders.image(j, device="mixed", output_type=types.RGB, hw_decoder_load=hw_load)

        self.full, self.dec = full(), dec()
        self.full.build()
        self.dec.build()

    @staticmethod
    def _feed(p, frames):
        p.feed_input("jpegs", [np.frombuffer(f, np.uint8) for f in frames])
        return p.run()

    def decode(self, frames):
        (out,) = self._feed(self.dec, frames)
        self._last = out
        return []

    def stage(self, frames, k, dst):
        import torch

        (out,) = self._feed(self.full, frames)
        t = out.as_tensor()
        try:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream())
        except ImportError:
            dst.copy_(torch.as_tensor(t, device="cuda"))
        self.keep[k] = out


# ----------------------------------------------------------------------------------------------- runners

def make_batches(jpegs: list[bytes], batch: int, count: int) -> list[list[bytes]]:
    """count batches cycling over the distinct frames."""
    n = len(jpegs)
    return [[jpegs[(i * batch + j) % n] for j in range(batch)] for i in range(count)]


def timed(step, seconds: float, pcie: Pcie | None = None, min_iter: int = 5) -> dict:
    """Run step(i) enough times to last about `seconds` (probed first), one sync at the end; return rate and PCIe."""
    import torch

    for i in range(2):
        step(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / 3
    n = max(min_iter, int(seconds / max(per, 1e-6)))
    if pcie is not None:
        with pcie.block() as b:
            for i in range(n):
                step(i)
            torch.cuda.synchronize()
        r = b.result
    else:
        t0 = time.perf_counter()
        for i in range(n):
            step(i)
        torch.cuda.synchronize()
        r = {"seconds": time.perf_counter() - t0}
    r["iters"] = n
    return r


def make_streams(args):
    """(decode, infer, post) CUDA streams; the infer stream at the highest priority unless --infer-priority 0."""
    import torch

    return (torch.cuda.Stream(), torch.cuda.Stream(priority=args.infer_priority), torch.cuda.Stream())


def run_overlapped(model: Model, pre: Pre, batches, slots: int, streams) -> dict:
    """Decode batch i+1.. (thread 1, stream decode), infer batch i (this thread, stream infer), NMS batch i-1..
    (thread 2, stream post): the package's ring (yolo_compile.gpu.overlap.run_ring), with where the time went."""
    from yolo_compile.gpu.frames import torch_nms as nms
    from yolo_compile.gpu.overlap import run_ring

    r = run_ring(len(batches), slots, model.batch, lambda i, k: pre.stage(batches[i], k, model.inp[k]),
                 lambda i, k: model.replay(k), lambda i, k: nms(model.out[k]), streams)
    return {"p50_ms": r.pop("batch_latency_p50_ms"), "p99_ms": r.pop("batch_latency_p99_ms"), **r}


def run_serial(model: Model, pre: Pre, batches) -> dict:
    """Each batch decode -> infer -> NMS, one after another on one stream; per-part times."""
    import torch

    from yolo_compile.gpu.frames import torch_nms as nms

    parts = {"decode_ms": [], "infer_ms": [], "nms_ms": []}
    lat = []
    torch.cuda.synchronize()
    t_all = time.perf_counter()
    for frames in batches:
        t0 = time.perf_counter()
        pre.stage(frames, 0, model.inp[0])
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        model.replay(0)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        nms(model.out[0])
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        for key, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(v * 1e3)
        lat.append(t3 - t0)
    wall = time.perf_counter() - t_all
    a = np.asarray(lat) * 1e3
    return {"frames_per_s": len(batches) * model.batch / wall, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "seconds": wall, "batches": len(batches),
            **{k: round(float(np.median(v)), 3) for k, v in parts.items()}}


def diff_vs_cpu(model: Model, pre: Pre, frames) -> tuple[float, float]:
    """(max, mean) |difference| of this path's letterboxed uint8 batch from the CPU letterbox, in 0..255 levels."""
    import torch

    from yolo_compile.gpu.frames import cpu_letterboxed

    pre.stage(frames, 0, model.inp[0])
    torch.cuda.synchronize()
    ref = np.stack([cpu_letterboxed(j, model.size)[:, :, ::-1].transpose(2, 0, 1) for j in frames]).astype(np.float32)
    got = model.inp[0].float().cpu().numpy()
    if model.fp32:
        got = got * 255.0
    d = np.abs(got - ref)
    return float(d.max()), float(d.mean())


# ----------------------------------------------------------------------------------------------- one configuration

def profile_api(model, pre, batches, streams) -> str:
    """The host-side CUDA runtime/driver calls of one overlapped run (count, host time): what blocks the threads."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r = run_overlapped(model, pre, batches, SLOTS, streams)
    ev = [e for e in prof.key_averages() if e.key.startswith(("cuda", "cu", "nvjpeg", "nvimgcodec"))]
    ev.sort(key=lambda e: -e.cpu_time_total)
    lines = [f"### {pre.name}: {r['frames_per_s']:.0f} frames/s under the profiler, {len(batches)} batches",
             f"{'call':48s} {'count':>7s} {'host ms total':>14s} {'host us max':>12s}"]
    for e in ev[:20]:
        lines.append(f"{e.key[:48]:48s} {e.count:7d} {e.cpu_time_total / 1e3:14.2f} {getattr(e, 'cpu_time_max', 0) or 0:12.0f}")
    return "\n".join(lines) + "\n"


def measure_config(args, pcie: Pcie, calib: dict, net, res_name: str, jpegs, batch: int, paths: list[str],
                   failed: list, notes: list) -> tuple[list[dict], dict]:
    """All paths at one resolution and batch; returns (rows, shared stage figures)."""
    import cv2
    import torch

    from yolo_compile.gpu.frames import torch_nms as nms

    size = args.imgsz
    h, w = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
    model = Model(net, batch, size, SLOTS)
    streams = make_streams(args)
    sec = args.seconds
    # the model and NMS stages alone (with their own PCIe traffic: graph launches, NMS's result copies)
    m = timed(lambda i: model.replay(i % SLOTS), args.stage_seconds, pcie)
    model_fps = batch * m["iters"] / m["seconds"]
    q = timed(lambda i: nms(model.out[i % SLOTS]), args.stage_seconds, pcie)
    nms_fps = batch * q["iters"] / q["seconds"]
    idle_rx = calib.get("idle_rate", {}).get(USE, 0.0)

    def rx_per_frame(r, frames):
        b = rx_bytes(r)
        return None if b is None else (b - idle_rx * r["seconds"]) / frames

    bg_model = rx_per_frame(m, batch * m["iters"])
    bg_nms = rx_per_frame(q, batch * q["iters"])
    bg = (bg_model or 0.0) + (bg_nms or 0.0)
    shared = {"frames": res_name, "batch": batch, "model_only_fps": round(model_fps), "nms_only_fps": round(nms_fps),
              "model_rx_bytes_per_frame": None if bg_model is None else round(bg_model),
              "nms_rx_bytes_per_frame": None if bg_nms is None else round(bg_nms)}
    print(json.dumps(shared), flush=True)
    factor = calib.get("rx_factor") or 1.0
    link_gbs = args.link_gbs

    pres: list[Pre] = []

    def want(name):
        return not paths or any(p.lower() in name.lower() for p in paths)

    builders = [("CPU", lambda: CpuDecode(size, batch, SLOTS, args.cpu_threads)),
                ("torchvision", lambda: TorchvisionNvjpeg(size)),
                ("nvImageCodec HW", lambda: NvImgCodec(size, "HW_GPU_ONLY")),
                ("nvImageCodec hybrid", lambda: NvImgCodec(size, "HYBRID_CPU_GPU")),
                ("nvImageCodec GPU_ONLY", lambda: NvImgCodec(size, "GPU_ONLY"))]
    builders += [(f"DALI {ld}", (lambda ld=ld: Dali(size, batch, (h, w), ld, args.dali_threads))) for ld in args.dali_loads]
    for label, make in builders:
        if not want(label):
            continue
        try:
            pres.append(make())
        except Exception as e:
            msg = f"{res_name} b{batch} {label} (setup): {type(e).__name__}: {str(e)[:300]}"
            (notes if label.endswith("GPU_ONLY") else failed).append(msg)  # GPU_ONLY: refused before (FACTS)
            print(f"setup failed: {label}: {str(e)[:300]}", flush=True)

    rows = []

    def measure(pre: Pre, e2e_seconds: float, with_pcie: bool = True, standalone: bool = True) -> dict:
        row = {"frames": res_name, "batch": batch, "path": pre.name, "backend": pre.backend}
        batches = make_batches(jpegs, batch, 64)
        row["max_abs_vs_cpu"], row["mean_abs_vs_cpu"] = (round(v, 3) for v in diff_vs_cpu(model, pre, batches[0]))
        if standalone:
            d = timed(lambda i: pre.decode(batches[i % len(batches)]), args.stage_seconds, pcie)
            row["decode_only_fps"] = round(batch * d["iters"] / d["seconds"])
            dr = rx_per_frame(d, batch * d["iters"])
            row["decode_rx_bytes_per_frame"] = None if dr is None else round(dr)
            s = timed(lambda i: pre.stage(batches[i % len(batches)], i % SLOTS, model.inp[i % SLOTS]),
                      args.stage_seconds)
            row["decode_stream_fps"] = round(batch * s["iters"] / s["seconds"])
            stages = {"decode stream": row["decode_stream_fps"], "model": model_fps, "nms": nms_fps}
            slowest = min(stages, key=stages.get)
            row["limit_fps"], row["slowest_stage"] = round(stages[slowest]), slowest
        row["model_only_fps"] = round(model_fps)
        # end to end, overlapped: warm-up, then a timed run long enough for NVML
        run_overlapped(model, pre, make_batches(jpegs, batch, 2 * SLOTS), SLOTS, streams)
        guess = row.get("limit_fps", model_fps)
        nb = max(3 * SLOTS, math.ceil(e2e_seconds * guess / batch))
        torch.cuda.reset_peak_memory_stats()
        if with_pcie:
            with pcie.block() as b:
                r = run_overlapped(model, pre, make_batches(jpegs, batch, nb), SLOTS, streams)
            p = b.result
        else:
            r, p = run_overlapped(model, pre, make_batches(jpegs, batch, nb), SLOTS, streams), {}
        row["e2e_fps"] = round(r["frames_per_s"], 1)
        row["p50_ms"], row["p99_ms"] = round(r["p50_ms"], 2), round(r["p99_ms"], 2)
        # why e2e falls short of the limit: the graph slowed by the decode/NMS work sharing the SMs, or idle waiting
        row["model_ms_alone"] = round(1e3 * batch / model_fps, 3)
        row["model_ms_in_e2e"] = round(r["model_ms_in_e2e"], 3)
        row["infer_idle_ms"] = round(r["infer_idle_ms"], 3)
        row["decode_call_ms"] = round(r["decode_call_ms"], 3)
        if "decode_stream_fps" in row:
            row["decode_stream_ms_alone"] = round(1e3 * batch / row["decode_stream_fps"], 3)
        if getattr(pre, "reuse", None) is not None:
            row["decoder_buffers_reused"] = pre.reuse
            if getattr(pre, "reuse_why", ""):
                row["decoder_buffers_reuse_refused"] = pre.reuse_why
        if "limit_fps" in row:
            row["e2e_over_limit"] = round(r["frames_per_s"] / row["limit_fps"], 3)
        row["e2e_over_model"] = round(r["frames_per_s"] / model_fps, 3)
        row["counted_bytes_per_frame"] = round(pre.counted_bytes(batches[0] if pre.counted != "jpeg" else jpegs))
        raw = rx_bytes(p) if p else None
        if raw is not None:
            frames_n = nb * batch
            row["nvml_rx_bytes_per_frame"] = round(raw / frames_n)
            corr = ((raw - idle_rx * p["seconds"]) / frames_n - bg) / factor
            row["corrected_rx_bytes_per_frame"] = round(corr)
            row["corrected_over_counted"] = round(corr / row["counted_bytes_per_frame"], 3)
            row["pcie_rx_util_pct"] = round(100 * corr * r["frames_per_s"] / (link_gbs * 1e9), 3)
            row["nvml_samples"] = p.get("samples")
            row["nvml_mem_peak_mib"] = p.get("nvml_mem_peak_mib")
        row["torch_mem_peak_mib"] = round(torch.cuda.max_memory_allocated() / MiB)
        return row

    for pre in pres:
        try:
            row = measure(pre, sec)
            rows.append(row)
            print(json.dumps(row), flush=True)
        except Exception as e:
            msg = f"{res_name} b{batch} {pre.name}: {type(e).__name__}: {str(e)[:300]}"
            # nvImageCodec 0.9 refuses decode(list, image=[...]) (the overload takes one CodeStream): a known limit
            (notes if "slot buffers" in pre.name else failed).append(msg)
            traceback.print_exc()

    # split: NVJPG engines + the faster CUDA decoder, n tuned end to end around the standalone ratio
    by = {r["path"]: r for r in rows}
    hw = next((p for p in pres if isinstance(p, NvImgCodec) and p.kind == "HW_GPU_ONLY"), None)
    cudas = [p for p in pres if p.name in by and (isinstance(p, TorchvisionNvjpeg) or
                                                  (isinstance(p, NvImgCodec) and p.kind != "HW_GPU_ONLY"))]
    if hw is not None and hw.name in by and cudas and want("split") and batch >= 2:
        cu = max(cudas, key=lambda p: by[p.name]["decode_only_fps"])
        r_hw, r_cu = by[hw.name]["decode_only_fps"], by[cu.name]["decode_only_fps"]
        n0 = round(batch * r_hw / (r_hw + r_cu))
        step = max(1, batch // 8)
        cands = sorted({min(batch - 1, max(1, n)) for n in (n0 - step, n0, n0 + step, n0 + 2 * step)})
        tune = []
        for n in cands:
            sp = Split(size, hw, cu, n)
            try:
                run_overlapped(model, sp, make_batches(jpegs, batch, 2 * SLOTS), SLOTS, streams)
                rr = run_overlapped(model, sp, make_batches(jpegs, batch, max(3 * SLOTS, math.ceil(
                    args.tune_seconds * model_fps / batch))), SLOTS, streams)
                tune.append((rr["frames_per_s"], n))
            except Exception as e:
                failed.append(f"{res_name} b{batch} split {n}: {type(e).__name__}: {str(e)[:300]}")
                traceback.print_exc()
            finally:
                sp.close()
        if tune:
            best_n = max(tune)[1]
            sp = Split(size, hw, cu, best_n)
            try:
                row = measure(sp, sec)
                row["split_tuning"] = {str(n): round(f) for f, n in sorted(tune, key=lambda t: t[1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
            except Exception as e:
                failed.append(f"{res_name} b{batch} {sp.name}: {type(e).__name__}: {str(e)[:300]}")
                traceback.print_exc()
            finally:
                sp.close()
    if args.profile and batch == args.max_batch:
        for pre in pres:
            if pre.name in ("torchvision nvJPEG", "nvImageCodec HW (NVJPG)", "nvImageCodec HW (NVJPG) into slot buffers"):
                try:
                    args.profiles.append(f"## {res_name} batch {batch}\n" + profile_api(
                        model, pre, make_batches(jpegs, batch, 24), streams))
                except Exception as e:
                    notes.append(f"profile {res_name} {pre.name}: {type(e).__name__}: {str(e)[:300]}")
    for pre in pres:
        pre.close()
    del model
    torch.cuda.empty_cache()
    return rows, shared


def before_after(args, pcie: Pcie, calib: dict, net16, net32, res_name: str, jpegs, best: list[str],
                 failed: list) -> list[dict]:
    """The seed's table: 8 streams as 2 batches of 4. Before: FP32 model, CPU decode, float32 upload, serial.
    After: uint8 letterbox, GPU decode (the best path, and DALI), FP16 graph, 3 streams overlapped."""
    import torch

    batch, size = 4, args.imgsz
    rows = []
    factor = calib.get("rx_factor") or 1.0
    idle_rx = calib.get("idle_rate", {}).get(USE, 0.0)
    nb = max(24, math.ceil(args.seconds * 150 / batch))

    def finish(row, r, p, counted, frames_n):
        row.update({"frames_per_s": round(r["frames_per_s"], 1), "p50_ms": round(r["p50_ms"], 2),
                    "p99_ms": round(r["p99_ms"], 2), "counted_bytes_per_frame": round(counted),
                    "torch_mem_peak_mib": round(torch.cuda.max_memory_allocated() / MiB),
                    "nvml_mem_peak_mib": p.get("nvml_mem_peak_mib")})
        raw = rx_bytes(p)
        if raw is not None:
            corr = ((raw - idle_rx * p["seconds"]) / frames_n) / factor
            row["nvml_rx_bytes_per_frame"] = round(raw / frames_n)
            row["corrected_rx_bytes_per_frame"] = round(corr)
            row["pcie_rx_util_pct"] = round(100 * corr * r["frames_per_s"] / (args.link_gbs * 1e9), 3)
            row["pcie_rx_util_counted_pct"] = round(100 * counted * r["frames_per_s"] / (args.link_gbs * 1e9), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)

    try:
        model = Model(net32, batch, size, 1, fp32=True)
        pre = CpuDecode(size, batch, 1, args.cpu_threads, fp32=True)
        run_serial(model, pre, make_batches(jpegs, batch, 4))
        torch.cuda.reset_peak_memory_stats()
        nbs = max(24, math.ceil(args.seconds * 300 / batch))
        with pcie.block() as b:
            r = run_serial(model, pre, make_batches(jpegs, batch, nbs))
        finish({"case": f"ours {res_name}, before: FP32 model, CPU decode (16 threads), float32 upload, serial",
                **{k: r[k] for k in ("decode_ms", "infer_ms", "nms_ms")}}, r, b.result, pre.counted_bytes(None), nbs * batch)
        pre.close()
        del model
    except Exception as e:
        failed.append(f"before/after {res_name} before: {type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc()
    for name in best:
        try:
            model = Model(net16, batch, size, SLOTS)
            import cv2

            h, w = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
            if name.startswith("DALI"):
                pre = Dali(size, batch, (h, w), float(name.split("=")[1].rstrip(")")), args.dali_threads)
            elif name.startswith("split"):
                n = int(name.split()[2])
                cu_name = name.split(" + ", 1)[1]
                cu = TorchvisionNvjpeg(size) if cu_name.startswith("torchvision") else NvImgCodec(size, "HYBRID_CPU_GPU")
                pre = Split(size, NvImgCodec(size, "HW_GPU_ONLY"), cu, n)
            elif name.startswith("nvImageCodec HW"):
                pre = NvImgCodec(size, "HW_GPU_ONLY")
                if "slot buffers" in name:
                    pre.enable_slots(batch, SLOTS, (h, w))
            elif name.startswith("nvImageCodec hybrid"):
                pre = NvImgCodec(size, "HYBRID_CPU_GPU")
            else:
                pre = TorchvisionNvjpeg(size)
            streams = make_streams(args)
            run_overlapped(model, pre, make_batches(jpegs, batch, 2 * SLOTS), SLOTS, streams)
            torch.cuda.reset_peak_memory_stats()
            with pcie.block() as b:
                r = run_overlapped(model, pre, make_batches(jpegs, batch, nb), SLOTS, streams)
            finish({"case": f"ours {res_name}, after: {pre.name}, uint8 letterbox, FP16 graph, 3 streams"}, r, b.result,
                   pre.counted_bytes(jpegs), nb * batch)
            pre.close()
            del model
        except Exception as e:
            failed.append(f"before/after {res_name} {name}: {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc()
    torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------- report

def table(rows: list[dict], keys: list[str]) -> str:
    fmt = lambda v: "" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows])


MAIN_KEYS = ["frames", "batch", "path", "decode_only_fps", "decode_stream_fps", "model_only_fps", "limit_fps",
             "slowest_stage", "e2e_fps", "e2e_over_limit", "e2e_over_model", "p50_ms", "p99_ms",
             "counted_bytes_per_frame", "decode_rx_bytes_per_frame", "nvml_rx_bytes_per_frame",
             "corrected_rx_bytes_per_frame", "corrected_over_counted", "pcie_rx_util_pct", "torch_mem_peak_mib",
             "nvml_mem_peak_mib", "max_abs_vs_cpu", "mean_abs_vs_cpu", "model_ms_alone", "model_ms_in_e2e",
             "infer_idle_ms", "decode_stream_ms_alone", "decode_call_ms"]


WHY_JPEG_RX = (
    "Why NVML's receive bytes on the JPEG paths are not the bytes copied (bench/gpu_pcie_why.py, 2026-12-06, lent "
    "H100, docs/bandwidth/gpu_pcie_why.md). nvImageCodec hybrid: the host-to-device memcpys CUPTI sees (16-bit DCT "
    "coefficients, 2.07 MB a 960x720 frame; 0.6 MB a 1080p frame with Huffman on the GPU) account for NVML within "
    "10%. NVJPG (nvImageCodec HW and torchvision's nvJPEG, both on the hardware engines): NVML adds what the GPU reads "
    "from host memory while a stream waits on the device for an NVJPG job. Nothing when the host waits instead (one "
    "1080p image, host sync: NVML 0.98-1.12x the JPEG bytes + CUDA calls), 0.10-0.54 bytes per decoded pixel for a "
    "kernel queued behind the decode on its stream, 0.23-0.50 for one other stream waiting through an event, "
    "0.52-0.58 for four (the same code differs from run to run); within a run the same per pixel at 320x240 and 1080p and at JPEG quality 50-95 (the engine's time, not the JPEG's "
    "bytes), read requests on TX (10-15%) as for any read of host memory; a stream waiting 1 ms on a compute kernel "
    "costs under 0.4 kB, device-only traffic nothing. nvJPEG's batched hardware decode waits on its engines from its own "
    "streams (0.16-0.25 B/pixel with no work of ours after it); the pipeline's letterbox and inference streams wait "
    "too: hence 9-21x the JPEG bytes on these paths. CUDA calls are no part of it (launch 1.7-1.8 kB, event record and "
    "stream wait 0, memset 0.2 kB, graph replay 0.2-0.3 kB + 0.1 kB a node: 2-6 kB a frame). The bytes follow GPU-side "
    "waits on the engines, not payload, so no per-byte correction can match them: the bench reports NVML beside "
    "the counted bytes on JPEG paths."
)

WHY_CONNECTIONS = (
    "Why it matters (measured with bench/gpu_limit_diag.py, 2026-12-06, lent H100, 1080p batch 32; "
    "docs/bandwidth/gpu_limit-why.md): with the driver's default of 8 hardware work queues, decode and inference ran "
    "one after the other (NVJPG path 2,834 frames/s, 0.58 of the model alone). Not the GIL (a Python counter kept "
    "99-102% of its rate during the NVJPG decode call), not pageable copies, not the memory pool: nvJPEG's hardware "
    "decoder spreads a batch over 14 streams of its own and waits on each image's colour-conversion kernel; with 8 "
    "queues some of those streams share a queue with the inference stream, and that image's kernel waits behind the "
    "whole graph replay (a false dependency; one cudaEventSynchronize of 6.7 ms a batch in the trace). With 32 queues "
    "the same code ran at 4,346 frames/s (0.88), and with the in-place letterbox and reused decoder buffers at the "
    "figures above.")


def render(data: dict) -> str:
    v = data["versions"]
    out = [f"# GPU input at the pipeline's limit ({v.get('gpu')}, driver {v.get('driver')})", "",
           f"Command: `{data['command']}` (issue 25; how the wheels travel: `bench/gpu_carry.sh`).", "",
           "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("gpu",)), "",
           "Model: the reference checkpoint in PyTorch, FP16, one CUDA graph per ring slot with the /255 "
           "normalisation inside (no TensorRT on the lent machines). Frames: the reference JPEGs at their native "
           "size and re-encoded at 1920x1080 (quality 80). Inference stream priority: "
           f"{data.get('infer_stream_priority')} (-1 = high).", ""]
    c = data.get("calibration") or {}
    if c:
        out += ["## NVML PCIe counters against copies of known size", "",
                "Each cell is NVML's bytes over the bytes copied, both NVML methods: the cumulative counters "
                "(field values PCIE_COUNT_RX/TX_BYTES, `*_counter_*`) and the 20 ms throughput samples "
                "(nvmlDeviceGetPcieThroughput, KB/s x 1000, `*_sampled_*`), idle rate subtracted "
                f"({ {k: round(v) for k, v in (c.get('idle_rate') or {}).items()} } bytes/s). Method used below: "
                f"{'the cumulative counters' if c.get('used') == 'rx_counter' else 'the 20 ms samples'}"
                + (f" ({c['counters_rejected']})" if c.get("counters_rejected") else "") + ".", "", table(c["rows"], list(dict.fromkeys(k for r in c["rows"] for k in r))), "",
                f"Correction used below: receive bytes / {c.get('rx_factor')} ({c.get('rx_factor_key')}, large pinned "
                "host-to-device copies), after subtracting the idle rate and the model + NMS stages' own receive "
                "traffic a frame (graph launches, result copies), measured alone at the same batch.", ""]
    out += ["## Every path against its slowest stage, same run", "",
            "decode_only_fps: the decoder alone; decode_stream_fps: the decode stream's whole work (decode + fused "
            "letterbox, or DALI's pipeline) alone; limit_fps: the slowest of decode stream, model and NMS alone; "
            "e2e: the 3-stream overlapped pipeline. PCIe: bytes a frame host -> device.", "",
            table(data["rows"], MAIN_KEYS), "", WHY_JPEG_RX, ""]
    if data.get("stages"):
        out += ["Model and NMS alone (shared by every path at that resolution and batch):", "",
                table(data["stages"], list(data["stages"][0])), ""]
    splits = [r for r in data["rows"] if r.get("split_tuning")]
    if splits:
        out += ["Split tuning (frames/s end to end by frames a batch sent to the NVJPG engines):", ""]
        out += [f"- {r['frames']} b{r['batch']}: {r['split_tuning']}" for r in splits] + [""]
    if data.get("goal"):
        out += ["## Goal: best path >= 90% of its slowest stage (batch 32)", "", table(data["goal"], list(data["goal"][0])), "",
                "model_ms_alone: the graph's time a batch alone; model_ms_in_e2e: its GPU time a batch inside the "
                "pipeline (CUDA events on the inference stream); infer_idle_ms: the inference stream's median gap between "
                "batches; decode_call_ms: the decode thread's host time a batch. With infer_idle_ms ~0 the pipeline runs "
                "at the graph's pace, and what is left of the gap to the limit is the graph slowed by the decode and NMS "
                "kernels that share its SMs (model_ms_in_e2e over model_ms_alone).", "",
                f"CUDA_DEVICE_MAX_CONNECTIONS: {v.get('CUDA_DEVICE_MAX_CONNECTIONS', 'unset')}. "
                + WHY_CONNECTIONS, ""]
    if data.get("before_after"):
        ba = data["before_after"]
        seed = [{"case": "seed (Jetson AGX Orin), before: FP32, CPU decode, serial", "frames_per_s": 110, "p50_ms": 68,
                 "pcie_rx_util_pct": "92 (of the shared LPDDR5 bus)", "nvml_mem_peak_mib": "6.2 GB"},
                {"case": "seed (Jetson AGX Orin), after: INT8, DALI, 3 streams, pool", "frames_per_s": 270, "p50_ms": 23,
                 "pcie_rx_util_pct": "58", "nvml_mem_peak_mib": "4.3 GB"}]
        keys = ["case", "frames_per_s", "p50_ms", "p99_ms", "counted_bytes_per_frame", "corrected_rx_bytes_per_frame",
                "pcie_rx_util_pct", "pcie_rx_util_counted_pct", "torch_mem_peak_mib", "nvml_mem_peak_mib"]
        out += ["## The seed's before/after, 8 streams as 2 x 4 (batch 4)", "", table(seed + ba, keys), ""]
        if data.get("ratios"):
            out += ["Ratios after/before (seed: frames/s 2.45x, latency 68 -> 23 ms = 0.34x, link 92 -> 58%):", "",
                    table(data["ratios"], list(data["ratios"][0])), ""]
    if data.get("prediction"):
        out += ["## The bandwidth stage's prediction against the measurement", "",
                table(data["prediction"], list(data["prediction"][0])), ""]
    out += [f"- FAILED {f}" for f in data.get("failed", [])]
    out += [f"- note: {n}" for n in data.get("notes", [])]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames-dir", type=Path, default=None)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--resolutions", default="native,1920x1080")
    ap.add_argument("--batches", default="4,32")
    ap.add_argument("--distinct", type=int, default=128, help="distinct frames, cycled")
    ap.add_argument("--seconds", type=float, default=1.5, help="each end-to-end run")
    ap.add_argument("--stage-seconds", type=float, default=0.5, help="each standalone stage run")
    ap.add_argument("--tune-seconds", type=float, default=0.6, help="each split-tuning run")
    ap.add_argument("--calib-seconds", type=float, default=0.8)
    ap.add_argument("--cpu-threads", type=int, default=16)
    ap.add_argument("--dali-threads", type=int, default=8)
    ap.add_argument("--dali-loads", default="0.65,1.0")
    ap.add_argument("--cuda-connections", type=int, default=32,
                    help="CUDA_DEVICE_MAX_CONNECTIONS (hardware work queues; the driver's default is 8); 0 leaves it")
    ap.add_argument("--infer-priority", type=int, default=-1, help="CUDA stream priority of inference (-1 high, 0 normal)")
    ap.add_argument("--profile", action="store_true", help="host-side CUDA API profile at the largest batch")
    ap.add_argument("--paths", default="", help="comma-separated substrings; only matching paths run")
    ap.add_argument("--quick", action="store_true", help="a smoke run: short timings, native frames, batch 4")
    ap.add_argument("--out-dir", type=Path, default=Path("docs/bandwidth"))
    ap.add_argument("--render", type=Path, default=None, help="only re-render gpu_limit.md beside this gpu_limit.json")
    args = ap.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return 0
    root = next((p for p in (Path.cwd(), HERE.parent) if (p / "models").is_dir()), Path.cwd())
    args.frames_dir = args.frames_dir or root / "data" / "aoi" / "val" / "images"
    args.checkpoint = args.checkpoint or root / "models" / "aoi_yolov8n.pt"
    if args.quick:
        args.seconds, args.stage_seconds, args.tune_seconds, args.calib_seconds = 0.3, 0.15, 0.15, 0.2
        args.resolutions, args.batches, args.distinct = "native", "4", 16
    args.dali_loads = [float(x) for x in args.dali_loads.split(",") if x]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    args.max_batch, args.profiles = max(int(x) for x in args.batches.split(",")), []
    # Before CUDA starts: nvJPEG's hardware decoder runs 14 streams of its own; with the driver's 8 hardware queues they
    # share queues with the inference stream, and an image's colour kernel then waits behind a whole graph replay
    # (a false dependency): at 1080p b32 that made decode + inference serial (gpu_limit_diag.py, docs/bandwidth).
    if args.cuda_connections:
        from yolo_compile.gpu.overlap import widen_hardware_queues

        widen_hardware_queues(args.cuda_connections)
    import torch

    from gpu_input import frames_at
    from yolo_compile.runtimes import pytorch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here")
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = versions()
    print(json.dumps(env), flush=True)
    try:
        from yolo_compile.bandwidth.links import LINKS

        args.link_gbs = LINKS[f"pcie{env['pcie_gen']}_x{env['pcie_width']}"][1]
    except Exception:
        args.link_gbs = 16 * 32 * 128 / 130 / 8 * 0.86
    pcie = Pcie()
    failed, notes = [], []
    calib = {}
    try:
        calib = calibrate(pcie, args.calib_seconds)
    except Exception as e:
        failed.append(f"calibration: {type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc()
    net16 = pytorch.load_torch_detector(args.checkpoint, "cuda", half=True)
    net32 = pytorch.load_torch_detector(args.checkpoint, "cuda", half=False)
    rows, stages, before_after_rows, prediction, goal = [], [], [], [], []
    import cv2

    for res in args.resolutions.split(","):
        size_wh = None if res == "native" else tuple(int(x) for x in res.lower().split("x"))
        jpegs = frames_at(args.frames_dir, args.distinct, size_wh)
        h, w = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
        res_name = f"{w}x{h}"
        print(f"{res_name}: {len(jpegs)} distinct frames, {np.mean([len(j) for j in jpegs]):,.0f} bytes a frame", flush=True)
        for b in [int(x) for x in args.batches.split(",")]:
            try:
                r, s = measure_config(args, pcie, calib, net16, res_name, jpegs, b, paths, failed, notes)
                rows += r
                stages.append(s)
            except Exception as e:
                failed.append(f"{res_name} b{b}: {type(e).__name__}: {str(e)[:300]}")
                traceback.print_exc()
        b4 = [r for r in rows if r["frames"] == res_name and r["batch"] == 4 and not r["path"].startswith("CPU")]
        best = []
        if b4:
            best.append(max(b4, key=lambda r: r["e2e_fps"])["path"])
            dali = [r for r in b4 if r["path"].startswith("DALI")]
            if dali and max(dali, key=lambda r: r["e2e_fps"])["path"] not in best:
                best.append(max(dali, key=lambda r: r["e2e_fps"])["path"])
        before_after_rows += before_after(args, pcie, calib, net16, net32, res_name, jpegs, best, failed)
        # the bandwidth stage's prediction (bytes a frame per representation; link use at the measured rate)
        s = args.imgsz
        jb = float(np.mean([len(j) for j in jpegs]))
        for rep, pred_b, match in (("fp32 + cpu decode", 12 * s * s, lambda r: "before" in r.get("case", "")),
                                   ("uint8 upload", 3 * s * s, lambda r: r.get("path", "").startswith("CPU")),
                                   ("jpeg to gpu", jb, lambda r: not r.get("path", "CPU").startswith("CPU"))):
            src = [r for r in (rows if rep != "fp32 + cpu decode" else before_after_rows)
                   if r.get("frames", res_name) == res_name and res_name in (r.get("frames") or r.get("case", "")) and match(r)]
            for r in src:
                meas = r.get("corrected_rx_bytes_per_frame")
                fps = r.get("e2e_fps", r.get("frames_per_s"))
                prediction.append({"frames": res_name, "representation": rep, "measured on": r.get("path") or r.get("case"),
                                   "batch": r.get("batch", 4), "predicted_bytes_per_frame": round(pred_b),
                                   "measured_corrected_bytes_per_frame": meas,
                                   "measured_over_predicted": None if meas is None else round(meas / pred_b, 3),
                                   "predicted_link_pct": round(100 * pred_b * fps / (args.link_gbs * 1e9), 3),
                                   "measured_link_pct": r.get("pcie_rx_util_pct")})
    for res_name in dict.fromkeys(r["frames"] for r in rows):
        cand = [r for r in rows if r["frames"] == res_name and r["batch"] == 32 and "e2e_over_limit" in r]
        if cand:
            r = max(cand, key=lambda r: r["e2e_fps"])
            goal.append({"frames": res_name, "best path": r["path"], "e2e_fps": r["e2e_fps"], "limit_fps": r["limit_fps"],
                         "slowest_stage": r["slowest_stage"], "e2e_over_limit": r["e2e_over_limit"],
                         "met (>= 0.90)": "yes" if r["e2e_over_limit"] >= 0.9 else "no",
                         "best e2e_over_limit of any path": max(c["e2e_over_limit"] for c in cand),
                         "model_ms_alone": r.get("model_ms_alone"), "model_ms_in_e2e": r.get("model_ms_in_e2e"),
                         "infer_idle_ms": r.get("infer_idle_ms"), "decode_stream_ms_alone": r.get("decode_stream_ms_alone"),
                         "decode_call_ms": r.get("decode_call_ms")})
    ratios = []
    for res_name in dict.fromkeys(r["frames"] for r in rows):
        bef = next((r for r in before_after_rows if res_name in r["case"] and "before" in r["case"]), None)
        for aft in (r for r in before_after_rows if res_name in r["case"] and "after" in r["case"]):
            if bef:
                ratios.append({"case": aft["case"], "frames_per_s_x": round(aft["frames_per_s"] / bef["frames_per_s"], 2),
                               "p50_latency_x": round(aft["p50_ms"] / bef["p50_ms"], 2),
                               "pcie_bytes_x (counted)": round(aft["counted_bytes_per_frame"] / bef["counted_bytes_per_frame"], 4)})
    data = {"command": "python bench/gpu_limit.py " + " ".join(sys.argv[1:]), "versions": env, "calibration": calib,
            "infer_stream_priority": args.infer_priority,
            "stages": stages, "rows": rows, "goal": goal, "before_after": before_after_rows, "ratios": ratios,
            "prediction": prediction, "failed": failed, "notes": notes}
    (args.out_dir / "gpu_limit.json").write_text(json.dumps(data, indent=1))
    (args.out_dir / "gpu_limit.md").write_text(render(data))
    if args.profiles:
        (args.out_dir / "gpu_limit-profile.txt").write_text("\n".join(args.profiles))
    short = ["frames", "batch", "path", "decode_only_fps", "decode_stream_fps", "limit_fps", "e2e_fps", "e2e_over_limit",
             "corrected_over_counted"]
    print(table(goal, list(goal[0])) if goal else "no goal rows")
    print(table(rows, short))
    print("\n".join(f"FAILED {f}" for f in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
