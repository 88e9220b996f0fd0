"""What speed rows say: INT8 against FP32 on each CPU runtime (and the CPU's INT8 support), GPU gains, tables."""

from __future__ import annotations

from yolo_compile import runs
from yolo_compile.runtimes.registry import CPU_BACKENDS


def e2e_line(r: dict) -> str:
    return (f"{r['path']}, {r['mode']}, {r['streams']} streams: {r['frames_per_s']:,.0f} frames/s, "
            f"p50 {r['batch_latency_p50_ms']:.2f} ms a batch, {r['bytes_per_frame'] / 1e3:,.1f} kB a frame over PCIe")


def markdown(result) -> str:
    """Return the result's batch sweep and end-to-end rows as markdown tables."""
    def table(rows: list[dict], keys: list[str]) -> str:
        fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
        return "\n".join(lines)

    parts = (["## Verdict", result.verdict] if result.verdict else []) + [
        "## Batch sweep", table(result.rows, ["model", "backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms",
                                              "images_per_s", "iterations", "stopped", "memory_mib"])]
    if result.end_to_end:
        keys = [k for k in ("path", "mode", "streams", "frames_per_s", "batch_latency_p50_ms", "batch_latency_p99_ms",
                            "bytes_per_frame", "host_decode_ms", "upload_or_gpu_decode_ms", "inference_ms", "nms_ms")
                if any(k in r for r in result.end_to_end)]
        parts += ["## End to end (JPEG frames to detections)", table(result.end_to_end, keys)]
    parts += ["## Skipped", *[f"- {s}" for s in result.skipped], "## Notes", *[f"- {n}" for n in result.notes]]
    if result.gpu:
        parts += ["## GPU clocks", f"- before: {result.gpu.get('before')}", f"- after: {result.gpu.get('after')}",
                  f"- CUDA_DEVICE_MAX_CONNECTIONS: {result.gpu.get('cuda_device_max_connections', 'not recorded')}"]
    return "\n\n".join(parts) + "\n"


def gpu_notes(rows: list[dict], e2e: list[dict]) -> list[str]:
    notes = []
    by = {(r["model"], r["batch"]): r["images_per_s"] for r in rows}
    for b in sorted({r["batch"] for r in rows}):
        base, best = by.get(("pytorch fp32 eager", b)), by.get(("pytorch fp16 + cuda graph", b))
        if base and best and any(r["device"] == "cuda" for r in rows):
            notes.append(f"batch {b}: PyTorch FP16 + CUDA graph is {best / base:.2f}x PyTorch FP32 eager")
    fps = {(r["path"], r["mode"], r["streams"]): r["frames_per_s"] for r in e2e}
    for (path, mode, n), v in fps.items():
        serial = fps.get((path, "serial", n))
        if mode == "overlapped" and serial:
            notes.append(f"{path}, {n} streams: overlapped {v / serial:.2f}x serial")
    return notes


def cpu_verdict(rows: list[dict]) -> tuple[str, list[str]]:
    """Return (one line at batch 1, notes per batch): INT8 over FP32 on each CPU runtime, and the CPU's INT8 support."""
    isa = runs.int8_isa()
    vnni = not isa.startswith(("AVX2", "SSE"))
    isa = f"INT8 instructions: {isa}" if vnni else f"INT8 instructions: {isa}, no VNNI"
    ips = {(r["backend"], "fp32" if r["model"] == "fp32 onnx" else "int8", r["batch"]): r["images_per_s"]
           for r in rows if r["device"] == "cpu" and r["backend"] in CPU_BACKENDS}
    lines = []
    for b in sorted({k[2] for k in ips}):
        ov8, ov32 = ips.get(("openvino", "int8", b)), ips.get(("openvino", "fp32", b))
        ort8, ort32 = ips.get(("onnxruntime", "int8", b)), ips.get(("onnxruntime", "fp32", b))
        parts = []
        if ov8 and ov32:
            parts.append(f"INT8 on OpenVINO {ov8 / ov32:.2f}x its FP32" + (f" and {ov8 / ort32:.2f}x ONNX Runtime FP32"
                                                                          if ort32 else ""))
        if ort8 and ort32:
            parts.append(f"ONNX Runtime INT8 is {ort8 / ort32:.2f}x its FP32")
        if parts:
            lines.append(f"batch {b}: {'; '.join(parts)} on this CPU ({isa})")
    if not vnni:
        lines.append("this CPU has no VNNI/AMX INT8 instructions: INT8 gains here come from the runtime's kernels "
                     "(OpenVINO), not from the CPU")
    return (lines[0] if lines else ""), lines


def load_note(load: dict) -> str:
    """Return the note a throughput result leads with when other processes used the CPUs while it timed."""
    top = ", ".join(f"{b['process']} ({b['cores']:.2f} cores)" for b in load["busy"][:3]) or "unnamed processes"
    return (f"taken under load: other processes used {load['others_cores']:.2f} cores on average while "
            f"this stage timed (load average {load['loadavg_1m']}; {top}); these figures are low, re-time on "
            "an idle machine")
