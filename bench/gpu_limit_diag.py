"""Why is decode + inference serial at 1080p batch 32? (issue 25) A focused diagnostic beside bench/gpu_limit.py.

    python bench/gpu_limit_diag.py [--res 1920x1080] [--batch 32] [--paths hw,tv] [--seconds 1.0] [--out DIR]

For each decode path, at one resolution and batch:
  alone       the model's graph replays alone; the decode stream's work (decode + letterbox) alone;
  free-run    both at once with no dependency between them (two host threads, two streams): each one's rate
              against its rate alone says whether the GPU (SMs, memory, engines) or the host lets them overlap;
  gil         a pure-Python counter thread's rate while the decode loop runs, over its rate idle: how much of the
              time the decoder call holds the GIL;
  pipeline    bench/gpu_limit.run_overlapped's loop with CUDA timing events on each stream and host timestamps a
              batch: the model's GPU time inside the pipeline (against alone), the inference stream's idle gaps,
              the decode stream's GPU time, the host time of the decoder call.
Writes diag.json and prints one line a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for _p in (Path.cwd() / "src", HERE.parent / "src"):
    if (_p / "yolo_compile").is_dir() and str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
sys.path.insert(0, str(HERE))

import gpu_limit as gl  # noqa: E402


def rate_loop(step, seconds: float, sync_every: int = 1) -> tuple[int, float]:
    import torch

    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(n)
        n += 1
        if n % sync_every == 0:
            torch.cuda.current_stream().synchronize()
    torch.cuda.current_stream().synchronize()
    return n, time.perf_counter() - t0


def free_run(model, pre, batches, seconds, pri):
    """Model replays and decode-stream work at once, independent; returns each one's frames/s."""
    import torch

    s_inf, s_dec = torch.cuda.Stream(priority=pri), torch.cuda.Stream()
    res = {}

    def dec():
        with torch.cuda.stream(s_dec):
            res["dec"] = rate_loop(lambda i: pre.stage(batches[i % len(batches)], i % gl.SLOTS, model.inp[(i % 2) + 2]),
                                   seconds, 1)

    def inf():
        with torch.cuda.stream(s_inf):
            res["inf"] = rate_loop(lambda i: model.replay(i % 2), seconds, 2)

    ts = [threading.Thread(target=f) for f in (dec, inf)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    b = model.batch
    return {k: b * v[0] / v[1] for k, v in res.items()}


def free_run_step(model, step, seconds, pri, sync_every=1):
    """step(i) on its own stream in a thread while the model replays on another; returns (steps/s, model frames/s)."""
    import torch

    s_inf, s_dec = torch.cuda.Stream(priority=pri), torch.cuda.Stream()
    res = {}

    def dec():
        with torch.cuda.stream(s_dec):
            res["dec"] = rate_loop(step, seconds, sync_every)

    def inf():
        with torch.cuda.stream(s_inf):
            res["inf"] = rate_loop(lambda i: model.replay(i % 2), seconds, 2)

    ts = [threading.Thread(target=f) for f in (dec, inf)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with torch.cuda.stream(s_dec):
        alone = rate_loop(step, seconds / 2, sync_every)
    return {"step_alone_per_s": alone[0] / alone[1], "step_with_model_per_s": res["dec"][0] / res["dec"][1],
            "model_fps_with_step": model.batch * res["inf"][0] / res["inf"][1]}


def set_pool_release_threshold(value: int = (1 << 64) - 1) -> str:
    """The device's default stream-ordered memory pool keeps freed memory (threshold), instead of unmapping at syncs."""
    import ctypes

    cu = ctypes.CDLL("libcuda.so.1")
    pool = ctypes.c_void_p()
    r1 = cu.cuDeviceGetDefaultMemPool(ctypes.byref(pool), 0)
    v = ctypes.c_uint64(value)
    r2 = cu.cuMemPoolSetAttribute(pool, 4, ctypes.byref(v))  # CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
    return f"cuDeviceGetDefaultMemPool {r1}, cuMemPoolSetAttribute {r2}"


def profile_tables(fn, top=14) -> str:
    """Kernel/copy GPU time and CUDA API host time of fn() under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    ka = prof.key_averages()
    dev = sorted([e for e in ka if getattr(e, "device_time_total", 0) > 0], key=lambda e: -e.device_time_total)
    api = sorted([e for e in ka if e.key.startswith(("cuda", "cu"))], key=lambda e: -e.cpu_time_total)
    lines = ["GPU time (us total, count):"] + [f"  {e.key[:70]:70s} {e.device_time_total:10.0f} {e.count:6d}"
                                           for e in dev[:top]]
    lines += ["API host time (us total, count, max us):"] + [
        f"  {e.key[:60]:60s} {e.cpu_time_total:10.0f} {e.count:6d} {getattr(e, 'cpu_time_max', 0) or 0:8.0f}" for e in api[:top]]
    return "\n".join(lines)


def probe(args, model, batches, out):
    """Which part of the decode stream the running model slows down, and what the decode thread waits on."""
    import torch

    from gpu_letterbox import letterbox

    b = model.batch
    res = {}
    hw = gl.NvImgCodec(640, "HW_GPU_ONLY")
    tv = gl.TorchvisionNvjpeg(640)
    sec = args.seconds
    # pure GPU work on another stream: the fused letterbox from a fixed decoded batch; a device copy
    src = hw.decode(batches[0])[0][0].clone()
    torch.cuda.synchronize()
    steps = {
        "letterbox kernel only": lambda i: letterbox(src, model.inp[2 + i % 2], "NHWC"),
        "d2d copy 200MB": lambda i: src.view(-1)[: src.numel() // 2].copy_(src.view(-1)[src.numel() // 2:]),
        "hw decode() only": lambda i: hw.decode(batches[i % len(batches)]),
        "hw stage": lambda i: hw.stage(batches[i % len(batches)], i % gl.SLOTS, model.inp[2 + i % 2]),
        "tv decode() only": lambda i: tv.decode(batches[i % len(batches)]),
    }
    for name, st in steps.items():
        rate_loop(st, 0.2)
        r = free_run_step(model, st, sec, -1)
        res[name] = r
        print(name, json.dumps(r), flush=True)
    # what the decode thread's API calls wait on, free-running beside the model
    def fr():
        free_run_step(model, steps["hw decode() only"], 0.5, -1)
    res["profile_hw_decode_alone"] = profile_tables(lambda: rate_loop(steps["hw decode() only"], 0.5))
    res["profile_hw_decode_free_run"] = profile_tables(fr)
    res["profile_tv_decode_alone"] = profile_tables(lambda: rate_loop(steps["tv decode() only"], 0.5))
    print(res["profile_hw_decode_alone"], "\n", res["profile_hw_decode_free_run"], "\n", res["profile_tv_decode_alone"], flush=True)
    # the default pool keeps its memory (no unmap at each sync); then images= reuse
    res["pool"] = set_pool_release_threshold()
    for name in ("hw decode() only", "hw stage"):
        rate_loop(steps[name], 0.2)
        r = free_run_step(model, steps[name], sec, -1)
        res[name + " (pool keeps memory)"] = r
        print(name, "(pool keeps memory)", json.dumps(r), flush=True)
    out["probe"] = res


def probe2(args, model, batches, out):
    """Round trips and pageable copies beside the running model; decoders fed from pinned host memory; a trace."""
    import gzip

    import torch

    b = model.batch
    res = {}
    hw = gl.NvImgCodec(640, "HW_GPU_ONLY")
    tv = gl.TorchvisionNvjpeg(640)
    sec = args.seconds
    nbytes = len(batches[0][0])
    pageable = [torch.randint(0, 255, (nbytes,), dtype=torch.uint8) for _ in range(b)]
    pinned = [t.pin_memory() for t in pageable]
    dst = torch.empty((b, nbytes), dtype=torch.uint8, device="cuda")
    tiny = torch.zeros(1024, device="cuda")
    pin_batches = [[torch.frombuffer(bytearray(f), dtype=torch.uint8).pin_memory() for f in fr] for fr in batches]
    np_batches = [[t.numpy() for t in fr] for fr in pin_batches]

    def copies(src):
        def step(i):
            for k in range(b):
                dst[k].copy_(src[k], non_blocking=True)
        return step

    def round_trips(i):
        for k in range(b):
            tiny.add_(1.0)
            torch.cuda.current_stream().synchronize()

    def hw_pinned(i):
        return hw.decoder.decode(np_batches[i % len(np_batches)], cuda_stream=torch.cuda.current_stream().cuda_stream)

    def tv_pinned(i):
        from torchvision.io import decode_jpeg

        return decode_jpeg(pin_batches[i % len(pin_batches)], device="cuda")

    steps = {"32 pageable H2D copies": copies(pageable), "32 pinned H2D copies": copies(pinned),
             "32 round trips (tiny kernel + sync)": round_trips,
             "hw decode() pageable bytes": lambda i: hw.decode(batches[i % len(batches)]),
             "hw decode() pinned numpy": hw_pinned,
             "tv decode() pageable": lambda i: tv.decode(batches[i % len(batches)]),
             "tv decode() pinned": tv_pinned}
    for name, st in steps.items():
        try:
            rate_loop(st, 0.2)
            r = free_run_step(model, st, sec, -1)
            r["slowdown"] = r["step_alone_per_s"] / r["step_with_model_per_s"]
        except Exception as e:
            r = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        res[name] = r
        print(name, json.dumps(r), flush=True)
    for name in ("hw decode() pageable bytes", "hw decode() pinned numpy"):
        try:
            res["profile " + name] = profile_tables(lambda: rate_loop(steps[name], 0.3))
            print(res["profile " + name], flush=True)
        except Exception as e:
            print("profile failed", name, e)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        free_run_step(model, steps["hw decode() pageable bytes"], 0.25, -1)
    tr = args.out / "trace_hw_free_run.json"
    args.out.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(tr))
    with open(tr, "rb") as f, gzip.open(str(tr) + ".gz", "wb") as g:
        g.write(f.read())
    tr.unlink()
    out["probe2"] = res


def gil_share(pre, model, batches, seconds):
    """A Python counter's rate while the decode loop runs, over its rate alone."""
    import torch

    def count(stop, out):
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    def spin(with_decode):
        stop, out = threading.Event(), []
        t = threading.Thread(target=count, args=(stop, out))
        t0 = time.perf_counter()
        t.start()
        if with_decode:
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                rate_loop(lambda i: pre.stage(batches[i % len(batches)], i % gl.SLOTS, model.inp[i % gl.SLOTS]), seconds)
        else:
            time.sleep(seconds)
        stop.set()
        t.join()
        return out[0] / (time.perf_counter() - t0)

    idle = spin(False)
    busy = spin(True)
    return {"counter_idle_per_s": idle, "counter_during_decode_per_s": busy, "ratio": busy / idle}


def pipeline_timeline(model, pre, batches, slots, streams):
    """run_overlapped's loop with timing events a batch on the decode and inference streams, host times too."""
    import queue

    import torch

    from yolo_compile.gpu.frames import torch_nms as nms

    s_dec, s_inf, s_post = streams
    n = len(batches)
    E = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    ev_pre = [torch.cuda.Event() for _ in range(slots)]
    ev_inf = [torch.cuda.Event() for _ in range(slots)]
    g = {k: [E() for _ in range(n)] for k in ("dec0", "dec1", "inf0", "inf1")}
    h = {k: [0.0] * n for k in ("dec_call0", "dec_call1", "inf_launch", "post_done")}
    inferred = [threading.Event() for _ in range(n)]
    posted = [threading.Event() for _ in range(n)]
    to_infer, to_post = queue.Queue(), queue.Queue()
    base = E()

    def decode():
        for i in range(n):
            k = i % slots
            if i >= slots:
                inferred[i - slots].wait()
            with torch.cuda.stream(s_dec):
                s_dec.wait_event(ev_inf[k])
                g["dec0"][i].record(s_dec)
                h["dec_call0"][i] = time.perf_counter()
                pre.stage(batches[i], k, model.inp[k])
                h["dec_call1"][i] = time.perf_counter()
                g["dec1"][i].record(s_dec)
                ev_pre[k].record(s_dec)
            to_infer.put(i)

    def post():
        for _ in range(n):
            i = to_post.get()
            k = i % slots
            with torch.cuda.stream(s_post):
                s_post.wait_event(ev_inf[k])
                nms(model.out[k])
            h["post_done"][i] = time.perf_counter()
            posted[i].set()

    torch.cuda.synchronize()
    base.record()
    t_all = time.perf_counter()
    ths = [threading.Thread(target=f, daemon=True) for f in (decode, post)]
    for t in ths:
        t.start()
    for _ in range(n):
        i = to_infer.get()
        k = i % slots
        if i >= slots:
            posted[i - slots].wait()
        with torch.cuda.stream(s_inf):
            s_inf.wait_event(ev_pre[k])
            g["inf0"][i].record(s_inf)
            h["inf_launch"][i] = time.perf_counter()
            model.replay(k)
            g["inf1"][i].record(s_inf)
            ev_inf[k].record(s_inf)
        inferred[i].set()
        to_post.put(i)
    for t in ths:
        t.join()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t_all
    t = {k: np.array([base.elapsed_time(e) for e in v]) for k, v in g.items()}
    hh = {k: (np.array(v) - t_all) * 1e3 for k, v in h.items()}
    sl = slice(slots, n)  # steady state
    model_ms = (t["inf1"] - t["inf0"])[sl]
    gaps = (t["inf0"][1:] - t["inf1"][:-1])[slots - 1:]
    dec_ms = (t["dec1"] - t["dec0"])[sl]
    out = {"frames_per_s": n * model.batch / wall, "batches": n,
           "model_gpu_ms_median": float(np.median(model_ms)), "model_gpu_ms_mean": float(np.mean(model_ms)),
           "infer_idle_gap_ms_median": float(np.median(gaps)), "infer_idle_gap_ms_mean": float(np.mean(gaps)),
           "decode_gpu_ms_median": float(np.median(dec_ms)),
           "decode_host_call_ms_median": float(np.median((hh["dec_call1"] - hh["dec_call0"])[sl])),
           "period_ms": float(np.median(np.diff(t["inf1"])[slots:])),
           # how far decode of i ran ahead of inference of i (host: call end -> graph launch)
           "host_dec_end_to_launch_ms_median": float(np.median((hh["inf_launch"] - hh["dec_call1"])[sl])),
           "gpu_dec_end_to_inf_start_ms_median": float(np.median((t["inf0"] - t["dec1"])[sl]))}
    tl = [{"i": i, **{k: round(float(t[k][i]), 3) for k in t}, **{k: round(float(hh[k][i]), 3) for k in hh}}
          for i in range(n)]
    return out, tl


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", default="1920x1080")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--paths", default="hw,tv")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--priorities", default="-1,0")
    ap.add_argument("--probe", action="store_true", help="which part of decode the model slows, and why")
    ap.add_argument("--probe2", action="store_true", help="round trips, pageable copies, pinned decoder input")
    ap.add_argument("--out", type=Path, default=Path("/tmp/diag"))
    args = ap.parse_args()
    import torch

    from gpu_input import frames_at
    from yolo_compile.runtimes import pytorch

    root = next((p for p in (Path.cwd(), HERE.parent) if (p / "models").is_dir()), Path.cwd())
    net = pytorch.load_torch_detector(root / "models" / "aoi_yolov8n.pt", "cuda", half=True)
    size_wh = None if args.res == "native" else tuple(int(x) for x in args.res.split("x"))
    jpegs = frames_at(root / "data" / "aoi" / "val" / "images", 64, size_wh)
    b = args.batch
    batches = gl.make_batches(jpegs, b, 16)
    model = gl.Model(net, b, 640, gl.SLOTS)
    out = {"gpu": torch.cuda.get_device_name(0), "res": args.res, "batch": b, "paths": {}}
    s = torch.cuda.Stream(priority=-1)
    with torch.cuda.stream(s):
        gl.timed(lambda i: model.replay(i % gl.SLOTS), 0.3)
        r = gl.timed(lambda i: model.replay(i % gl.SLOTS), args.seconds)
    out["model_alone_fps"] = b * r["iters"] / r["seconds"]
    print(json.dumps(out), flush=True)
    makers = {"hw": lambda: gl.NvImgCodec(640, "HW_GPU_ONLY"), "tv": lambda: gl.TorchvisionNvjpeg(640),
              "hybrid": lambda: gl.NvImgCodec(640, "HYBRID_CPU_GPU")}
    if args.probe or args.probe2:
        (probe2 if args.probe2 else probe)(args, model, batches, out)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "diag.json").write_text(json.dumps(out, indent=1))
        return 0
    for key in args.paths.split(","):
        pre = makers[key]()
        res = {"name": pre.name}
        sd = torch.cuda.Stream()
        with torch.cuda.stream(sd):
            gl.timed(lambda i: pre.stage(batches[i % 16], i % gl.SLOTS, model.inp[i % gl.SLOTS]), 0.3)
            r = gl.timed(lambda i: pre.stage(batches[i % 16], i % gl.SLOTS, model.inp[i % gl.SLOTS]), args.seconds)
            res["decode_stream_alone_fps"] = b * r["iters"] / r["seconds"]
            r = gl.timed(lambda i: pre.decode(batches[i % 16]), args.seconds)
            res["decode_only_alone_fps"] = b * r["iters"] / r["seconds"]
        print(json.dumps(res), flush=True)
        res["gil"] = gil_share(pre, model, batches, args.seconds)
        print(json.dumps(res["gil"]), flush=True)
        for pri in [int(p) for p in args.priorities.split(",")]:
            fr = free_run(model, pre, batches, args.seconds, pri)
            fr["sum_of_fractions"] = fr["dec"] / res["decode_stream_alone_fps"] + fr["inf"] / out["model_alone_fps"]
            res[f"free_run_pri{pri}"] = fr
            print(f"free-run pri {pri}: " + json.dumps(fr), flush=True)
            streams = (torch.cuda.Stream(), torch.cuda.Stream(priority=pri), torch.cuda.Stream())
            pipeline_timeline(model, pre, gl.make_batches(jpegs, b, 8), gl.SLOTS, streams)
            nb = max(12, int(args.seconds * 3000 / b))
            pl, tl = pipeline_timeline(model, pre, gl.make_batches(jpegs, b, nb), gl.SLOTS, streams)
            pl["e2e_over_limit"] = pl["frames_per_s"] / min(res["decode_stream_alone_fps"], out["model_alone_fps"])
            res[f"pipeline_pri{pri}"] = pl
            res[f"timeline_pri{pri}"] = tl[:40]
            print(f"pipeline pri {pri}: " + json.dumps(pl), flush=True)
        out["paths"][key] = res
        pre.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diag.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
