"""The CUDA side of the throughput stage: PyTorch rows, nvJPEG decode, overlapped streams. Skipped without CUDA."""


import numpy as np
import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)

from yolo_compile import images
from yolo_compile.stages import build
from yolo_compile.gpu import frames
from yolo_compile.runtimes import pytorch
from yolo_compile.stages import throughput  # noqa: E402

from conftest import IMGSZ  # noqa: E402


def test_gpu_letterbox_matches_the_cpu_tensor(image_sets, tiny_checkpoint):
    net = pytorch.load_torch_detector(tiny_checkpoint, "cuda", half=True)
    files = images.list_images(image_sets["eval"])[:2]
    jpegs = [f.read_bytes() for f in files]
    pipe = frames.GpuPipeline(net, "gpu decode (nvJPEG)", 2, IMGSZ)
    try:
        with torch.cuda.stream(torch.cuda.current_stream()):
            pipe.device_part(jpegs, 0)
        torch.cuda.synchronize()
        got = pipe.pre[0].float().cpu().numpy()
    finally:
        pipe.close()
    want = np.stack([images.load_tensor(f, IMGSZ) for f in files])
    assert np.abs(got - want).mean() < 0.03  # nvJPEG's IDCT and bilinear resize differ from cv2 by a few levels


def test_every_path_runs_serial_and_overlapped(image_sets, tiny_checkpoint):
    net = pytorch.load_torch_detector(tiny_checkpoint, "cuda", half=True)
    jpegs = frames.read_jpegs(image_sets["eval"], 8)
    batches = [jpegs[i:i + 2] for i in range(0, 8, 2)]
    for path in frames.PATHS:
        pipe = frames.GpuPipeline(net, path, 2, IMGSZ)
        try:
            for fn in (pipe.run_serial, pipe.run_overlapped):
                assert fn(batches)["frames_per_s"] > 0
        finally:
            pipe.close()


def test_throughput_adds_pytorch_cuda_rows_and_end_to_end(run_copy, image_sets):
    build.run(build.BuildConfig(target="cpu"), run_copy)
    res = throughput.run(throughput.ThroughputConfig(batch_sizes=(1, 2), warmup=1, iterations=3, max_seconds=0.5,
                                                     eval_dir=str(image_sets["eval"]), streams=(2,), e2e_batches=3),
                         run_copy)
    models = {r["model"] for r in res.rows if r["device"] == "cuda"}
    assert models == {"pytorch fp32 eager", "pytorch fp16 eager", "pytorch fp16 + cuda graph"}
    assert {(r["path"], r["mode"]) for r in res.end_to_end} == {(p, m) for p in frames.PATHS for m in ("serial", "overlapped")}
    assert res.gpu["after"].get("clocks.sm")


def test_letterbox_on_gpu_matches_the_cpu_letterbox(image_sets):
    files = images.list_images(image_sets["eval"])[:3]
    from torchvision.io import decode_jpeg

    imgs = decode_jpeg([torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files], device="cuda")
    dst = torch.empty((3, 3, IMGSZ, IMGSZ), dtype=torch.float16, device="cuda")
    frames.letterbox_on_gpu(imgs, dst, IMGSZ)
    got = dst.float().cpu().numpy()
    want = np.stack([images.load_tensor(f, IMGSZ) for f in files])
    assert np.abs(got - want).mean() < 0.03


def test_gpu_input_bench_nvimgcodec_path_matches_the_cpu_letterbox(image_sets, tiny_checkpoint):
    pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec (nvidia-nvimgcodec-cu12/13) is not installed")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_input", Path(__file__).parents[2] / "bench" / "gpu_input.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = pytorch.load_torch_detector(tiny_checkpoint, "cuda", half=True)
    jpegs = frames.read_jpegs(image_sets["eval"], 2)
    pipe = bench.make_pipeline(net, bench.NVIMGCODEC, 2, IMGSZ)
    try:
        _, mean = bench.diff_vs_cpu(pipe, jpegs)
        assert pipe.run_overlapped([jpegs, jpegs])["frames_per_s"] > 0
    finally:
        pipe.close()
    assert mean < 0.03


def test_nms_one_sync_split_matches_torchvision_batched_nms():
    from torchvision.ops.boxes import _batched_nms_coordinate_trick

    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 9, 2000, generator=gen)
    pred[:, :2] *= 640
    pred[:, 2:4] *= 80
    pred[:, 4:] **= 6
    pred = pred.cuda()
    x = pred.transpose(1, 2).float()
    scores, cls = x[..., 4:].max(-1)
    b, a = torch.nonzero(scores > 0.25, as_tuple=True)
    xywh = x[b, a, :4]
    boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    keep = _batched_nms_coordinate_trick(boxes, scores[b, a], b * x.shape[-1] + cls[b, a], 0.7)
    want = torch.cat([boxes[keep], scores[b, a][keep, None], cls[b, a][keep, None].float()], 1)
    got = frames.torch_nms(pred)
    for i, d in enumerate(got):
        assert torch.equal(d, want[b[keep] == i][:300])
