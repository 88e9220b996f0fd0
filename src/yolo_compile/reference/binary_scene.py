"""Scene rendering for the `binary_aoi` reference task: a line-scan image of one bare PCB copper layer.

Like public template-difference PCB-defect sets, a frame is a 640x640 thresholded, two-valued (0 and 255)
picture of the copper (bright) on the laminate (dark): bundles of octilinear traces ending in SMD pads, round
pads or vias, copper pours with mounting holes, free vias. Six defect kinds are then painted onto the copper:
open, short, mousebite, spur, spurious copper and pin-hole. The defect-free layer is the *template*:
`render(..., template=True)` returns it with the same optics and threshold, so the frames differ from their
templates only inside the labelled boxes (a test checks it). Pixels are integer/uint8 OpenCV work only,
so the output is bit-exact (see reference.py). Version 1 kept soft grey levels, shading and blur and did not
reproduce what real thresholded sets do to entropy calibration; version 2 thresholds every scan.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

OPEN, SHORT, MOUSEBITE, SPUR, SPURIOUS_COPPER, PIN_HOLE = range(6)
CLEARANCE = 8  # px: the least laminate between copper of different bundles, pours and vias
BOX_PAD = 5  # px of context around a defect in its label box
BOX_MIN = 20  # px: smallest label box side (loose boxes, as hand labels of such sets are)
EDGE_JITTER = 24  # grey levels of threshold jitter: flips only pixels the blur left within ~0.1 of mid-grey
_HEADINGS = np.array([(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in range(0, 360, 45)])


def _fx(pts):
    return np.rint(np.asarray(pts, np.float64) * 16).astype(np.int32)


def _fill(img, pts, v):
    cv2.fillPoly(img, [_fx(pts).reshape(-1, 2)], int(v), cv2.LINE_AA, 4)


def _disc(img, c, r, v):
    c = _fx(c)
    cv2.circle(img, (int(c[0]), int(c[1])), max(1, int(round(r * 16))), int(v), -1, cv2.LINE_AA, 4)


def _polyline(img, pts, width, v):
    cv2.polylines(img, [_fx(pts).reshape(-1, 2)], False, int(v), max(1, int(width)), cv2.LINE_AA, 4)


def _offset(path, d):
    """Return the polyline `path` offset sideways by `d` px (mitred corners keep bundle spacing)."""
    out = []
    for i, p in enumerate(path):
        normals = []
        for a, b in ((path[i - 1], p) if i else (None, None), (p, path[i + 1]) if i + 1 < len(path) else (None, None)):
            if a is not None:
                t = (b - a) / np.linalg.norm(b - a)
                normals.append(np.array([-t[1], t[0]]))
        m = normals[0] if len(normals) == 1 else normals[0] + normals[1]
        m = m / np.linalg.norm(m)
        out.append(p + m * d / float(m @ normals[0]))
    return np.array(out)


class Trace:
    """One drawn trace: centreline, width, and laminate clearance on its left (-1) and right (+1) side."""

    def __init__(self, path, width, clear_left, clear_right, ends_margin):
        self.path, self.w, self.clear, self.margin = path, width, {-1: clear_left, 1: clear_right}, ends_margin

    def spot(self, rng, size):
        """Return (point, unit direction, unit normal) on a straight, in-frame stretch away from pads and corners.

        None when the draw lands elsewhere (traces run off the frame: a defect there would be invisible).
        """
        segs = [(a, b) for a, b in zip(self.path[:-1], self.path[1:])]
        lens = np.array([np.linalg.norm(b - a) for a, b in segs])
        cut = np.cumsum(lens)
        lo, hi = self.margin, cut[-1] - self.margin
        if hi - lo < 10:
            return None
        s = rng.uniform(lo, hi)
        i = int(np.searchsorted(cut, s))
        a, b = segs[i]
        along = s - (cut[i] - lens[i])
        if along < 10 or lens[i] - along < 10:
            return None
        u = (b - a) / lens[i]
        p = a + u * along
        edge = self.w / 2 + 14
        if (p < edge).any() or (p > size - edge).any():
            return None
        return p, u, np.array([-u[1], u[0]])


class Board:
    """The copper layer (uint8, 255 = copper, anti-aliased edges) and what was placed on it."""

    def __init__(self, size):
        self.size = size
        self.cu = np.zeros((size, size), np.uint8)
        self.traces: list[Trace] = []
        self.rings = np.zeros((size, size), np.uint8)  # round pads and vias (grown 3 px): no pin-holes there

    def try_place(self, draw):
        """Draw with `draw(mask)` on a scratch mask; keep it when it clears existing copper by CLEARANCE."""
        tmp = np.zeros_like(self.cu)
        draw(tmp)
        x, y, w, h = cv2.boundingRect(tmp)
        if not w:
            return False
        x0, y0 = max(0, x - CLEARANCE), max(0, y - CLEARANCE)
        x1, y1 = min(self.size, x + w + CLEARANCE), min(self.size, y + h + CLEARANCE)
        k = 2 * CLEARANCE + 1
        near = cv2.dilate(self.cu[y0:y1, x0:x1], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        if (near & tmp[y0:y1, x0:x1]).any():
            return False
        np.maximum(self.cu, tmp, out=self.cu)
        return True

    def clearance(self, cu, p, d, limit=40):
        """Return how many px of laminate lie from `p` along unit `d` before copper (`limit` if none or off-frame)."""
        for t in range(1, limit):
            x, y = int(round(p[0] + d[0] * t)), int(round(p[1] + d[1] * t))
            if not (0 <= x < self.size and 0 <= y < self.size):
                return limit
            if cu[y, x] > 127:
                return t
        return limit


def _route(rng, size):
    """Return an octilinear centreline: long axis-aligned legs joined by short 45-degree legs (jogs, bends)."""
    h0 = int(rng.integers(4)) * 2  # heading in 45-degree steps, axis-aligned
    start = rng.uniform(20, size - 20, 2)
    if rng.random() < 0.6:  # enter from the edge behind, so the trace crosses much of the frame
        axis = 0 if h0 in (0, 4) else 1
        start[axis] = rng.uniform(-40, 40) if h0 in (0, 2) else rng.uniform(size - 40, size + 40)
    pts, o = [start], 0  # o: the axis legs' heading relative to h0, kept within +-90 degrees
    legs = int(rng.integers(1, 4))
    for leg in range(legs):
        pts.append(pts[-1] + _HEADINGS[(h0 + o) % 8] * rng.uniform(60, 320))
        if leg == legs - 1:
            break
        turn = int(rng.choice([-1, 1]))
        pts.append(pts[-1] + _HEADINGS[(h0 + o + turn) % 8] * rng.uniform(15, 80))
        if abs(o + 2 * turn) <= 2 and rng.random() < 0.5:
            o += 2 * turn
    return np.array(pts)


def _end_style(rng, w, pitch):
    """Return (kind, size) of a trace end: SMD pad, staggered round pad or via, or a plain end."""
    r = rng.random()
    if r < 0.3:
        pw = min(pitch - 5, int(w * rng.uniform(1.4, 2.2)))
        return ("smd", (pw, int(rng.integers(12, 26)))) if pw >= w + 2 else ("plain", None)
    d = min(int(w * rng.uniform(1.6, 2.6)), 2 * pitch - w - 6)
    if d < w + 3 or r > 0.9:
        return "plain", None
    return ("via" if r < 0.6 else "round"), d


def _draw_end(mask, end, back, style, k, w):
    kind, dim = style
    u = (end - back) / np.linalg.norm(end - back)
    n = np.array([-u[1], u[0]])
    if kind == "smd":
        pw, pl = dim
        c = end + u * pl / 2
        _fill(mask, [c - u * pl / 2 - n * pw / 2, c + u * pl / 2 - n * pw / 2, c + u * pl / 2 + n * pw / 2,
                     c - u * pl / 2 + n * pw / 2], 255)
        return c, None
    if kind in ("round", "via"):
        c = end + u * (dim / 2 + 1 + (k % 2) * (dim + 6))
        _polyline(mask, [end, c], w, 255)
        _disc(mask, c, dim / 2, 255)
        if kind == "via":
            return c, max(1.5, dim * 0.22)
        return c, None
    return end, None


def _bundle(rng, board):
    """Place one bundle of parallel traces with their pads; return True when it fit."""
    size = board.size
    n = int(rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6, 8]))
    w = int(rng.integers(4, 11))
    gap = int(rng.integers(6, 15))
    pitch = w + gap
    centre = _route(rng, size)
    if len(centre) < 2:
        return False
    paths = [_offset(centre, (k - (n - 1) / 2) * pitch) for k in range(n)]
    styles = (_end_style(rng, w, pitch), _end_style(rng, w, pitch))
    holes, rings = [], []

    def draw(mask):
        holes.clear()
        rings.clear()
        for k, p in enumerate(paths):
            _polyline(mask, p, w, 255)
            for end, back, style in ((p[0], p[1], styles[0]), (p[-1], p[-2], styles[1])):
                inside = (-5 < end).all() and (end < size + 5).all()
                if inside:
                    c, hole = _draw_end(mask, end, back, style, k, w)
                    if style[0] in ("round", "via"):
                        rings.append((c, style[1] / 2))
                    if hole:
                        holes.append((c, hole))

    if not board.try_place(draw):
        return False
    for c, r in holes:
        _disc(board.cu, c, r, 0)
    for c, r in rings:
        _disc(board.rings, c, r + 3, 255)
    pad_len = max(2 * (_end_style_len(styles[0], w)), 2 * _end_style_len(styles[1], w)) + 12
    for k, p in enumerate(paths):
        left = gap if k > 0 else CLEARANCE
        right = gap if k < n - 1 else CLEARANCE
        board.traces.append(Trace(p, w, left, right, pad_len))
    return True


def _end_style_len(style, w):
    kind, dim = style
    if kind == "smd":
        return dim[1]
    if kind in ("round", "via"):
        return 2 * dim + 8
    return w


def _pour(rng, board):
    """Place a copper pour (rectangle with chamfered corners), sometimes with a mounting hole; True if it fit."""
    size = board.size
    w, h = rng.uniform(30, 150, 2)
    x0, y0 = rng.uniform(-20, size - 10, 2)
    ch = rng.uniform(0, min(w, h) / 4)
    poly = np.array([(x0 + ch, y0), (x0 + w - ch, y0), (x0 + w, y0 + ch), (x0 + w, y0 + h - ch),
                     (x0 + w - ch, y0 + h), (x0 + ch, y0 + h), (x0, y0 + h - ch), (x0, y0 + ch)])
    if not board.try_place(lambda m: _fill(m, poly, 255)):
        return False
    if min(w, h) > 60 and rng.random() < 0.4:
        _disc(board.cu, (x0 + w / 2, y0 + h / 2), min(w, h) * rng.uniform(0.12, 0.22), 0)
    return True


def _via(rng, board):
    size = board.size
    c = rng.uniform(10, size - 10, 2)
    d = rng.uniform(10, 24)
    if board.try_place(lambda m: _disc(m, c, d / 2, 255)):
        _disc(board.cu, c, d * 0.22, 0)
        _disc(board.rings, c, d / 2 + 3, 255)


def _box(cls, pts, size):
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    lo, hi = pts.min(0) - BOX_PAD, pts.max(0) + BOX_PAD
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, BOX_MIN / 2)
    lo, hi = np.clip(mid - half, 0, size), np.clip(mid + half, 0, size)
    return (cls, round(float(lo[0]), 2), round(float(lo[1]), 2), round(float(hi[0]), 2), round(float(hi[1]), 2))


def _defect(rng, cls, board, cu):
    """Paint one defect of class `cls` onto `cu`; return its (class, x0, y0, x1, y1) box or None if no spot."""
    size = board.size
    if cls in (OPEN, SHORT, MOUSEBITE, SPUR):
        if not board.traces:
            return None
        tr = board.traces[int(rng.integers(len(board.traces)))]
        spot = tr.spot(rng, size)
        if spot is None:
            return None
        c, u, n = spot
        half = tr.w / 2
        if cls == OPEN:
            g = rng.uniform(3, 9)
            sk = rng.uniform(-2, 2)
            e = half + 1.5
            poly = [c - u * g / 2 - n * e, c + u * g / 2 - n * e, c + u * (g / 2 + sk) + n * e, c - u * (g / 2 - sk) + n * e]
            _fill(cu, poly, 0)
            return _box(cls, poly, size)
        side = int(rng.choice([-1, 1]))
        edge = c + side * n * (half + 1)
        clear = board.clearance(cu, edge, side * n) + 1
        if cls == SHORT:  # a copper bridge across the laminate to the nearest copper beside the trace
            if clear > 20:
                side = -side
                edge = c + side * n * (half + 1)
                clear = board.clearance(cu, edge, side * n) + 1
            if clear > 20:
                return None
            a = c + side * n * (half - 1)
            b = edge + side * n * (clear + 0.5) + u * rng.uniform(-0.4, 0.4) * clear
            bw = int(rng.integers(2, max(3, min(6, tr.w))))
            _polyline(cu, [a, b], bw, 255)
            return _box(cls, [a - u * bw, a + u * bw, b - u * bw, b + u * bw], size)
        if cls == MOUSEBITE:
            k = int(rng.integers(1, 4))
            r = max(1.5, tr.w * rng.uniform(0.25, 0.45))
            step = r * rng.uniform(1.4, 2.2)
            pts = []
            for i in range(k):
                p = c + u * (i - (k - 1) / 2) * step + side * n * half
                _disc(cu, p, r, 0)
                pts += [p - r, p + r]
            return _box(cls, pts, size)
        # SPUR: a thin spike from the edge into the laminate, stopping well short of anything beside it
        length = min(14.0, clear * rng.uniform(0.35, 0.6))
        if length < 3:
            return None
        base = rng.uniform(2, 5) / 2
        e = c + side * n * (half - 0.5)
        tip = c + side * n * (half + length) + u * rng.uniform(-3, 3)
        poly = [e - u * base, e + u * base, tip]
        _fill(cu, poly, 255)
        return _box(cls, poly, size)
    if cls == SPURIOUS_COPPER:
        r = rng.uniform(3, 9)
        k = 2 * int(math.ceil(r + CLEARANCE / 2)) + 1
        free = cv2.dilate(cu, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) == 0
        free[: k, :] = free[-k:, :] = free[:, : k] = free[:, -k:] = False
        ys, xs = np.nonzero(free)
        if not len(xs):
            return None
        i = int(rng.integers(len(xs)))
        c = np.array([xs[i], ys[i]], np.float64)
        m = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * math.pi, m))
        rad = r * rng.uniform(0.5, 1.0, m)
        poly = c + np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
        _fill(cu, poly, 255)
        return _box(cls, poly, size)
    # PIN_HOLE: a small hole inside copper wide enough to hold it with copper all round
    r = rng.uniform(1.5, 4.0)
    k = 2 * int(math.ceil(r + 2.5)) + 1
    solid = (cv2.erode(cu, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) == 255) & (board.rings == 0)
    ys, xs = np.nonzero(solid)
    if not len(xs):
        return None
    i = int(rng.integers(len(xs)))
    c = np.array([xs[i], ys[i]], np.float64)
    _disc(cu, c, r, 0)
    return _box(cls, [c - r, c + r], size)


def _overlaps(box, boxes, gap=6):
    _, x0, y0, x1, y1 = box
    return any(not (x1 + gap < b[1] or b[3] + gap < x0 or y1 + gap < b[2] or b[4] + gap < y0) for b in boxes)


def _scan(rng, cu):
    """Line-scan capture, then the hard threshold of template-difference sets: every pixel is 0 or 255.

    Public sets of this kind binarise each scan before it is compared with its template, so their frames hold
    two values and no grey. Optics (blur) and a small per-pixel jitter on the threshold only decide where an
    edge falls: edges are a pixel or two rough, as thresholded scans are, and defects stay as drawn.
    The jitter draws as many numbers for a template as for its frame, so the two differ only at defects.
    """
    soft = cv2.GaussianBlur(cu, (0, 0), round(rng.uniform(0.5, 1.0), 1)).astype(np.int16)
    jitter = rng.integers(-EDGE_JITTER, EDGE_JITTER + 1, cu.shape, dtype=np.int16)
    return np.where(soft + jitter > 127, 255, 0).astype(np.uint8)


def render(rng, size, template=False):
    """Return (grey uint8 image, [(class, x0, y0, x1, y1)]) of one frame of `size` (w, h).

    `template=True` gives the defect-free layer under the same optics and noise (and the same boxes).
    """
    side = size[0]
    board = Board(side)
    want = int(rng.integers(6, 16))
    for _ in range(80):
        if len(board.traces) >= 3 * want:
            break
        _bundle(rng, board)
    for _ in range(int(rng.integers(1, 5))):
        _pour(rng, board)
    for _ in range(int(rng.integers(4, 16))):
        _via(rng, board)
    cu = board.cu.copy()
    boxes = []
    for _ in range(int(rng.integers(3, 11))):
        cls = int(rng.integers(6))
        for _attempt in range(10):  # the class first, then spots for it: keeps the classes balanced
            trial = cu.copy()
            box = _defect(rng, cls, board, trial)
            if box is not None and not _overlaps(box, boxes):
                cu = trial
                boxes.append(box)
                break
    img = _scan(rng, board.cu if template else cu)
    return img, boxes
