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
