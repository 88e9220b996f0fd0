"""What are NVML's extra PCIe receive bytes on the JPEG-to-GPU paths? (issue 25) A focused probe beside gpu_limit.py.

    python bench/gpu_pcie_why.py --out DIR [--part all|poll]                                          (GPU machine)
    python bench/gpu_pcie_why.py --render NAME=DIR/pcie_why.json ... --md docs/bandwidth/gpu_pcie_why.md  (anywhere)

NVML receive bytes (gpu_limit.Pcie's 20 ms samples, idle out, over the run's factor for large pinned copies) over ~1 s
blocks of one kind of work: single CUDA calls, device-only controls, the decoders on JPEGs of known size (batch 1/32,
gpu_limit's decode call and pipeline stage), NVJPG batch 1 followed by work that waits for it on the GPU or not (poll).
Each block also runs under torch.profiler (CUPTI): API calls by kind and host-to-device memcpy bytes; explained = those
bytes + calls x the bytes a call measured here. pcie_why.json is written after each block.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for _p, _m in ((HERE, "gpu_limit.py"), (Path.cwd() / "bench", "gpu_limit.py"), (HERE.parent / "src", "yolo_compile"),
               (Path.cwd() / "src", "yolo_compile")):
    sys.path[:0] = [str(_p)] if (_p / _m).exists() else []

KINDS = {"launch": r"LaunchKernel|LaunchCooperative", "record": r"EventRecord", "wait": r"StreamWaitEvent",
         "memset": r"Memset", "memcpy": r"Memcpy", "graph": r"GraphLaunch"}  # CUDA API call kinds
PER_CALL = {"launch": "empty kernel launch", "record": "event record", "memset": "memset 4 B",
            "memcpy": "copy 4 KiB h2d pinned", "graph": "graph replay, k=1"}
FRAMES = Path("data") / "aoi" / "val" / "images"

from gpu_input import frames_at  # noqa: E402  (bench/, on the path above)


def api_profile(step, n: int) -> dict:
    """CUDA API calls a step by kind, and host-to-device memcpy bytes the GPU ran a step (CUPTI through kineto)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(i)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(f"{d}/trace.json")
        events = json.loads(Path(f"{d}/trace.json").read_text()).get("traceEvents", [])
    kinds, gpu, h2d = Counter(), Counter(), 0
    for e in events:
        cat, name = e.get("cat", ""), e.get("name", "")
        if cat in ("cuda_runtime", "cuda_driver"):
            kinds.update(k for k, rx in KINDS.items() if re.search(rx, name))
        elif cat in ("gpu_memcpy", "gpu_memset", "kernel"):
            gpu[cat + ("_h2d" if "HtoD" in name else "")] += 1
            h2d += int((e.get("args") or {}).get("bytes", 0)) if "HtoD" in name else 0
    return {"kinds": dict(kinds), "gpu": dict(gpu), "h2d_memcpy_bytes": h2d / n}


class Probe:
    def __init__(self, args):
        import gpu_limit as gl
        import torch

        self.args, self.gl, self.torch, self.pcie = args, gl, torch, gl.Pcie()
        if self.pcie.handle is None:
            raise SystemExit(self.pcie.why)
        self.data = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                     "command": "python " + " ".join(sys.argv), "env": gl.versions(), "rows": []}
        self.idle_rx, self.idle_tx, self.factor = 0.0, 0.0, 1.0

    def save(self):
        (self.args.out / "pcie_why.json").write_text(json.dumps(self.data, indent=1))

    def block(self, fn):
        with self.pcie.block() as b:
            fn()
        return b.result

    def measure(self, group, case, step, ops=1.0, sync_every=256, prof_n=8, **extra):
        """Run step(i) ~seconds long; RX/TX per op (idle out, calibrated); the API profile of prof_n steps."""
        torch = self.torch
        try:
            for i in range(8):
                if i == 3:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                step(i)
            torch.cuda.synchronize()
            n = max(10, int(self.args.seconds / max((time.perf_counter() - t0) / 5, 1e-7)))

            def loop():
                for i in range(n):
                    step(i)
                    if i % sync_every == sync_every - 1:
                        torch.cuda.synchronize()
                torch.cuda.synchronize()
            r = self.block(loop)
            rx = (r["rx_sampled"] - self.idle_rx * r["seconds"]) / self.factor
            tx = r["tx_sampled"] - self.idle_tx * r["seconds"]
            row = {"group": group, "case": case, "steps": n, "ops_per_step": ops, "seconds": round(r["seconds"], 3),
                   "samples": r.get("samples"), "rx_per_op": round(rx / (n * ops), 1),
                   "tx_per_op": round(tx / (n * ops), 1), "ops_per_s": round(n * ops / r["seconds"]),
                   "rx_mb_s": round(rx / r["seconds"] / 1e6, 3), **extra}
            if prof_n:
                p = api_profile(step, prof_n)
                row.update({k: {a: round(b / prof_n / ops, 3) for a, b in p[k].items()} for k in ("kinds", "gpu")},
                           h2d_memcpy_bytes=round(p["h2d_memcpy_bytes"] / ops))
        except Exception as e:  # a decoder missing on the machine, a driver refusal: recorded, the run goes on
            row = {"group": group, "case": case, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(row), flush=True)
        self.data["rows"].append(row)
        self.save()
        return row

    def baseline(self):
        torch = self.torch
        r = self.block(lambda: time.sleep(1.5))
        self.idle_rx, self.idle_tx = r["rx_sampled"] / r["seconds"], r["tx_sampled"] / r["seconds"]
        host = torch.empty(64 << 20, dtype=torch.uint8).pin_memory()
        dev = torch.empty_like(host, device="cuda")
        m = self.measure("calibration", "h2d pinned 64 MiB (RX bytes over bytes copied)",
                         lambda i: dev.copy_(host, non_blocking=True), ops=float(64 << 20), prof_n=0)
        self.factor = m["rx_mb_s"] * 1e6 / m["ops_per_s"]
        self.data.update(idle_rx_bytes_s=round(self.idle_rx), idle_tx_bytes_s=round(self.idle_tx), factor=self.factor)
        a = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        b, x = torch.empty_like(a), torch.randn(4096, 4096, device="cuda", dtype=torch.half)
        self.measure("control", "d2d copy 256 MiB (device memory only)", lambda i: b.copy_(a), prof_n=2)
        self.measure("control", "fp16 matmul 4096^3 (SMs only)", lambda i: x @ x, prof_n=2)

    def calls(self):
        torch = self.torch
        s1, s2, ev = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Event()
        ts, buf, x = [torch.zeros(1, device="cuda") for _ in range(100)], torch.zeros(1024, device="cuda"), torch.zeros(1, device="cuda")
        hp, dp = torch.empty(4096, dtype=torch.uint8).pin_memory(), torch.empty(4096, dtype=torch.uint8, device="cuda")
        ms = ctypes.CDLL("libcudart.so.13").cudaMemsetAsync  # torch 2.11 + cu130's runtime, loaded already
        ms.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
        self.measure("call", "empty kernel launch", lambda i: torch.cuda._sleep(0))
        self.measure("call", "kernel launch, ~3.4 KB parameters", lambda i: torch._foreach_add_(ts, 1.0))
        self.measure("call", "event record", lambda i: ev.record(s1))
        self.measure("call", "event record + stream wait (event done)", lambda i: (ev.record(s1), s2.wait_event(ev)))
        self.measure("call", "memset 4 B", lambda i: ms(buf.data_ptr(), 0, 4, torch.cuda.current_stream().cuda_stream))
        self.measure("call", "copy 4 KiB h2d pinned", lambda i: dp.copy_(hp, non_blocking=True))
        for k in (1, 16, 128):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                [x.add_(1) for _ in range(k)]
            self.measure("call", f"graph replay, k={k}", lambda i, g=g: g.replay(), nodes=k)

        def pend(i, wait=True):  # another stream left waiting ~1 ms on a pending event (compute to compute)
            with torch.cuda.stream(s1):
                torch.cuda._sleep(1_700_000)  # ~1 ms at the H100's ~1.7 GHz (the row's steps/s says how long)
                ev.record(s1)
            s2.wait_event(ev) if wait else None
            with torch.cuda.stream(s2):
                torch.cuda._sleep(0)
        self.measure("wait", "1 ms kernel + record; other stream waits on it + empty kernel", pend, 1, 8, 4)
        self.measure("wait", "same, no wait", lambda i: pend(i, False), 1, 8, 4)

    def decoders(self):
        import cv2

        torch, gl = self.torch, self.gl
        sets = {"native q-orig": frames_at(Path.cwd() / FRAMES, 8, None)} | {
            f"{w}x{h} q{q}": frames_at(Path.cwd() / FRAMES, 8, (w, h), q)
            for w, h, q in ((320, 240, 80), (1920, 1080, 80), (1920, 1080, 50), (1920, 1080, 95))}
        shape = {k: cv2.imdecode(np.frombuffer(v[0], np.uint8), cv2.IMREAD_COLOR).shape[:2] for k, v in sets.items()}
        pres = {"HW": gl.NvImgCodec(640, "HW_GPU_ONLY"), "tv": gl.TorchvisionNvjpeg(640),
                "hybrid": gl.NvImgCodec(640, "HYBRID_CPU_GPU")}
        nat, hd = "native q-orig", "1920x1080 q80"
        plan = [(d, s, 1, "decode") for s in sets for d in ("HW", "tv")]
        plan += [(d, s, 32, "decode") for s in (nat, hd) for d in ("HW", "tv", "hybrid")]
        plan += [(d, s, b, "stage") for b in (32, 4) for s in (nat, hd) for d in ("HW", "tv")] + [
            ("hybrid", s, 1, "decode") for s in (nat, hd)]
        plan += [(d, s, 32, "decode") for s in ("320x240 q80", "1920x1080 q50", "1920x1080 q95") for d in ("HW", "tv")]
        dst = {b: torch.empty((4, b, 3, 640, 640), dtype=torch.uint8, device="cuda") for b in (4, 32)}
        for d, s, b, mode in plan:
            pre, jp = pres[d], sets[s]
            f = [jp[0]] if b == 1 else [jp[j % len(jp)] for j in range(b)]
            step = ((lambda i, pre=pre, f=f: pre.decode(f)) if mode == "decode" else
                    (lambda i, pre=pre, f=f, o=dst[b]: pre.stage(f, i % 4, o[i % 4])))
            self.measure("decode", f"{pre.name} {mode} b{b} {s}", step, float(b), 4 if b > 1 else 64, 6, decoder=d,
                         images=s, batch=b, mode=mode, height=shape[s][0], width=shape[s][1],
                         bitstream_bytes=round(sum(len(x) for x in f) / b))

    def poll(self):
        """NVJPG b1, then work that waits for it on the GPU (same stream; k streams by event), after a host sync, or not."""
        torch, gl = self.torch, self.gl
        hw = gl.NvImgCodec(640, "HW_GPU_ONLY").decoder
        cur, side, ev, keep = torch.cuda.current_stream(), [torch.cuda.Stream() for _ in range(4)], torch.cuda.Event(), {}
        for name, wh in (("1920x1080 q80", (1920, 1080)), ("320x240 q80", (320, 240))):
            jp = frames_at(Path.cwd() / FRAMES, 2, wh, 80)

            def step(i, mode, k=1, jp=jp):
                keep[i % 2] = hw.decode([jp[0]], cuda_stream=cur.cuda_stream)
                if "host sync" in mode:
                    torch.cuda.synchronize()
                if "wait on it" in mode:
                    ev.record(cur)
                for s in [] if mode == "nothing after" else side[:k] if "other stream" in mode or "wait" in mode else [cur]:
                    if "wait on it" in mode:
                        s.wait_event(ev)
                    with torch.cuda.stream(s):
                        torch.cuda._sleep(0)
            modes = ["nothing after", "kernel after it, same stream", "host sync, then kernel",
                     "kernel on another stream, no wait", "k streams wait on it, k=1", "k streams wait on it, k=4"]
            for mode in modes if name == "1920x1080 q80" else modes[:2]:
                self.measure("poll", f"NVJPG b1 {name}: {mode}", lambda i, m=mode: step(i, m, 4 if "k=4" in m else 1),
                             mode=mode, height=wh[1], width=wh[0], images=name, bitstream_bytes=len(jp[0]), batch=1)

    def run(self):
        self.baseline()
        if self.args.part == "all":
            self.calls()
            self.decoders()
        self.poll()
        self.data["idle_rx_bytes_s_end"] = round((r := self.block(lambda: time.sleep(1.0)))["rx_sampled"] / r["seconds"])
        self.save()
        return self.data


# ----------------------------------------------------------------------------------------------- markdown

def rescaled(data: dict) -> list[dict]:
    """Rows over the exact calibration factor (runs before commit 6b1b501 divided by it rounded to 0.1)."""
    c = data["rows"][0]
    k = data.get("factor", 1.0) / (c["rx_mb_s"] * 1e6 / c["ops_per_s"])
    return [r if r is c else dict(r, **{x: round(r[x] * k, 1) for x in ("rx_per_op", "rx_mb_s") if x in r})
            for r in data["rows"]]


def per_call_bytes(rows: list[dict]) -> dict:
    """Bytes a call by kind from the 'call' rows (a stream wait: record + wait less record; a copy: over 4 KiB)."""
    by = {r["case"]: r.get("rx_per_op") for r in reversed(rows)}  # the first run's where several have them
    out = {k: by.get(c) for k, c in PER_CALL.items()}
    rw, rec, cp = by.get("event record + stream wait (event done)"), out["record"], out["memcpy"]
    return dict(out, wait=None if rw is None or rec is None else round(rw - rec, 1), memcpy=cp and round(cp - 4096, 1))


def table(head: list[str], rows: list[list]) -> list[str]:
    f = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 else "" if v is None else str(v)  # noqa: E731
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(f, r)) + " |" for r in rows]


def render(runs: list[tuple[str, dict]], old: str = "") -> str:
    """One markdown for several runs' json; the bytes a call come from the run that measured them."""
    rows = {name: rescaled(d) for name, d in runs}
    pc, e = per_call_bytes([r for rs in rows.values() for r in rs if r["group"] == "call"]), runs[0][1]["env"]
    out = [f"# What NVML's extra PCIe receive bytes are (issue 25) ({e.get('gpu')}, driver {e.get('driver')})", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in e.items() if k != "gpu") + ".", "",
           "Runs (json and log in gpu_pcie_why/; the wheels travel as for bench/gpu_limit.py, bench/gpu_carry.sh):", ""]
    out += [f"- {n}: {d['date']}, `{d['command']}`" for n, d in runs]
    out += ["", "Method: NVML receive bytes from 20 ms `nvmlDeviceGetPcieThroughput` samples (gpu_limit.Pcie), the "
            "idle rate (0.5-0.7 MB/s) subtracted, over the run's factor for large pinned host-to-device copies "
            "(1.02-1.09). Per op: a call, a step, or an image (decoders). API calls by kind and host-to-device "
            "memcpy bytes: torch.profiler (CUPTI) over a few steps of the same work. explained = those memcpy bytes "
            "+ API calls x the bytes a call (" + ", ".join(f"{k} {v}" for k, v in pc.items()) + ")."]
    for name, rs in rows.items():
        body = []
        for r in (r for r in rs if "ops_per_s" in r and r["group"] != "contention"):
            ex = r.get("h2d_memcpy_bytes", 0) + sum(r.get("kinds", {}).get(k, 0) * (pc.get(k) or 0) for k in KINDS)
            dec, px = "bitstream_bytes" in r, r.get("height", 0) * r.get("width", 0)
            body.append([r["case"], r["ops_per_s"], r.get("bitstream_bytes"), r["rx_per_op"], r.get("tx_per_op"),
                         r.get("h2d_memcpy_bytes"), " ".join(f"{a}:{b}" for a, b in r.get("kinds", {}).items()),
                         round(ex) if dec else None, round(r["rx_per_op"] / ex, 2) if dec and ex > 0 else None,
                         round((r["rx_per_op"] - ex) / px, 3) if dec and px else None])
        out += ["", f"## {name}", ""] + table(
            ["block", "ops/s", "JPEG bytes", "NVML RX bytes/op", "TX bytes/op", "h2d memcpy (CUPTI)", "API calls/op",
             "explained", "NVML / explained", "(NVML - explained)/pixel"], body)
    keep = old.split("\n## Reading", 1)
    return "\n".join(out) + "\n" + ("\n## Reading" + keep[1] if len(keep) == 2 else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--part", default="all", choices=["all", "poll"], help="poll: the GPU-side-wait blocks alone")
    ap.add_argument("--seconds", type=float, default=0.8, help="a measured block's length")
    ap.add_argument("--render", nargs="+", help="NAME=pcie_why.json ... to render (no GPU)")
    ap.add_argument("--md", type=Path, default=Path("gpu_pcie_why.md"), help="with --render; its '## Reading' is kept")
    args = ap.parse_args()
    if args.render:
        runs = [(r.rsplit("=", 1)[0], json.loads(Path(r.rsplit("=", 1)[-1]).read_text())) for r in args.render]
        args.md.write_text(render(runs, args.md.read_text() if args.md.is_file() else ""))
        return 0
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # as gpu_limit.py (before CUDA starts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_pcie_why.md").write_text(render([("run", Probe(args).run())]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
