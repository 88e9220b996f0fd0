"""Scene rendering for `yolo_compile.reference.tasks`: a top-down AOI camera view of a populated PCB.

Geometry is planned in board millimetres and drawn through one similarity transform (camera scale,
small rotation). Solder shine and shadows are painted on two grey layers that are blurred once and
composited, then lighting, colour cast, optics blur and sensor noise follow, as in a camera.
Only integer arithmetic touches pixels, so the output is bit-exact (see reference.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

GOOD, INSUFFICIENT, BRIDGE, OFFSET, PARTICLE = range(5)

# solder mask BGR, mask over copper BGR, silkscreen BGR, sampling weight
BOARDS = (
    ((45, 105, 22), (70, 150, 45), (235, 235, 230), 5),  # green
    ((30, 70, 25), (50, 110, 45), (225, 225, 220), 2),  # dark matte green
    ((125, 55, 15), (170, 95, 40), (240, 240, 235), 2),  # blue
    ((30, 28, 28), (55, 52, 50), (230, 230, 230), 2),  # black
    ((35, 30, 150), (60, 60, 190), (240, 240, 240), 1),  # red
    ((205, 210, 210), (175, 185, 185), (35, 35, 35), 1),  # white
)
FINISHES = ((60, 165, 215), (75, 125, 205))  # ENIG gold, bare/OSP copper (BGR)
_CIRCLE = np.array([(math.cos(2 * math.pi * k / 40), math.sin(2 * math.pi * k / 40)) for k in range(40)])
CHIPS = ((3.2, 1.6, 0.5), (2.0, 1.25, 0.4), (1.6, 0.8, 0.3))  # 1206, 0805, 0603: length, width, end cap


def _rect(x0, y0, x1, y1):
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _circle(cx, cy, r):
    return _CIRCLE * r + (cx, cy)


def _jit(rng, color, amount):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


class Canvas:
    """Image, shine and shadow layers plus the board-mm to pixel transform."""

    def __init__(self, size, scale, angle):
        w, h = size
        self.w, self.h, self.s = w, h, scale
        c, s = math.cos(angle), math.sin(angle)
        self.A = scale * np.array([[c, -s], [s, c]])
        self.b = np.array([w / 2, h / 2]) - self.A @ np.array([w / 2, h / 2]) / scale
        self.img = np.zeros((h, w, 3), np.uint8)
        self.hi = np.zeros((h, w), np.uint8)
        self.sh = np.zeros((h, w), np.uint8)
        self.board_mm = (w / scale, h / scale)

    def px(self, pts):
        return np.asarray(pts, np.float64) @ self.A.T + self.b

    def _fixed(self, pts):
        return np.rint(self.px(pts) * 16).astype(np.int32)

    def poly(self, layer, pts, color):
        cv2.fillPoly(layer, [self._fixed(pts)], color, cv2.LINE_AA, 4)

    def line(self, layer, pts, color, width_mm, closed=False):
        t = max(1, int(round(width_mm * self.s)))
        cv2.polylines(layer, [self._fixed(pts)], closed, color, t, cv2.LINE_AA, 4)

    def text(self, text, at_mm, height_mm, color):
        x, y = self.px([at_mm])[0]
        cv2.putText(self.img, text, (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, height_mm * self.s / 22, color,
                    max(1, int(round(height_mm * self.s / 9))), cv2.LINE_AA)

    def box(self, cls, *polys):
        p = self.px(np.concatenate(polys))
        x0, y0 = np.clip(p.min(0), 0, (self.w, self.h))
        x1, y1 = np.clip(p.max(0), 0, (self.w, self.h))
        return (cls, round(float(x0), 2), round(float(y0), 2), round(float(x1), 2), round(float(y1), 2))


class Part:
    """A placed component: local mm frame (pos, 90-degree orientation), footprint, and pad anchors."""

    def __init__(self, kind, pos, orient, half, pads, params):
        self.kind, self.pos, self.orient, self.half, self.pads, self.params = kind, pos, orient, half, pads, params

    def to_board(self, pts, extra=(0.0, 0.0, 0.0)):
        """Map local points to board mm; `extra` (dx, dy, radians) displaces them first (misplacement)."""
        pts = np.asarray(pts, np.float64)
        dx, dy, a = extra
        if a or dx or dy:
            c, s = math.cos(a), math.sin(a)
            pts = pts @ np.array([[c, s], [-s, c]]) + (dx, dy)
        c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][self.orient]
        return pts @ np.array([[c, s], [-s, c]]) + self.pos

    def footprint(self):
        hx, hy = self.half if self.orient % 2 == 0 else self.half[::-1]
        return (self.pos[0] - hx, self.pos[1] - hy, self.pos[0] + hx, self.pos[1] + hy)


def _plan(rng, cv):
    """Place non-overlapping parts inside the frame; return them."""
    parts, bw, bh = [], *cv.board_mm
    target = int(rng.integers(5, 12))
    for _ in range(120):
        if len(parts) >= target:
            break
        kind = rng.choice(["chip", "chip", "chip", "soic", "header"])
        if kind == "chip":
            L, W, t = CHIPS[int(rng.integers(len(CHIPS)))]
            pout = L / 2 + 0.5 * t + 0.35
            pw = W * 1.15 + 0.1
            half, pads = (pout, pw / 2), [((-pout, 0), (-1, 0)), ((pout, 0), (1, 0))]
            params = {"L": L, "W": W, "t": t, "pin": L / 2 - 0.8 * t, "pout": pout, "pw": pw}
        elif kind == "soic":
            n = int(rng.choice([4, 7, 8]))
            xs = (np.arange(n) - (n - 1) / 2) * 1.27
            half = (n * 0.635 + 0.3, 3.75)
            pads = [((x, e * 3.75), (0, e)) for e in (-1, 1) for x in xs]
            params = {"n": n, "xs": xs, "bl": n * 1.27 + 0.3}
        else:
            n, rows = int(rng.integers(3, 9)), int(rng.integers(1, 3))
            xs = (np.arange(n) - (n - 1) / 2) * 2.54
            ys = (np.arange(rows) - (rows - 1) / 2) * 2.54
            half = (n * 1.27 + 0.2, rows * 1.27 + 0.2)
            pads = [((x, y), (0, 1 if y >= 0 else -1)) for y in ys for x in xs]
            params = {"xs": xs, "ys": ys}
        orient = int(rng.integers(4))
        pos = rng.uniform((1.0, 1.0), (bw - 1.0, bh - 1.0))
        part = Part(kind, pos, orient, half, pads, params)
        x0, y0, x1, y1 = part.footprint()
        corners = cv.px(_rect(x0 - 0.4, y0 - 0.4, x1 + 0.4, y1 + 0.4))
        if corners.min() < 6 or (corners.max(0) > (cv.w - 6, cv.h - 6)).any():
            continue
        if any(_overlap((x0, y0, x1, y1), q.footprint(), 1.2) for q in parts):
            continue
        parts.append(part)
    return parts


def _overlap(a, b, gap):
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def _background(rng, cv, board):
    mask = np.array(_jit(rng, board[0], 10), np.int32)
    g = cv2.resize(rng.integers(0, 256, (6, 8), dtype=np.uint8), (cv.w, cv.h), interpolation=cv2.INTER_LINEAR)
    fine = cv2.resize(rng.integers(0, 256, (96, 128), dtype=np.uint8), (cv.w, cv.h), interpolation=cv2.INTER_LINEAR)
    tex = (g.astype(np.int32) - 128) * 12 // 128 + (fine.astype(np.int32) - 128) * 3 // 128
    cv.img[:] = np.clip(mask + tex[..., None], 0, 255).astype(np.uint8)


def _traces(rng, cv, parts, board):
    col = _jit(rng, board[1], 8)
    bw, bh = cv.board_mm
    for part in parts:
        for (p, d) in part.pads:
            if rng.random() < 0.35:
                continue
            a = part.to_board([p])[0]
            dn = part.to_board([(p[0] + d[0], p[1] + d[1])])[0] - part.to_board([(0, 0)])[0]
            b = a + dn * rng.uniform(0.8, 3.0)
            turn = np.array([dn[1], -dn[0]]) * rng.choice([-1, 1])
            c = b + (dn + turn) * rng.uniform(0.5, 2.0)
            e = c + dn * rng.uniform(1.0, 8.0)
            cv.line(cv.img, [a, b, c, e], col, rng.uniform(0.18, 0.35))
    for _ in range(int(rng.integers(0, 4))):  # loose straight traces across the board
        y = rng.uniform(0, bh)
        cv.line(cv.img, [(-1, y), (bw * rng.uniform(0.3, 1.1), y)], col, rng.uniform(0.15, 0.3))


def _vias_and_fiducials(rng, cv, parts, board, finish):
    bw, bh = cv.board_mm
    for _ in range(int(rng.integers(2, 12))):
        c = rng.uniform((0, 0), (bw, bh))
        if any(_overlap((*c - 0.6, *c + 0.6), q.footprint(), 0.3) for q in parts):
            continue
        tented = rng.random() < 0.5
        cv.poly(cv.img, _circle(*c, 0.35), _jit(rng, board[1] if tented else finish, 10))
        cv.poly(cv.img, _circle(*c, 0.15), (25, 25, 25) if not tented else _jit(rng, board[0], 5))
    if rng.random() < 0.4:
        c = rng.uniform((1.5, 1.5), (bw - 1.5, bh - 1.5))
        if not any(_overlap((*c - 1.1, *c + 1.1), q.footprint(), 0.3) for q in parts):
            cv.poly(cv.img, _circle(*c, 1.0), (70, 85, 95))  # bare laminate clearance
            cv.poly(cv.img, _circle(*c, 0.5), _jit(rng, finish, 10))


def _silk(rng, cv, parts, board):
    col = _jit(rng, board[2], 10)
    counters = {"chip": 0, "soic": 0, "header": 0}
    for part in parts:
        x0, y0, x1, y1 = part.footprint()
        if rng.random() < 0.8:
            cv.line(cv.img, _rect(x0 - 0.35, y0 - 0.35, x1 + 0.35, y1 + 0.35), col, 0.13, closed=True)
        counters[part.kind] += 1
        prefix = {"chip": rng.choice(["R", "C"]), "soic": "U", "header": "J"}[part.kind]
        cv.text(f"{prefix}{counters[part.kind] + int(rng.integers(0, 40))}", (x0, y0 - 0.6), 0.9, col)


def _solder_color(rng):
    v = int(rng.integers(140, 185))
    return (v + int(rng.integers(-4, 8)), v, v - int(rng.integers(0, 8)))


def _chip(rng, cv, part, finish, solder, cls_bias):
    P = part.params
    L, W, t, pin, pout, pw = P["L"], P["W"], P["t"], P["pin"], P["pout"], P["pw"]
    r = rng.random()
    comp = OFFSET if r < cls_bias[OFFSET] else None
    extra = (0.0, 0.0, 0.0)
    if comp == OFFSET:
        extra = (rng.uniform(-0.15, 0.15) * t, rng.choice([-1, 1]) * rng.uniform(0.45, 0.75) * W,
                 rng.choice([-1, 1]) * rng.uniform(0.0, 0.14))
    boxes = []
    for e in (-1, 1):
        cls = comp if comp is not None else (INSUFFICIENT if rng.random() < cls_bias[INSUFFICIENT] else GOOD)
        pad = part.to_board(_rect(e * pin, -pw / 2, e * pout, pw / 2))
        cv.poly(cv.img, pad, finish)
        face = e * L / 2
        if cls == INSUFFICIENT:
            if rng.random() < 0.5:  # a dull smear instead of a fillet
                cv.poly(cv.img, part.to_board(_rect(face, -W * 0.3, face + e * 0.25 * (pout - L / 2), W * 0.3)),
                        _jit(rng, solder, 15))
            cv.poly(cv.sh, part.to_board(_rect(face - e * 0.05, -W / 2, face + e * 0.08, W / 2), extra), 150)
        else:
            cv.poly(cv.img, part.to_board(_rect(e * (pin + 0.03), -pw / 2 + 0.04, e * (pout - 0.04), pw / 2 - 0.04)),
                    solder)
            reach = pout - L / 2
            cv.poly(cv.hi, part.to_board(_rect(face, -W * 0.42, face + e * 0.35 * reach, W * 0.42)),
                    int(rng.integers(150, 230)))
            cv.poly(cv.sh, part.to_board(_rect(e * (pout - 0.25 * reach), -pw / 2, e * pout, pw / 2)),
                    int(rng.integers(50, 110)))
        term = part.to_board(_rect(face - e * t, -W / 2, face, W / 2), extra)
        boxes.append(cv.box(cls, pad, term))
    body_col = (int(rng.integers(22, 45)),) * 3 if rng.random() < 0.5 else _jit(rng, (80, 125, 165), 20)
    cv.poly(cv.img, part.to_board(_rect(-L / 2, -W / 2, L / 2, W / 2), extra), _jit(rng, (175, 178, 180), 15))
    cv.poly(cv.img, part.to_board(_rect(-L / 2 + t, -W / 2, L / 2 - t, W / 2), extra), body_col)
    return boxes


def _soic(rng, cv, part, finish, solder, cls_bias):
    P = part.params
    n, xs, bl = P["n"], P["xs"], P["bl"]
    boxes = []
    lead_col = _jit(rng, (180, 182, 185), 15)
    for e in (-1, 1):
        classes, i = [], 0
        while i < n:
            if i + 1 < n and rng.random() < cls_bias[BRIDGE]:
                classes += [BRIDGE, BRIDGE]
                i += 2
                continue
            r = rng.random()
            classes.append(INSUFFICIENT if r < cls_bias[INSUFFICIENT]
                           else OFFSET if r < cls_bias[INSUFFICIENT] + 0.6 * cls_bias[OFFSET] else GOOD)
            i += 1
        pads = [part.to_board(_rect(x - 0.3, e * 2.45, x + 0.3, e * 3.75)) for x in xs]
        feet = []
        for i, x in enumerate(xs):
            cls = classes[i]
            dx = rng.choice([-1, 1]) * rng.uniform(0.3, 0.45) if cls == OFFSET else 0.0
            cv.poly(cv.img, pads[i], finish)
            if cls != INSUFFICIENT:
                cv.poly(cv.img, part.to_board(_rect(x - 0.27, e * 2.5, x + 0.27, e * 3.7)), solder)
                cv.poly(cv.hi, part.to_board(_rect(x + dx - 0.2, e * 2.55, x + dx + 0.2, e * 2.8)),
                        int(rng.integers(150, 230)))
                cv.poly(cv.sh, part.to_board(_rect(x - 0.3, e * 3.55, x + 0.3, e * 3.75)), int(rng.integers(40, 100)))
            else:
                cv.poly(cv.sh, part.to_board(_rect(x - 0.26, e * 2.6, x + 0.26, e * 3.4)), 90)
            foot = part.to_board(_rect(x + dx - 0.21, e * 2.65, x + dx + 0.21, e * 3.3))
            cv.poly(cv.img, part.to_board(np.array([(x - 0.21, e * 1.95), (x + 0.21, e * 1.95),
                                                    (x + dx + 0.21, e * 2.65), (x + dx - 0.21, e * 2.65)])), lead_col)
            cv.poly(cv.img, foot, lead_col)
            cv.poly(cv.hi, part.to_board(_rect(x + dx - 0.06, e * 2.7, x + dx + 0.06, e * 3.25)), 90)
            feet.append(foot)
        i = 0
        while i < n:
            if classes[i] == BRIDGE:
                x0, x1 = xs[i], xs[i + 1]
                cv.poly(cv.img, part.to_board(_rect(x0 - 0.1, e * 2.75, x1 + 0.1, e * 3.45)), solder)
                cv.poly(cv.hi, part.to_board(_rect(x0 + 0.1, e * 2.95, x1 - 0.1, e * 3.15)), int(rng.integers(170, 240)))
                for j in (i, i + 1):
                    cv.poly(cv.img, feet[j], lead_col)
                boxes.append(cv.box(BRIDGE, pads[i], pads[i + 1], feet[i], feet[i + 1]))
                i += 2
            else:
                boxes.append(cv.box(classes[i], pads[i], feet[i]))
                i += 1
    cv.poly(cv.img, part.to_board(_rect(-bl / 2, -1.95, bl / 2, 1.95)), (int(rng.integers(25, 45)),) * 3)
    cv.poly(cv.img, part.to_board(_circle(-bl / 2 + 0.6, -1.2, 0.25)), (55, 55, 55))
    return boxes


def _header(rng, cv, part, finish, solder, cls_bias):
    xs, ys = part.params["xs"], part.params["ys"]
    pin_col = _jit(rng, (70, 170, 210) if rng.random() < 0.6 else (185, 185, 185), 12)
    boxes = []
    for y in ys:
        classes, i = [], 0
        while i < len(xs):
            if i + 1 < len(xs) and rng.random() < cls_bias[BRIDGE]:
                classes += [BRIDGE, BRIDGE]
                i += 2
            else:
                classes.append(INSUFFICIENT if rng.random() < cls_bias[INSUFFICIENT] else GOOD)
                i += 1
        rings = [part.to_board(_circle(x, y, 0.9)) for x in xs]
        for i, x in enumerate(xs):
            cv.poly(cv.img, rings[i], finish)
            if classes[i] == INSUFFICIENT:
                cv.poly(cv.img, part.to_board(_circle(x, y, 0.55)), (22, 22, 22))
                if rng.random() < 0.5:
                    cv.poly(cv.img, part.to_board(_circle(x + 0.25, y, 0.4)), _jit(rng, solder, 15))
            else:
                cv.poly(cv.img, part.to_board(_circle(x, y, 0.86)), solder)
                cv.line(cv.hi, part.to_board(_circle(x, y, 0.55)), int(rng.integers(120, 210)), 0.18, closed=True)
                cv.line(cv.sh, part.to_board(_circle(x, y, 0.84)), int(rng.integers(40, 90)), 0.08, closed=True)
            cv.poly(cv.img, part.to_board(_rect(x - 0.32, y - 0.32, x + 0.32, y + 0.32)), pin_col)
            cv.poly(cv.hi, part.to_board(_rect(x - 0.12, y - 0.12, x + 0.12, y + 0.12)), 80)
        i = 0
        while i < len(xs):
            if classes[i] == BRIDGE:
                x0, x1 = xs[i], xs[i + 1]
                cv.poly(cv.img, part.to_board(_rect(x0, y - 0.5, x1, y + 0.5)), solder)
                cv.poly(cv.hi, part.to_board(_rect(x0 + 0.5, y - 0.15, x1 - 0.5, y + 0.15)), int(rng.integers(150, 230)))
                for x in (x0, x1):
                    cv.poly(cv.img, part.to_board(_rect(x - 0.32, y - 0.32, x + 0.32, y + 0.32)), pin_col)
                boxes.append(cv.box(BRIDGE, rings[i], rings[i + 1]))
                i += 2
            else:
                boxes.append(cv.box(classes[i], rings[i]))
                i += 1
    return boxes


def _particles(rng, cv, parts, solder):
    bw, bh = cv.board_mm
    boxes = []
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        c = rng.uniform((1, 1), (bw - 1, bh - 1))
        if rng.random() < 0.6:  # solder ball
            r = rng.uniform(0.2, 0.45)
            pts = _circle(*c, r)
            if _blocked(cv, parts, pts):
                continue
            cv.poly(cv.sh, _circle(c[0] + 0.3 * r, c[1] + 0.3 * r, r * 1.1), 120)
            cv.poly(cv.img, pts, _jit(rng, solder, 12))
            cv.poly(cv.hi, _circle(c[0] - 0.35 * r, c[1] - 0.35 * r, 0.3 * r), int(rng.integers(180, 255)))
        else:  # fibre or flake of debris
            steps = rng.normal(0, 1, (int(rng.integers(3, 7)), 2))
            steps = steps / np.linalg.norm(steps, axis=1, keepdims=True) * rng.uniform(0.3, 0.6)
            pts = c + np.cumsum(np.vstack([np.zeros((1, 2)), steps]), axis=0)
            if _blocked(cv, parts, pts):
                continue
            width = rng.uniform(0.08, 0.16)
            col = _jit(rng, (40, 45, 55), 15) if rng.random() < 0.6 else _jit(rng, (200, 205, 210), 20)
            cv.line(cv.img, pts, col, width)
            pts = np.vstack([pts - width / 2, pts + width / 2])
        boxes.append(cv.box(PARTICLE, pts))
    return boxes


def _blocked(cv, parts, pts):
    p = cv.px(pts)
    if p.min() < 4 or (p.max(0) > (cv.w - 4, cv.h - 4)).any():
        return True
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return any(_overlap((x0, y0, x1, y1), q.footprint(), 0.5) for q in parts)


def _camera(rng, cv):
    """Composite shine/shadow, then lighting, colour cast, optics blur, sensor noise; return uint8 BGR."""
    sig = round(0.05 * cv.s, 1)
    hi = cv2.GaussianBlur(cv.hi, (0, 0), sig).astype(np.int32)
    sh = cv2.GaussianBlur(cv.sh, (0, 0), sig).astype(np.int32)
    img = cv.img.astype(np.int32)
    img = img * (255 - sh[..., None]) // 255
    img = img + hi[..., None] * (290 - img) // 290
    yy, xx = np.mgrid[0:cv.h, 0:cv.w].astype(np.float64)
    xx, yy = xx / cv.w - 0.5, yy / cv.h - 0.5
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    gain = rng.uniform(0.6, 1.3) * (1 + gx * xx + gy * yy - rng.uniform(0, 0.6) * (xx * xx + yy * yy))
    cast = np.rint(rng.normal(1.0, 0.06, 3).clip(0.8, 1.2) * 256).astype(np.int32)
    g = np.rint(np.clip(gain, 0.2, 2.0) * 256).astype(np.int32)
    img = np.clip(img * g[..., None] // 256 * cast // 256, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), round(rng.uniform(0.5, 1.8), 1))
    read, shot = rng.uniform(0.5, 2.0), rng.uniform(0.0, 0.1)
    sigma = np.sqrt(read * read + shot * img.astype(np.float64))
    noise = np.rint(rng.standard_normal(img.shape) * sigma).astype(np.int32)
    return np.clip(img.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def render(rng, size):
    """Return (image, [(class, x0, y0, x1, y1)], jpeg quality) of one random frame of `size` (w, h)."""
    cv = Canvas(size, scale=rng.uniform(30.0, 40.0) * size[0] / 1280, angle=math.radians(rng.uniform(-4.0, 4.0)))
    weights = np.array([b[3] for b in BOARDS], np.float64)
    board = BOARDS[int(rng.choice(len(BOARDS), p=weights / weights.sum()))]
    finish = _jit(rng, FINISHES[int(rng.integers(len(FINISHES)))], 12)
    solder = _solder_color(rng)
    # per-frame defect rates: some boards are clean, some are bad
    cls_bias = {INSUFFICIENT: rng.uniform(0.05, 0.25), OFFSET: rng.uniform(0.05, 0.3), BRIDGE: rng.uniform(0.04, 0.2)}
    parts = _plan(rng, cv)
    _background(rng, cv, board)
    _traces(rng, cv, parts, board)
    _vias_and_fiducials(rng, cv, parts, board, finish)
    _silk(rng, cv, parts, board)
    boxes = []
    draw = {"chip": _chip, "soic": _soic, "header": _header}
    for part in parts:
        boxes += draw[part.kind](rng, cv, part, finish, solder, cls_bias)
    boxes += _particles(rng, cv, parts, solder)
    return _camera(rng, cv), boxes, int(rng.integers(45, 81))
