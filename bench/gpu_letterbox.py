"""One fused GPU kernel for the letterbox: decoded uint8 RGB frames (HWC or CHW, any strides) -> bilinear resize
(cv2 INTER_LINEAR's half-pixel centres) -> centred on pad 114 -> uint8 (N, 3, S, S) RGB, the model's input before
normalisation. One launch a batch: no FP16 intermediate, no separate fill, pad and copy kernels.

Triton; `TRITON_INTERPRET=1` runs it on the CPU (this file's self-check against cv2, no GPU needed):
    TRITON_INTERPRET=1 python bench/gpu_letterbox.py
"""

from __future__ import annotations

import triton
import triton.language as tl

PAD = 114


@triton.jit
def _letterbox(src, dst, frame_offs, H, W, s_b, s_y, s_x, s_c, nh, nw, top, left, scale_y, scale_x,
               S: tl.constexpr, PADV: tl.constexpr, BLOCK: tl.constexpr, GATHER: tl.constexpr):
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S * S
    oy = offs // S
    ox = offs % S
    iy = oy - top
    ix = ox - left
    inside = mask & (iy >= 0) & (iy < nh) & (ix >= 0) & (ix < nw)
    fy = tl.maximum((iy.to(tl.float32) + 0.5) * scale_y - 0.5, 0.0)
    fx = tl.maximum((ix.to(tl.float32) + 0.5) * scale_x - 0.5, 0.0)
    y0 = tl.minimum(fy.to(tl.int32), H - 1)
    x0 = tl.minimum(fx.to(tl.int32), W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    x1 = tl.minimum(x0 + 1, W - 1)
    wy = fy - y0.to(tl.float32)
    wx = fx - x0.to(tl.float32)
    if GATHER:  # frames in separate allocations: byte offset of frame b from frame 0 (no stacking copy)
        boff = tl.load(frame_offs + b).to(tl.int64)
    else:
        boff = b.to(tl.int64) * s_b
    base = src
    r0 = y0.to(tl.int64) * s_y + boff
    r1 = y1.to(tl.int64) * s_y + boff
    c0 = x0.to(tl.int64) * s_x
    c1 = x1.to(tl.int64) * s_x
    out = dst + b.to(tl.int64) * (3 * S * S) + offs
    for c in tl.static_range(3):
        p00 = tl.load(base + r0 + c0 + c * s_c, mask=inside, other=0).to(tl.float32)
        p01 = tl.load(base + r0 + c1 + c * s_c, mask=inside, other=0).to(tl.float32)
        p10 = tl.load(base + r1 + c0 + c * s_c, mask=inside, other=0).to(tl.float32)
        p11 = tl.load(base + r1 + c1 + c * s_c, mask=inside, other=0).to(tl.float32)
        v = (p00 * (1.0 - wx) + p01 * wx) * (1.0 - wy) + (p10 * (1.0 - wx) + p11 * wx) * wy
        v = tl.where(inside, tl.minimum(v + 0.5, 255.0), PADV)
        tl.store(out + c * (S * S), v.to(tl.uint8), mask=mask)


def geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Return (new_h, new_w, top, left) exactly as images.letterbox rounds them."""
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    return nh, nw, int(round((size - nh) / 2 - 0.1)), int(round((size - nw) / 2 - 0.1))


def letterbox(src, dst, layout: str = "NHWC", block: int = 1024) -> None:
    """Letterbox src (N, H, W, 3) for layout NHWC or (N, 3, H, W) for NCHW, uint8 RGB, into dst (N, 3, S, S) uint8.

    Launches on the current CUDA stream (Triton's rule), so it orders after the decode that filled src.
    """
    n = src.shape[0]
    if layout == "NHWC":
        h, w = src.shape[1], src.shape[2]
        s_b, s_y, s_x, s_c = src.stride(0), src.stride(1), src.stride(2), src.stride(3)
    else:
        h, w = src.shape[2], src.shape[3]
        s_b, s_c, s_y, s_x = src.stride(0), src.stride(1), src.stride(2), src.stride(3)
    size = dst.shape[-1]
    assert dst.shape[0] == n and dst.is_contiguous(), (dst.shape, n)
    nh, nw, top, left = geometry(h, w, size)
    grid = (triton.cdiv(size * size, block), n)
    _letterbox[grid](src, dst, src, h, w, s_b, s_y, s_x, s_c, nh, nw, top, left, h / nh, w / nw,
                     S=size, PADV=PAD, BLOCK=block, GATHER=False)


def letterbox_gather(first, offsets, n: int, dst, block: int = 1024) -> None:
    """Letterbox n frames of first's (H, W, 3) shape and strides that lie in separate allocations, frame b at byte
    offset offsets[b] (int64, on the device) from first's data, into dst (n, 3, S, S): what a decoder's per-image
    buffers give, read in place instead of stacked into one batch first (a copy of the whole batch saved)."""
    h, w = first.shape[0], first.shape[1]
    s_y, s_x, s_c = first.stride(0), first.stride(1), first.stride(2)
    size = dst.shape[-1]
    assert dst.shape[0] == n and dst.is_contiguous() and first.dtype.itemsize == 1, (dst.shape, n)
    nh, nw, top, left = geometry(h, w, size)
    grid = (triton.cdiv(size * size, block), n)
    _letterbox[grid](first, dst, offsets, h, w, 0, s_y, s_x, s_c, nh, nw, top, left, h / nh, w / nw,
                     S=size, PADV=PAD, BLOCK=block, GATHER=True)


def _selfcheck() -> None:
    """Compare with images.letterbox (cv2) on random frames: at most 1-2 levels apart (cv2's fixed-point weights)."""
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from yolo_compile.images import letterbox as cv_letterbox

    rng = np.random.default_rng(0)
    for (h, w), size in (((72, 96), 64), ((54, 96), 64), ((96, 54), 64), ((64, 64), 64), ((30, 40), 64)):
        imgs = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        ref = np.stack([cv_letterbox(i, size).transpose(2, 0, 1) for i in imgs])
        for layout in ("NHWC", "NCHW"):
            src = torch.from_numpy(imgs if layout == "NHWC" else np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
            dst = torch.empty((2, 3, size, size), dtype=torch.uint8)
            letterbox(src, dst, layout, block=256)
            d = np.abs(dst.numpy().astype(int) - ref.astype(int))
            print(f"{h}x{w}->{size} {layout}: max {d.max()}, mean {d.mean():.4f}")
            assert d.max() <= 2, d.max()
        # separate frames read in place: offsets from the first frame (here views of one array, any order)
        frames = [torch.from_numpy(np.ascontiguousarray(i)) for i in imgs[::-1]]
        offs = torch.tensor([f.data_ptr() - frames[0].data_ptr() for f in frames], dtype=torch.int64)
        dst = torch.empty((2, 3, size, size), dtype=torch.uint8)
        letterbox_gather(frames[0], offs, 2, dst, block=256)
        d = np.abs(dst.numpy().astype(int) - ref[::-1].astype(int))
        print(f"{h}x{w}->{size} gather: max {d.max()}")
        assert d.max() <= 2, d.max()


if __name__ == "__main__":
    _selfcheck()
