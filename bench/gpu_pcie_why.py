"""What are NVML's extra PCIe receive bytes on the JPEG-to-GPU paths? (issue 25) A focused probe beside gpu_limit.py.

    python bench/gpu_pcie_why.py --out DIR [--seconds 0.8] [--budget 170]     (on the GPU machine)
    python bench/gpu_pcie_why.py --render DIR/pcie_why.json --md docs/bandwidth/gpu_pcie_why.md   (anywhere)

NVML receive bytes (20 ms nvmlDeviceGetPcieThroughput samples through gpu_limit.Pcie, idle rate subtracted, divided
by the factor of large pinned host-to-device copies measured in the same run) over blocks of ~1 s of one kind of work:
  calls      an empty kernel launch, a launch with ~3.4 KB of parameters (torch._foreach_add_ of 100 tensors), an
             event record, a stream wait on a completed event, a 4-byte memset, a 4 KiB pinned copy, a CUDA graph
             replay of k = 1, 16, 128 kernels; a stream waiting ~1 ms on a pending event; device-only controls
             (256 MiB device-to-device copies);
  decoders   nvImageCodec HW (NVJPG), nvImageCodec hybrid, torchvision nvJPEG on JPEGs of known size (batch 1: one
             image; batch 32), decode alone (gpu_limit's standalone call) and the decode stream's stage (decode into
             reused images + letterbox, the pipeline's call).
Every block is also run under torch.profiler (CUPTI): CUDA API calls a step by kind and the bytes of host-to-device
memcpys the GPU executed. "explained" = those memcpy bytes + calls x the bytes a call measured above. Writes
pcie_why.json after every block (a cut-off run keeps what it did), and the markdown with --render.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE, Path.cwd() / "bench"):
    if (_p / "gpu_limit.py").is_file():
        sys.path.insert(0, str(_p))
for _p in (HERE.parent / "src", Path.cwd() / "src"):
    if (_p / "yolo_compile").is_dir():
        sys.path.insert(0, str(_p))

# API call kinds: the per-call bytes measured by these blocks are applied to the decoders' counts
KINDS = {"launch": r"LaunchKernel|LaunchCooperative", "record": r"EventRecord", "wait": r"StreamWaitEvent",
         "memset": r"Memset", "memcpy": r"Memcpy", "graph": r"GraphLaunch"}
PER_CALL = {"launch": "empty kernel launch", "record": "event record", "wait": "stream wait (event done)",
            "memset": "memset 4 B", "memcpy": "copy 4 KiB h2d pinned (bytes over 4 KiB)", "graph": "graph replay, k=1"}


def api_profile(step, n: int) -> dict:
    """CUDA API calls a step by kind, and host-to-device memcpy bytes the GPU ran a step (CUPTI through kineto)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(i)
        torch.cuda.synchronize()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    prof.export_chrome_trace(path)
    events = json.loads(Path(path).read_text()).get("traceEvents", [])
    os.remove(path)
    calls, kinds, h2d, gpu = Counter(), Counter(), 0, Counter()
    for e in events:
        cat, name = e.get("cat", ""), e.get("name", "")
        if cat in ("cuda_runtime", "cuda_driver"):
            calls[name] += 1
            for k, rx in KINDS.items():
                if re.search(rx, name):
                    kinds[k] += 1
                    break
        elif cat == "gpu_memcpy":
            d = "h2d" if "HtoD" in name else "d2h" if "DtoH" in name else "other"
            gpu["memcpy_" + d] += 1
            if d == "h2d":
                h2d += int((e.get("args") or {}).get("bytes", 0))
        elif cat in ("gpu_memset", "kernel"):
            gpu[cat] += 1
    return {"calls": {k: round(v / n, 2) for k, v in calls.most_common(14)},
            "kinds": {k: round(v / n, 2) for k, v in kinds.items()},
            "gpu": {k: round(v / n, 2) for k, v in gpu.items()}, "h2d_memcpy_bytes": round(h2d / n)}


class Probe:
    def __init__(self, args):
        import torch

        import gpu_limit as gl

        self.args, self.gl, self.torch = args, gl, torch
        self.pcie = gl.Pcie()
        if self.pcie.handle is None:
            raise SystemExit(self.pcie.why)
        self.data = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": "python " + " ".join(sys.argv), "env": gl.versions(), "rows": []}
        self.t_end = time.perf_counter() + args.budget
        self.idle_rx = self.idle_tx = 0.0
        self.factor = 1.0

    def save(self):
        (self.args.out / "pcie_why.json").write_text(json.dumps(self.data, indent=1))

    def block(self, fn, seconds):
        with self.pcie.block() as b:
            fn()
        return b.result

    def measure(self, group: str, case: str, step, ops: float = 1.0, sync_every: int = 256, prof_n: int = 8,
                **extra) -> dict | None:
        """Run step(i) ~seconds long; RX/TX per op (idle out, calibrated); the API profile of prof_n steps."""
        torch = self.torch
        if time.perf_counter() > self.t_end:
            print(f"skip {case}: budget", flush=True)
            return None
        try:
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(5):
                step(i)
            torch.cuda.synchronize()
            n = max(10, int(self.args.seconds / max((time.perf_counter() - t0) / 5, 1e-7)))

            def loop():
                for i in range(n):
                    step(i)
                    if i % sync_every == sync_every - 1:
                        torch.cuda.synchronize()
                torch.cuda.synchronize()
            r = self.block(loop, self.args.seconds)
            rx = (r["rx_sampled"] - self.idle_rx * r["seconds"]) / self.factor
            tx = r["tx_sampled"] - self.idle_tx * r["seconds"]
            row = {"group": group, "case": case, "steps": n, "ops_per_step": ops, "seconds": round(r["seconds"], 3),
                   "samples": r.get("samples"), "rx_per_op": round(rx / (n * ops), 1),
                   "tx_per_op": round(tx / (n * ops), 1), "ops_per_s": round(n * ops / r["seconds"]),
                   "rx_mb_s": round(rx / r["seconds"] / 1e6, 3), **extra}
            if prof_n:
                p = api_profile(step, prof_n)
                for k in ("kinds", "gpu", "calls"):
                    p[k] = {a: round(b / ops, 3) for a, b in p[k].items()}
                row.update(p, h2d_memcpy_bytes=round(p["h2d_memcpy_bytes"] / ops))
        except Exception as e:  # a decoder missing on the machine, a driver refusal: recorded, the run goes on
            row = {"group": group, "case": case, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps({k: v for k, v in row.items() if k != "calls"}), flush=True)
        self.data["rows"].append(row)
        self.save()
        return row

    def baseline(self):
        torch = self.torch
        r = self.block(lambda: time.sleep(1.5), 1.5)
        self.idle_rx, self.idle_tx = r["rx_sampled"] / r["seconds"], r["tx_sampled"] / r["seconds"]
        host = torch.empty(64 << 20, dtype=torch.uint8).pin_memory()
        dev = torch.empty_like(host, device="cuda")
        m = self.measure("calibration", "h2d pinned 64 MiB (RX bytes over bytes copied)",
                         lambda i: dev.copy_(host, non_blocking=True), ops=float(64 << 20), prof_n=0)
        self.factor = m["rx_mb_s"] * 1e6 / m["ops_per_s"]
        self.data.update(idle_rx_bytes_s=round(self.idle_rx), idle_tx_bytes_s=round(self.idle_tx), factor=self.factor)
        m["note"] = "sets the factor; later rows are divided by it"
        a = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        self.measure("control", "d2d copy 256 MiB (device memory only)", lambda i: b.copy_(a), prof_n=2)
        x = torch.randn(4096, 4096, device="cuda", dtype=torch.half)
        self.measure("control", "fp16 matmul 4096^3 (SMs only)", lambda i: x @ x, prof_n=2)

    def calls(self):
        torch = self.torch
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        ev = torch.cuda.Event()
        self.measure("call", "empty kernel launch", lambda i: torch.cuda._sleep(0))
        ts = [torch.zeros(1, device="cuda") for _ in range(100)]
        self.measure("call", "kernel launch, ~3.4 KB parameters", lambda i: torch._foreach_add_(ts, 1.0))
        self.measure("call", "event record", lambda i: ev.record(s1))

        def rec_wait(i):
            ev.record(s1)
            s2.wait_event(ev)
        self.measure("call", "event record + stream wait (event done)", rec_wait)
        import ctypes

        buf = torch.zeros(1024, device="cuda")
        try:
            rt = ctypes.CDLL("libcudart.so.13")
        except OSError:
            import glob

            import nvidia.cu13 as cu  # torch 2.11 + cu130's runtime
            rt = ctypes.CDLL(glob.glob(os.path.join(list(cu.__path__)[0], "lib", "libcudart.so*"))[0])
        ms = rt.cudaMemsetAsync
        ms.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
        st = torch.cuda.current_stream().cuda_stream
        self.measure("call", "memset 4 B", lambda i: ms(buf.data_ptr(), 0, 4, st))
        hp = torch.empty(4096, dtype=torch.uint8).pin_memory()
        dp = torch.empty(4096, dtype=torch.uint8, device="cuda")
        self.measure("call", "copy 4 KiB h2d pinned", lambda i: dp.copy_(hp, non_blocking=True))
        x = torch.zeros(1, device="cuda")
        for k in (1, 16, 128):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(k):
                    x.add_(1)
            self.measure("call", f"graph replay, k={k}", lambda i, g=g: g.replay(), nodes=k)
        # a stream left waiting ~1 ms on a pending event: does the GPU poll host memory while it waits?
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        torch.cuda._sleep(10 ** 7)
        e1.record()
        e1.synchronize()
        cyc = int(10 ** 7 / e0.elapsed_time(e1))  # cycles a millisecond

        def pend(i, wait=True):
            with torch.cuda.stream(s1):
                torch.cuda._sleep(cyc)
                ev.record(s1)
            if wait:
                s2.wait_event(ev)
            with torch.cuda.stream(s2):
                torch.cuda._sleep(0)
        self.measure("wait", "1 ms kernel + record; other stream waits on it + empty kernel", pend, sync_every=8,
                     prof_n=4)
        self.measure("wait", "same, no wait", lambda i: pend(i, False), sync_every=8, prof_n=4)

    def decoders(self):
        torch, gl = self.torch, self.gl
        from gpu_input import frames_at

        folder = Path.cwd() / "data" / "aoi" / "val" / "images"
        sets = {"native q-orig": frames_at(folder, 8, None)}
        for name, wh, q in (("320x240 q80", (320, 240), 80), ("1920x1080 q80", (1920, 1080), 80),
                            ("1920x1080 q50", (1920, 1080), 50), ("1920x1080 q95", (1920, 1080), 95)):
            sets[name] = frames_at(folder, 8, wh, q)
        import cv2
        import numpy as np

        shape = {k: cv2.imdecode(np.frombuffer(v[0], np.uint8), cv2.IMREAD_COLOR).shape[:2] for k, v in sets.items()}
        pres = {}
        for key, make in (("HW", lambda: gl.NvImgCodec(640, "HW_GPU_ONLY")), ("tv", lambda: gl.TorchvisionNvjpeg(640)),
                          ("hybrid", lambda: gl.NvImgCodec(640, "HYBRID_CPU_GPU"))):
            try:
                pres[key] = make()
            except Exception as e:
                self.data["rows"].append({"group": "decode", "case": key, "error": f"{type(e).__name__}: {e}"[:300]})
        plan = [(d, s, 1, "decode") for s in sets for d in ("HW", "tv")]
        plan += [(d, s, 32, "decode") for s in ("native q-orig", "1920x1080 q80") for d in ("HW", "tv", "hybrid")]
        plan += [(d, s, 32, "stage") for s in ("native q-orig", "1920x1080 q80") for d in ("HW", "tv")]
        plan += [(d, s, 4, "stage") for s in ("native q-orig", "1920x1080 q80") for d in ("HW", "tv")]
        plan += [("hybrid", s, 1, "decode") for s in ("native q-orig", "1920x1080 q80")]
        plan += [(d, s, 32, "decode") for s in ("320x240 q80", "1920x1080 q50", "1920x1080 q95") for d in ("HW", "tv")]
        dst = {b: torch.empty((4, b, 3, 640, 640), dtype=torch.uint8, device="cuda") for b in (4, 32)}
        for d, s, b, mode in plan:
            if d not in pres:
                continue
            pre, jp = pres[d], sets[s]
            frames = [jp[0]] if b == 1 else [jp[j % len(jp)] for j in range(b)]
            if mode == "decode":
                step = (lambda i, pre=pre, f=frames: pre.decode(f))
            else:
                step = (lambda i, pre=pre, f=frames, o=dst[b]: pre.stage(f, i % 4, o[i % 4]))
            h, w = shape[s]
            self.measure("decode", f"{pre.name} {mode} b{b} {s}", step, ops=float(b), sync_every=4 if b > 1 else 64,
                         prof_n=6, decoder=d, images=s, batch=b, mode=mode, height=h, width=w,
                         bitstream_bytes=round(sum(len(f) for f in frames) / b))

    def locality(self):
        """Same engine, same call, only the output addresses differ; SM and copy-engine writes over the same
        rotation; then whether NVJPG's extra bytes take link bandwidth from a copy running beside them."""
        import collections
        import threading

        torch, gl = self.torch, self.gl
        from gpu_input import frames_at

        jp = frames_at(Path.cwd() / "data" / "aoi" / "val" / "images", 8, (1920, 1080), 80)
        tv, hw = gl.TorchvisionNvjpeg(640), gl.NvImgCodec(640, "HW_GPU_ONLY")
        meta = dict(height=1080, width=1920, images="1920x1080 q80", bitstream_bytes=len(jp[0]))
        from torchvision.io import decode_jpeg

        t0 = torch.frombuffer(bytearray(jp[0]), dtype=torch.uint8)
        for keep in (0, 4, 32):
            q = collections.deque(maxlen=keep or 1)

            def tv1(i, q=q, keep=keep):
                out = decode_jpeg([t0], device="cuda")
                if keep:
                    q.append(out)
            self.measure("decode", f"torchvision nvJPEG b1, last {keep} outputs kept (new addresses)", tv1,
                         decoder="tv", batch=1, mode=f"keep{keep}", **meta)
        s = torch.cuda.current_stream().cuda_stream
        prev = hw.decoder.decode([jp[0]], cuda_stream=s)
        self.measure("decode", "nvImageCodec HW b1 into the same image (images=)",
                     lambda i: hw.decoder.decode([jp[0]], images=prev, cuda_stream=s), decoder="HW", batch=1,
                     mode="reuse", **meta)
        for keep in (1, 32):
            q = collections.deque(maxlen=keep)
            self.measure("decode", f"nvImageCodec HW b1, new image each call, last {keep} kept",
                         lambda i, q=q: q.append(hw.decoder.decode([jp[0]], cuda_stream=s)), decoder="HW", batch=1,
                         mode=f"keep{keep}", **meta)
        bufs = [torch.empty(1080 * 1920 * 3, dtype=torch.uint8, device="cuda") for _ in range(32)]
        src = torch.empty_like(bufs[0])
        self.measure("control", "SM fill of 6.2 MB, 32 buffers in turn", lambda i: bufs[i % 32].fill_(i % 7))
        self.measure("control", "copy engine d2d 6.2 MB, 32 buffers in turn", lambda i: bufs[i % 32].copy_(src))
        # link contention: a saturating pinned copy alone, then with NVJPG b32 decoding beside it (its own thread)
        host = torch.empty(64 << 20, dtype=torch.uint8).pin_memory()
        dev = torch.empty_like(host, device="cuda")
        cs = torch.cuda.Stream()
        b32 = [jp[j % 8] for j in range(32)]
        for beside in ("nothing", "NVJPG b32 1080p", "nothing (again)"):
            stop, done = threading.Event(), [0, 0.0, 0.0]

            def bg():
                st = torch.cuda.Stream()
                done[1] = time.perf_counter()
                while not stop.is_set():
                    hw.decoder.decode(b32, cuda_stream=st.cuda_stream)
                    done[0] += 32
                st.synchronize()
                done[2] = time.perf_counter()
            th = threading.Thread(target=bg, daemon=True)
            if beside.startswith("NVJPG"):
                th.start()
                time.sleep(0.3)
            n = int(self.args.seconds * 50e9 / (64 << 20))

            def loop():
                for i in range(n):
                    with torch.cuda.stream(cs):
                        dev.copy_(host, non_blocking=True)
                    if i % 8 == 7:
                        cs.synchronize()
                cs.synchronize()
            r = self.block(loop, self.args.seconds)
            stop.set()
            if th.is_alive():
                th.join()
            rx = (r["rx_sampled"] - self.idle_rx * r["seconds"]) / self.factor
            row = {"group": "contention", "case": f"h2d pinned 64 MiB copies beside {beside}", "seconds": r["seconds"],
                   "copy_gb_s": round(n * (64 << 20) / r["seconds"] / 1e9, 2), "nvml_rx_gb_s": round(rx / r["seconds"] / 1e9, 2),
                   "decoded_images_s": round(done[0] / (done[2] - done[1])) if done[0] else 0}
            print(json.dumps(row), flush=True)
            self.data["rows"].append(row)
            self.save()

    def overlap(self):
        """NVJPG decodes (b1, raw calls) followed by SM kernels: on the decoder's output or on another buffer, with
        or without a host sync between steps; then an NVJPG b32 loop on its own thread beside SM fills."""
        import threading

        torch, gl = self.torch, self.gl
        from gpu_input import frames_at
        from torchvision.io import decode_jpeg

        jp = frames_at(Path.cwd() / "data" / "aoi" / "val" / "images", 8, (1920, 1080), 80)
        hw = gl.NvImgCodec(640, "HW_GPU_ONLY").decoder
        s = torch.cuda.current_stream().cuda_stream
        other = torch.empty(1080 * 1920 * 3, dtype=torch.uint8, device="cuda")
        t0 = torch.frombuffer(bytearray(jp[0]), dtype=torch.uint8)
        meta = dict(height=1080, width=1920, images="1920x1080 q80", bitstream_bytes=len(jp[0]))
        keep = {}

        def hw1(i, read="none", sync=False):
            imgs = hw.decode([jp[0]], cuda_stream=s)
            keep[i % 2] = imgs
            if read != "none":
                t = torch.as_tensor(imgs[0], device="cuda")
                if read == "stack":
                    keep[2] = torch.stack([t])
            if read == "fill":
                other.fill_(i % 7)
            if sync:
                torch.cuda.synchronize()
        for read, sync in (("none", False), ("as_tensor", False), ("stack", False), ("stack", True),
                           ("fill", False), ("fill", True)):
            self.measure("overlap", f"NVJPG b1 + {read}{', host sync each step' if sync else ''}",
                         lambda i, r=read, y=sync: hw1(i, r, y), decoder="HW", batch=1, mode=f"{read}/{sync}", **meta)
        for b in (1, 32):
            ts = [t0] * b
            for stack in (False, True):
                self.measure("overlap", f"torchvision b{b}{' + stack' if stack else ' raw'}",
                             lambda i, ts=ts, st=stack: keep.__setitem__(3, torch.stack(decode_jpeg(ts, device="cuda"))
                                                                          if st else decode_jpeg(ts, device="cuda")),
                             ops=float(b), decoder="tv", batch=b, mode=f"stack={stack}", **meta)
        b32 = [jp[j % 8] for j in range(32)]
        bufs = [torch.empty(1080 * 1920 * 3, dtype=torch.uint8, device="cuda") for _ in range(8)]
        for beside in ("none", "NVJPG b32 loop"):
            stop = threading.Event()

            def bg():
                st = torch.cuda.Stream()
                while not stop.is_set():
                    hw.decode(b32, cuda_stream=st.cuda_stream)
            th = threading.Thread(target=bg, daemon=True)
            if beside != "none":
                th.start()
                time.sleep(0.3)
            self.measure("overlap", f"SM fill 6.2 MB x8 a step, beside {beside}",
                         lambda i: [b.fill_(i % 7) for b in bufs], sync_every=16, prof_n=0)
            self.measure("overlap", f"host sleep 1 ms a step, beside {beside}", lambda i: time.sleep(1e-3), prof_n=0)
            stop.set()
            if th.is_alive():
                th.join()

    def poll(self):
        """Is the extra a GPU-side wait on the NVJPG engine's completion (polled over PCIe for as long as the engine
        works)? NVJPG b1 followed by work that waits on it on the GPU, by k streams, or enqueued after a host sync."""
        torch, gl = self.torch, self.gl
        from gpu_input import frames_at

        folder = Path.cwd() / "data" / "aoi" / "val" / "images"
        hw = gl.NvImgCodec(640, "HW_GPU_ONLY").decoder
        cur = torch.cuda.current_stream()
        side = [torch.cuda.Stream() for _ in range(4)]
        ev = torch.cuda.Event()
        for name, wh in (("1920x1080 q80", (1920, 1080)), ("320x240 q80", (320, 240))):
            jp = frames_at(folder, 2, wh, 80)
            meta = dict(height=wh[1], width=wh[0], images=name, bitstream_bytes=len(jp[0]), decoder="HW", batch=1)
            keep = {}

            def step(i, mode, k=1, jp=jp):
                keep[i % 2] = hw.decode([jp[0]], cuda_stream=cur.cuda_stream)
                if mode == "host sync, then kernel":
                    torch.cuda.synchronize()
                    torch.cuda._sleep(0)
                elif mode == "kernel on another stream, no wait":
                    with torch.cuda.stream(side[0]):
                        torch.cuda._sleep(0)
                elif mode.startswith("k streams wait"):
                    ev.record(cur)
                    for st in side[:k]:
                        st.wait_event(ev)
                        with torch.cuda.stream(st):
                            torch.cuda._sleep(0)
                elif mode == "kernel after it, same stream":
                    torch.cuda._sleep(0)
            for mode, k in (("nothing after", 1), ("kernel after it, same stream", 1), ("host sync, then kernel", 1),
                            ("kernel on another stream, no wait", 1), ("k streams wait on it, k=1", 1),
                            ("k streams wait on it, k=4", 4)):
                if name != "1920x1080 q80" and mode not in ("nothing after", "kernel after it, same stream"):
                    continue
                self.measure("poll", f"NVJPG b1 {name}: {mode}", lambda i, m=mode, k=k: step(i, m, k),
                             mode=mode, **meta)

    def run(self):
        self.baseline()
        if self.args.part != "all":
            getattr(self, self.args.part)()
            return self.save()
        self.calls()
        self.decoders()
        r = self.block(lambda: time.sleep(1.0), 1.0)
        self.data["idle_rx_bytes_s_end"] = round(r["rx_sampled"] / r["seconds"])
        self.save()


# ----------------------------------------------------------------------------------------------- markdown

def per_call_bytes(rows: list[dict]) -> dict:
    """Bytes a call by kind, from the 'call' rows (a stream wait: record + wait less record)."""
    by = {r["case"]: r for r in rows if "rx_per_op" in r}
    get = lambda c: by[c]["rx_per_op"] if c in by else None  # noqa: E731
    out = {k: get(PER_CALL[k]) for k in ("launch", "record", "memset", "graph")}
    rw, rec, cp = get("event record + stream wait (event done)"), get("event record"), get("copy 4 KiB h2d pinned")
    out["wait"] = None if rw is None or rec is None else round(rw - rec, 1)
    out["memcpy"] = None if cp is None else round(cp - 4096, 1)
    return out


def explain(r: dict, pc: dict) -> dict:
    """Counted (memcpy bytes) + calls x bytes a call, against NVML, for one decoder row (per image)."""
    calls = sum(r.get("kinds", {}).get(k, 0) * (pc.get(k) or 0) for k in KINDS)
    ex = r.get("h2d_memcpy_bytes", 0) + calls
    resid = r["rx_per_op"] - ex
    return {"calls_bytes": round(calls), "explained": round(ex), "nvml_over_explained": round(r["rx_per_op"] / ex, 2)
            if ex > 0 else None, "residual": round(resid), "residual_per_pixel": round(resid / (r["height"] * r["width"]), 3),
            "residual_over_bitstream": round(resid / r["bitstream_bytes"], 2)}


def fmt(v):
    return f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else str(v)


def table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(fmt(c) for c in r) + " |"
                                                                        for r in rows]


def render(data: dict, old: str = "") -> str:
    e, rows = data["env"], data["rows"]
    pc = per_call_bytes(rows)
    out = [f"# What NVML's extra PCIe receive bytes are (issue 25) ({e.get('gpu')}, driver {e.get('driver')})", "",
           f"Date: {data['date']}. Command: `{data['command']}` (bench/gpu_pcie_why.py; wheels as for "
           "bench/gpu_limit.py). Versions: " + ", ".join(f"{k} {v}" for k, v in e.items() if k != "gpu") + ".", "",
           f"Method: NVML receive bytes from 20 ms `nvmlDeviceGetPcieThroughput` samples (gpu_limit.Pcie), the idle rate "
           f"({data.get('idle_rx_bytes_s', 0):,} B/s at the start, {data.get('idle_rx_bytes_s_end', '?'):,} at the end) "
           f"subtracted, divided by {data.get('factor')} (large pinned host-to-device copies, this run). Per op: per "
           "call, or per image for decoders. API calls and host-to-device memcpy bytes: torch.profiler (CUPTI) over a "
           "few steps of the same work.", "", "## Calls and controls", ""]
    out += table(["block", "ops/s", "NVML RX bytes/op", "TX bytes/op", "API calls a step (kind: count)",
                  "h2d memcpy bytes/op"],
                 [[r["case"], r.get("ops_per_s"), r.get("rx_per_op", r.get("error")), r.get("tx_per_op"),
                   ", ".join(f"{k} {v}" for k, v in r.get("kinds", {}).items()), r.get("h2d_memcpy_bytes")]
                  for r in rows if r["group"] in ("calibration", "control", "call", "wait")])
    g = [r for r in rows if r["case"].startswith("graph replay") and "rx_per_op" in r]
    if len(g) >= 2:
        import numpy as np

        b, a = np.polyfit([r["nodes"] for r in g], [r["rx_per_op"] for r in g], 1)
        out += ["", f"Graph replay fit: {a:,.0f} bytes a replay + {b:,.1f} bytes a kernel node."]
    out += ["", "Bytes a call used below: " + ", ".join(f"{k} {v}" for k, v in pc.items()) + ".", "",
            "## Decoders, per image", "",
            "explained = host-to-device memcpy bytes the GPU ran (CUPTI) + API calls x the bytes a call above; "
            "residual = NVML - explained.", ""]
    drows = []
    for r in rows:
        if r["group"] != "decode" or "rx_per_op" not in r:
            if r["group"] == "decode":
                drows.append([r["case"], "error: " + r.get("error", "")] + [""] * 10)
            continue
        x = explain(r, pc)
        k = r.get("kinds", {})
        drows.append([r["case"], r["ops_per_s"], r["bitstream_bytes"], r["rx_per_op"], r["h2d_memcpy_bytes"],
                      " ".join(f"{a}:{b}" for a, b in k.items()), x["calls_bytes"], x["explained"],
                      x["nvml_over_explained"], x["residual"], x["residual_per_pixel"], x["residual_over_bitstream"]])
    out += table(["case", "images/s", "JPEG bytes", "NVML RX", "h2d memcpy", "API calls/image", "calls x bytes",
                  "explained", "NVML / explained", "residual", "residual/pixel", "residual/JPEG"], drows)
    c = [r for r in rows if r["group"] == "contention"]
    if c:
        out += ["", "## Link contention: a saturating pinned copy alone and beside NVJPG decoding", ""]
        out += table(["block", "copy GB/s", "NVML RX GB/s (all traffic)", "images/s decoded beside"],
                     [[r["case"], r["copy_gb_s"], r["nvml_rx_gb_s"], r["decoded_images_s"]] for r in c])
    keep = old.split("## Reading", 1)
    return "\n".join(out) + "\n" + ("\n## Reading" + keep[1] if len(keep) == 2 else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--seconds", type=float, default=0.8, help="a measured block's length")
    ap.add_argument("--budget", type=float, default=170, help="seconds after which blocks are skipped")
    ap.add_argument("--part", default="all", choices=["all", "locality", "overlap", "poll"], help="locality: the output-address test")
    ap.add_argument("--render", type=Path, help="pcie_why.json to render (no GPU)")
    ap.add_argument("--md", type=Path, help="markdown to write (with --render)")
    args = ap.parse_args()
    if args.render:
        md = args.md or args.render.with_suffix(".md")
        md.write_text(render(json.loads(args.render.read_text()), md.read_text() if md.is_file() else ""))
        print(md)
        return 0
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # as gpu_limit.py (before CUDA starts)
    args.out.mkdir(parents=True, exist_ok=True)
    p = Probe(args)
    p.run()
    try:
        (args.out / "gpu_pcie_why.md").write_text(render(p.data))
    except Exception as e:
        print("render:", type(e).__name__, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
