"""Stage 7: the bytes-per-frame budget of the compiled model for a camera set, and which link saturates first.

Input bytes at each representation (the JPEG bitstream measured on real frames), weights at each precision,
activations read and written per frame (`traffic.py`, from the quantized graph's shapes and precisions),
the output; then PCIe, an edge module's shared memory bus and Ethernet: utilisation at the requested load
and the most streams each link carries, for three input paths. Arithmetic, so it runs on any machine in
seconds; where a CUDA GPU is present it is cross-checked by timed copies and NVML's PCIe counters.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from yolo_compile import fileio, runs
from yolo_compile.config import check_positive, path_field
from yolo_compile.errors import BandwidthError
from yolo_compile.bandwidth.links import LINKS

log = logging.getLogger(__name__)
STAGE = "bandwidth"
PATHS = ("fp32 + cpu decode", "uint8 upload", "jpeg to gpu")


@dataclass(frozen=True)
class BandwidthConfig:
    streams: tuple[int, ...] = (8,)  # camera streams to budget for; the largest sets the verdict (shared with throughput)
    camera: str = "1920x1080"  # camera frame size, WIDTHxHEIGHT
    fps: float = 30.0  # frames per second of each stream
    eval_dir: str = path_field("")  # JPEG camera frames whose bitstream size is measured (bits per pixel, scaled to the camera)
    link: str = "pcie4_x8"  # the link the verdict names: pcie3|4|5_x8|16, orin_lpddr5, 10gbe, 25gbe
    delta_frames: int = 0  # conveyor frames for the feature-delta measurement; 0 skips it (bench/delta.py runs it)
    gpu_check: bool = True  # with a CUDA GPU: time host-to-device copies and read NVML PCIe counters

    def __post_init__(self) -> None:
        check_positive("fps", self.fps)
        if not self.streams or min(self.streams) < 1:
            raise BandwidthError(f"parameter 'streams' = {self.streams!r}: give positive stream counts, e.g. 8")
        self.camera_size()
        if self.link not in LINKS:
            raise BandwidthError(f"parameter 'link' = {self.link!r}: expected one of {', '.join(LINKS)}")
        if self.delta_frames < 0 or self.delta_frames == 1:
            raise BandwidthError(f"parameter 'delta_frames' = {self.delta_frames}: 0 (skip) or at least 2 frames")

    def camera_size(self) -> tuple[int, int]:
        """Return the camera's (width, height)."""
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", self.camera)
        if not m or not int(m.group(1)) or not int(m.group(2)):
            raise BandwidthError(f"parameter 'camera' = {self.camera!r}: expected WIDTHxHEIGHT, e.g. 1920x1080")
        return int(m.group(1)), int(m.group(2))


@dataclass
class BandwidthResult:
    status: str
    verdict: str = ""  # one line for the report's summary
    reason: str = ""
    camera: str = ""
    fps: float = 0.0
    streams: list = field(default_factory=list)
    imgsz: int = 0
    precision: str = ""  # the compiled model's float type and INT8 share
    inputs: list = field(default_factory=list)  # bytes a frame at each representation
    jpeg: dict = field(default_factory=dict)  # the bitstream measurement behind the JPEG row
    weights: list = field(default_factory=list)  # per precision: bytes, and per frame at batch 1 and at batch = streams
    activations: list = field(default_factory=list)  # per precision: read and written per frame
    layer_groups: list = field(default_factory=list)  # per /model.<i>/ group, compiled and FP32
    output_bytes: int = 0
    paths: list = field(default_factory=list)  # per input path: link bytes each way and memory-bus bytes a frame
    links: list = field(default_factory=list)  # per link, path and stream count: utilisation and most streams
    compute: dict = field(default_factory=dict)  # streams the measured engine carries (throughput stage)
    gpu_check: list = field(default_factory=list)
    delta: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    table: str = ""
    plots: list = field(default_factory=list)
    seconds: float = 0.0


def run(cfg: BandwidthConfig, run_dir: str | Path) -> BandwidthResult:
    """Budget the run's compiled model for the camera set; write table, plots and result.json."""
    import onnx

    from yolo_compile.bandwidth import traffic

    start = time.perf_counter()
    run_dir = Path(run_dir)
    exp = runs.require_passed(run_dir, "export")
    q = runs.read_result(run_dir, "quantize")
    if q.get("status") != "passed":
        raise BandwidthError(f"{run_dir / 'quantize' / 'result.json'}: quantize is {q.get('status')!r}; "
                             "the budget reads the quantized graph: run quantize first")
    size, (cam_w, cam_h) = int(exp["imgsz"]), cfg.camera_size()
    batch = max(cfg.streams)
    skipped, notes = [], []
    model = onnx.load(str(run_dir / q["onnx"]))
    w = traffic.weight_bytes(model)
    shapes = traffic.static_shapes(model)
    acts = {p: traffic.activation_traffic(model, p, shapes=shapes) for p in ("compiled", "fp16", "fp32")}
    jpeg = measure_jpeg(cfg.eval_dir, cam_w * cam_h)
    if not jpeg:
        skipped.append("jpeg to gpu: eval_dir holds no JPEG frames to measure the bitstream on "
                       f"({cfg.eval_dir or 'eval_dir is empty'})")
    inputs = input_rows(size, cam_w, cam_h, jpeg)
    weights = [{"precision": p, "bytes": b, "per_frame_batch_1": b, f"per_frame_batch_{batch}": b / batch}
               for p, b in (("fp32", w.fp32_bytes), ("fp16", w.fp16_bytes), ("compiled", w.compiled_bytes))]
    out_bytes = acts["compiled"].output_bytes
    paths = path_rows(size, cam_w * cam_h, jpeg, w.compiled_bytes / batch, acts["compiled"], out_bytes)
    links = link_rows(paths, cfg.streams, cfg.fps)
    compute = compute_row(run_dir, cfg.fps)
    gpu = []
    if cfg.gpu_check:
        from yolo_compile.bandwidth.linkcheck import crosscheck

        gpu, why = crosscheck(paths, batch, size, jpeg)
        skipped += why
    else:
        skipped.append("GPU cross-check: gpu_check is false")
    delta = {}
    if cfg.delta_frames:
        from yolo_compile.bandwidth import delta as delta_mod

        delta = delta_mod.measure(run_dir, cfg.delta_frames)
    else:
        skipped.append("feature delta encoding: delta_frames is 0 (bench/delta.py measures it; docs/bandwidth/delta.md)")
    int8_share = w.int8_elements / max(w.int8_elements + w.float_elements, 1)
    result = BandwidthResult(
        status="passed", camera=f"{cam_w}x{cam_h}", fps=cfg.fps, streams=list(cfg.streams), imgsz=size,
        precision=f"{int8_share:.1%} of weights INT8, the rest {q.get('high_precision_dtype', 'fp32')}",
        inputs=inputs, jpeg=jpeg, weights=weights,
        activations=[{"precision": p, "read_bytes": a.read_bytes, "written_bytes": a.written_bytes,
                      "total_bytes": a.read_bytes + a.written_bytes} for p, a in acts.items()],
        layer_groups=group_rows(acts), output_bytes=out_bytes, paths=paths, links=links, compute=compute,
        gpu_check=gpu, delta=delta, skipped=skipped, notes=notes)
    result.verdict = verdict(links, cfg.link, batch, f"{cam_w}x{cam_h}", cfg.fps)
    result.notes += budget_notes(result)
    out = runs.stage_dir(run_dir, STAGE)
    result.table = f"{STAGE}/{fileio.write_text(out / 'table.md', markdown(result)).name}"
    from yolo_compile.bandwidth.plots import plot_budget, plot_links

    result.plots = [f"{STAGE}/{plot_budget(result, out / 'bytes_per_frame.png').name}",
                    f"{STAGE}/{plot_links(result, cfg.link, out / 'links.png').name}"]
    result.seconds = round(time.perf_counter() - start, 2)  # the plots included
    runs.write_result(run_dir, STAGE, result)
    return result


def measure_jpeg(folder: str, camera_pixels: int, limit: int = 64) -> dict:
    """Return the mean JPEG bytes and bits per pixel of up to limit frames in folder, scaled to camera_pixels."""
    from yolo_compile.images import list_images

    if not folder or not Path(folder).is_dir():
        return {}
    files = [p for p in list_images(folder) if p.suffix.lower() in (".jpg", ".jpeg")][:limit]
    sizes = [(p.stat().st_size, jpeg_pixels(p)) for p in files]
    sizes = [(b, px) for b, px in sizes if px]
    if not sizes:
        return {}
    bpp = sum(8 * b for b, _ in sizes) / sum(px for _, px in sizes)
    return {"frames": len(sizes), "folder": str(folder), "mean_bytes": sum(b for b, _ in sizes) / len(sizes),
            "mean_pixels": sum(px for _, px in sizes) / len(sizes), "bits_per_pixel": bpp,
            "camera_bytes": bpp * camera_pixels / 8,
            "scaling": "bits per pixel measured on these frames, times the camera's pixels (same content, "
                       "same quality; a larger sensor of the same scene compresses somewhat better)"}


def jpeg_pixels(path: Path) -> int:
    """Return width x height from a JPEG's start-of-frame marker (0 when none is found)."""
    data = path.read_bytes()
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(data[i + 5:i + 7], "big") * int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + length if marker not in (0xD8, 0x01) and not 0xD0 <= marker <= 0xD7 else 2
    return 0


def input_rows(size: int, cam_w: int, cam_h: int, jpeg: dict) -> list[dict]:
    """Return the bytes of one frame at each input representation."""
    px, mpx = cam_w * cam_h, size * size
    rows = []
    if jpeg:
        rows.append({"representation": f"jpeg bitstream at {cam_w}x{cam_h}", "bytes": round(jpeg["camera_bytes"]),
                     "where": f"{jpeg['bits_per_pixel']:.2f} bits/pixel measured on {jpeg['frames']} frames"})
    rows += [{"representation": f"uint8 rgb at {cam_w}x{cam_h}", "bytes": 3 * px, "where": "decoded camera frame"},
             {"representation": f"uint8 rgb at {size}x{size}", "bytes": 3 * mpx, "where": "letterboxed model input"},
             {"representation": f"fp16 at {size}x{size}", "bytes": 6 * mpx, "where": "normalised, half"},
             {"representation": f"fp32 at {size}x{size}", "bytes": 12 * mpx, "where": "normalised, the ONNX input"}]
    return rows


def path_rows(size: int, camera_pixels: int, jpeg: dict, weights_per_frame: float, acts, out_bytes: int) -> list[dict]:
    """Return per input path: bytes a frame over a link (in, out) and over a shared memory bus.

    The memory bus sees every path decode (JPEG read, camera RGB written, read back by the resize), its input
    written once and read once, the weights' share of a batch, the activations and the output written and read.
    """
    model_side = weights_per_frame + acts.read_bytes + acts.written_bytes + 2 * out_bytes
    decode = (jpeg.get("camera_bytes", 0.0) + 2 * 3 * camera_pixels) if jpeg else 2 * 3 * camera_pixels
    mpx = size * size
    rows = []
    for path, link_in, tensor in (("fp32 + cpu decode", 12 * mpx, 12 * mpx), ("uint8 upload", 3 * mpx, 3 * mpx),
                                  ("jpeg to gpu", jpeg.get("camera_bytes"), 3 * mpx)):
        if link_in is None:
            continue
        rows.append({"path": path, "link_in_bytes": round(link_in), "link_out_bytes": out_bytes,
                     "memory_bytes": round(decode + 2 * tensor + model_side)})
    return rows


def link_rows(paths: list[dict], streams: tuple[int, ...], fps: float) -> list[dict]:
    """Return utilisation (%) at each stream count and the most streams each link carries, per input path."""
    rows = []
    for key, (name, gbps, kind) in LINKS.items():
        for p in paths:
            per_frame = max(p["link_in_bytes"], p["link_out_bytes"]) if kind == "duplex" else p["memory_bytes"]
            rate = gbps * 1e9
            binding = "memory" if kind == "shared" else "input" if p["link_in_bytes"] >= p["link_out_bytes"] else "output"
            row = {"link": key, "name": name, "gb_per_s": round(gbps, 2), "path": p["path"], "binding": binding,
                   "bytes_per_frame": per_frame, "max_streams": math.floor(rate / (per_frame * fps))}
            for n in sorted(streams):
                row[f"utilisation_{n}_streams_pct"] = round(100 * n * fps * per_frame / rate, 2)
            rows.append(row)
    return rows


def compute_row(run_dir: Path, fps: float) -> dict:
    """Return the streams the fastest measured engine configuration carries at fps (empty without a throughput run)."""
    tp = run_dir / "throughput" / "result.json"
    if not tp.is_file():
        return {}
    import json

    rows = [r for r in json.loads(tp.read_text()).get("rows", []) if str(r.get("model", "")).startswith("engine")]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["images_per_s"])
    return {"model": best["model"], "device": best["device"], "batch": best["batch"],
            "images_per_s": best["images_per_s"], "max_streams": math.floor(best["images_per_s"] / fps)}


def group_rows(acts: dict) -> list[dict]:
    """Return one row per layer group: compiled and FP32 activation bytes a frame."""
    rows = []
    for g, c in acts["compiled"].groups.items():
        f = acts["fp32"].groups.get(g, {"read_bytes": 0, "written_bytes": 0})
        rows.append({"group": g, "read_bytes": c["read_bytes"], "written_bytes": c["written_bytes"],
                     "int8_written_bytes": c["int8_bytes_written"], "fp32_read_bytes": f["read_bytes"],
                     "fp32_written_bytes": f["written_bytes"]})
    return rows


def verdict(links: list[dict], link: str, streams: int, camera: str, fps: float) -> str:
    """Return the one-line verdict for the chosen link at the largest stream count."""
    rows = {r["path"]: r for r in links if r["link"] == link}
    key = f"utilisation_{streams}_streams_pct"
    name, gbps, _ = LINKS[link]
    fmt = lambda p: (f"{rows[p][key]:.1f}%" + ("" if rows[p][key] <= 100 else " (does not fit)"))  # noqa: E731
    parts = [f"{p.replace('jpeg to gpu', 'JPEG-to-GPU').replace('fp32 + cpu decode', 'FP32 upload (CPU decode)')} "
             f"{fmt(p)} (max {rows[p]['max_streams']} streams)" for p in ("jpeg to gpu", "uint8 upload", "fp32 + cpu decode")
             if p in rows]
    fits = [p for p in rows if rows[p][key] <= 100]
    head = (f"{streams} streams of {camera} at {fps:g} fps {'fit' if fits else 'do not fit'} a {name} link "
            f"({gbps:.1f} GB/s)")
    return head + ": " + "; ".join(parts)


def budget_notes(res: BandwidthResult) -> list[str]:
    """Return the lines that say where the bytes go."""
    notes = []
    acts = {a["precision"]: a["total_bytes"] for a in res.activations}
    if acts.get("fp32"):
        notes.append(f"activations: {acts['compiled'] / 1e6:.1f} MB read + written a frame compiled vs "
                     f"{acts['fp32'] / 1e6:.1f} MB at FP32 ({acts['fp32'] / max(acts['compiled'], 1):.1f}x less)")
    mem = {r["path"]: r for r in res.links if r["link"] == "orin_lpddr5"}
    pcie = {r["path"]: r for r in res.links if r["link"] == "pcie4_x8"}
    if mem and pcie:
        p = "uint8 upload"
        notes.append(f"{p}: a shared memory bus carries {mem[p]['max_streams']} streams, PCIe Gen4 x8 "
                     f"{pcie[p]['max_streams']}: on an edge module the model's own traffic, not the upload, is the budget")
    down = [p["path"] for p in res.paths if p["link_out_bytes"] > p["link_in_bytes"]]
    if down:
        notes.append(f"{', '.join(down)}: the raw output ({res.output_bytes:,} bytes down) outweighs the input up; "
                     "NMS on the device (at most 300 boxes x 6 values x 4 bytes = 7,200 bytes) would lift that limit")
    if res.compute:
        notes.append(f"compute: the fastest measured engine ({res.compute['model']}, {res.compute['device']}, batch "
                     f"{res.compute['batch']}) carries {res.compute['max_streams']} streams at {res.fps:g} fps on this machine")
    return notes


def markdown(res: BandwidthResult) -> str:
    """Return the budget, link table and delta results as markdown."""
    def table(rows: list[dict]) -> str:
        if not rows:
            return "(none)"
        keys = list(dict.fromkeys(k for r in rows for k in r))
        fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
        return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                         + ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows])

    parts = [f"# Bandwidth budget: {', '.join(map(str, res.streams))} streams of {res.camera} at {res.fps:g} fps, model input {res.imgsz}",
             f"**Verdict:** {res.verdict}", f"Compiled precision: {res.precision}.",
             "## Input, bytes a frame", table(res.inputs), "## Weights", table(res.weights),
             "## Activations a frame", table(res.activations), f"Output: {res.output_bytes:,} bytes a frame.",
             "## Per layer group", table(res.layer_groups), "## Input paths, bytes a frame", table(res.paths),
             "## Links (effective payload rates)", table(res.links)]
    if res.gpu_check:
        parts += ["## GPU cross-check", table(res.gpu_check)]
    if res.delta:
        parts += ["## Feature delta encoding", table(res.delta.get("levels", [])), table(res.delta.get("keyframes", []))]
    parts += ["## Skipped", *[f"- {s}" for s in res.skipped], "## Notes", *[f"- {n}" for n in res.notes]]
    return "\n\n".join(parts) + "\n"
