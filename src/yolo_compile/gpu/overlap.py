"""The 3-stream ring that overlaps decode, inference and NMS on one GPU, and the setting it needs to overlap at all.

`run_ring` is the loop both the throughput stage (`frames.GpuPipeline`) and `bench/gpu_limit.py` use: decode of batch
i+1.. on one stream and host thread, inference of batch i on another (this thread), NMS of batch i-1.. on a third
thread and stream; events order the streams and a ring of slots is reused only once its users are done. It also says
where the time went: the graph's GPU time a batch inside the pipeline, the inference stream's idle gaps, the decode
call's host time.

`widen_hardware_queues` sets CUDA_DEVICE_MAX_CONNECTIONS before CUDA starts. CUDA maps streams onto that many hardware
work queues (8 by default); nvJPEG's decoders run streams of their own (14 for the hardware decoder), so with 8 some
share a queue with the inference stream and wait behind a whole graph replay. Measured on a lent H100 (1080p JPEGs,
batch 32, docs/bandwidth/gpu_limit-why.md): decode + inference 2,834 frames/s with 8 queues (serial), 4,346 with 32.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Callable

import numpy as np

QUEUES_VAR = "CUDA_DEVICE_MAX_CONNECTIONS"


def widen_hardware_queues(n: int = 32) -> str:
    """Set CUDA_DEVICE_MAX_CONNECTIONS to n unless set or CUDA already started; return the value that holds, and why."""
    if QUEUES_VAR in os.environ:
        return os.environ[QUEUES_VAR]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return f"8 (driver default: CUDA had started before {QUEUES_VAR} could be set; set it in the environment)"
    os.environ[QUEUES_VAR] = str(n)
    return str(n)


def run_ring(n: int, slots: int, batch: int, stage: Callable[[int, int], None], infer: Callable[[int, int], None],
             post: Callable[[int, int], None], streams: tuple) -> dict:
    """Run n batches through stage(i, slot) / infer(i, slot) / post(i, slot) overlapped; return rates and where time went.

    stage enqueues batch i's decode into the slot on the current (decode) stream, infer enqueues the model on the
    current (inference) stream, post runs NMS on the current (post) stream and may block. Decode of batch i waits until
    inference of batch i-slots is enqueued (its event recorded); inference of batch i until NMS of batch i-slots has
    finished (the slot's output is free). An exception on any thread is raised here.
    """
    import torch

    s_dec, s_inf, s_post = streams
    ev_pre = [torch.cuda.Event() for _ in range(slots)]
    ev_inf = [torch.cuda.Event() for _ in range(slots)]
    t_inf = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    started, lat, dec_call = [0.0] * n, [0.0] * n, [0.0] * n
    inferred = [threading.Event() for _ in range(n)]  # ev_inf of batch i recorded
    posted = [threading.Event() for _ in range(n)]  # NMS of batch i finished
    to_infer, to_post, errors = queue.Queue(), queue.Queue(), []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # re-raised on the calling thread below
                errors.append(e)
                for ev in inferred + posted:
                    ev.set()
                to_infer.put(None)
                to_post.put(None)
        return run

    def decode():
        for i in range(n):
            k = i % slots
            if i >= slots:
                inferred[i - slots].wait()
            if errors:
                return
            started[i] = time.perf_counter()
            with torch.cuda.stream(s_dec):
                s_dec.wait_event(ev_inf[k])  # inference of batch i-slots has read this slot
                stage(i, k)
                ev_pre[k].record(s_dec)
            dec_call[i] = time.perf_counter() - started[i]
            to_infer.put(i)

    def nms():
        for _ in range(n):
            i = to_post.get()
            if i is None or errors:
                return
            k = i % slots
            with torch.cuda.stream(s_post):
                s_post.wait_event(ev_inf[k])
                post(i, k)
                s_post.synchronize()
            lat[i] = time.perf_counter() - started[i]
            posted[i].set()

    torch.cuda.synchronize()
    t_all = time.perf_counter()
    threads = [threading.Thread(target=guarded(f), daemon=True) for f in (decode, nms)]
    for t in threads:
        t.start()
    for _ in range(n):
        i = to_infer.get()
        if i is None or errors:
            break
        k = i % slots
        if i >= slots:
            posted[i - slots].wait()
        with torch.cuda.stream(s_inf):
            s_inf.wait_event(ev_pre[k])
            t_inf[i][0].record(s_inf)
            infer(i, k)
            t_inf[i][1].record(s_inf)
            ev_inf[k].record(s_inf)
        inferred[i].set()
        to_post.put(i)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    torch.cuda.synchronize()
    wall = time.perf_counter() - t_all
    a = np.asarray(lat) * 1e3
    steady = range(min(slots, n - 1), n)  # the ring full
    graph_ms = [t_inf[i][0].elapsed_time(t_inf[i][1]) for i in steady]
    idle_ms = [t_inf[i - 1][1].elapsed_time(t_inf[i][0]) for i in steady if i > 0]
    return {"frames_per_s": n * batch / wall, "batch_latency_p50_ms": float(np.percentile(a, 50)),
            "batch_latency_p99_ms": float(np.percentile(a, 99)), "seconds": wall, "batches": n,
            "model_ms_in_e2e": float(np.median(graph_ms)), "infer_idle_ms": float(np.median(idle_ms)) if idle_ms else 0.0,
            "decode_call_ms": float(np.median([dec_call[i] for i in steady])) * 1e3}
