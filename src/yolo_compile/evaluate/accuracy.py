"""Task accuracy on a labeled split: mAP50-95 / mAP50 overall, per class and for small objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo_compile import fileio, images
from yolo_compile.evaluate.detections import Detections, box_iou, decode
from yolo_compile.errors import CompareError

log = logging.getLogger(__name__)
SMALL_AREA = 32 * 32  # COCO's small objects, in original-image pixels


@dataclass
class LabeledSplit:
    images: list[Path]
    labels: list[np.ndarray]  # per image (n, 5): class, cx, cy, w, h normalised
    shapes: list[tuple[int, int]]  # original (h, w)


def read_split(data_yaml: str | Path, split: str = "val") -> LabeledSplit:
    """Return the images, YOLO labels and image sizes of one split of an Ultralytics data.yaml."""
    import cv2
    import yaml

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise CompareError(f"{data_yaml}: no such data.yaml; pass data=PATH to an Ultralytics dataset file, or data='' to skip mAP")
    cfg = yaml.safe_load(data_yaml.read_text()) or {}
    if split not in cfg:
        raise CompareError(f"{data_yaml}: has no '{split}' key; add '{split}: path/to/images'")
    base = data_yaml.parent / cfg.get("path", "") if not Path(cfg.get("path", "")).is_absolute() else Path(cfg["path"])
    img_dir = (base / cfg[split]).resolve()
    paths = images.list_images(img_dir)
    if not paths:
        raise CompareError(f"{img_dir}: no images for split '{split}' of {data_yaml}")
    labels, shapes = [], []
    for p in paths:
        lbl = label_path(p)
        rows = np.loadtxt(lbl, ndmin=2, dtype=np.float32) if lbl.is_file() and lbl.stat().st_size else np.zeros((0, 5), np.float32)
        if rows.shape[1] != 5:
            raise CompareError(f"{lbl}: expected 5 columns (class cx cy w h) per line, got {rows.shape[1]}")
        labels.append(rows)
        h, w = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2]
        shapes.append((h, w))
    return LabeledSplit(paths, labels, shapes)


def label_path(image: Path) -> Path:
    """Return the YOLO label file of an image: the last 'images' folder of its path swapped for 'labels'."""
    parts = list(image.parts)
    idx = len(parts) - 1 - parts[::-1].index("images") if "images" in parts[:-1] else None
    if idx is None:
        return image.with_suffix(".txt")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def letterbox_boxes(labels: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Return normalised cx,cy,w,h labels as xyxy pixels in the letterboxed size x size frame."""
    h, w = shape
    r = min(size / h, size / w)
    pad_x, pad_y = (size - round(w * r)) / 2, (size - round(h * r)) / 2
    cx, cy, bw, bh = labels[:, 1] * w * r + pad_x, labels[:, 2] * h * r + pad_y, labels[:, 3] * w * r, labels[:, 4] * h * r
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)


def open_scoring_runner(model_path: Path, backend: str = "onnxruntime"):
    """Return the runner predict() scores with (OpenVINO under its throughput hint: a stream per request, the decoding
    of one batch overlapping the next)."""
    from yolo_compile.runtimes.registry import open_runner

    return open_runner(backend, model_path, **({"hint": "throughput"} if backend == "openvino" else {}))


def predict(model_path: Path, array: np.ndarray, input_name: str = "", batch: int = 8, desc: str = "",
            backend: str = "onnxruntime", runner=None, index=None) -> list[Detections]:
    """Run a model (ONNX, or OpenVINO IR) over a uint8 or float (N, 3, S, S) array; return NMS'd detections per image.

    `runner`: one already open on that model (open_scoring_runner), reused across calls. `index`: only those images,
    in that order (gathered a batch at a time: no copy of the subset).
    """
    from tqdm.auto import tqdm

    runner = runner or open_scoring_runner(model_path, backend)
    batch = runner.static_batch or batch
    n = len(array) if index is None else len(index)
    starts = range(0, n, batch)

    def batches():
        for i in starts:
            x = images.to_float(array[i:i + batch] if index is None else array[index[i:i + batch]])
            if len(x) < batch and runner.static_batch:
                x = np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)])
            yield x

    dets = []
    outs = runner.run_many(batches())
    from ..progress import step  # console progress

    for i, out in zip(starts, tqdm(outs, total=len(starts), desc=desc or Path(model_path).name, unit="batch")):
        dets += [decode(o) for o in out[: n - i]]
        step("", f"{desc or Path(model_path).name}: images scored", len(dets), n)
    return dets


def cache_entry(model_path: Path, backend: str, array_key: str, cache_dir: str | Path) -> Path:
    """Return where a model's detections on one image set are kept: by model content, runtime version and image set."""
    import hashlib

    from yolo_compile.runtimes.registry import runtime_version

    text = f"{fileio.sha256(model_path)}|{backend}|{runtime_version(backend)}|{array_key}"
    return Path(cache_dir) / "detections" / f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.npz"


def load_detections(path: Path) -> list[Detections] | None:
    """Return the detections kept at path, or None where there are none (a damaged entry is recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            cut = np.cumsum(z["counts"])[:-1]
            return [Detections(b, s, c) for b, s, c in zip(np.split(z["boxes"], cut), np.split(z["scores"], cut),
                                                           np.split(z["classes"], cut))]
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: unreadable detection cache entry (%s): recomputing", path, e)
        return None


def store_detections(path: Path, dets: list[Detections]) -> None:
    """Keep detections at path (written, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, counts=np.array([len(d.scores) for d in dets], np.int64),
                     boxes=np.concatenate([d.boxes for d in dets]).reshape(-1, 4) if dets else np.zeros((0, 4), np.float32),
                     scores=np.concatenate([d.scores for d in dets]) if dets else np.zeros(0, np.float32),
                     classes=np.concatenate([d.classes for d in dets]) if dets else np.zeros(0, np.int64))


def predict_cached(model_path: Path, array: np.ndarray, array_key: str, cache_dir: str | Path | None, *,
                   backend: str = "onnxruntime", desc: str = "") -> list[Detections]:
    """Return predict()'s detections, kept in cache_dir/detections/ by model content, runtime and image set.

    A model file's detections on one image set are a pure function of those bytes and the runtime's version:
    the quantize stage's scoring and the compare stage's gate run the same model on the same split once.
    """
    if cache_dir is None or not array_key:
        return predict(model_path, array, desc=desc, backend=backend)
    path = cache_entry(model_path, backend, array_key, cache_dir)
    dets = load_detections(path)
    if dets is None:
        dets = predict(model_path, array, desc=desc, backend=backend)
        store_detections(path, dets)
    return dets


def matched(dets: list[Detections], split: LabeledSplit, size: int) -> dict[str, list[tuple]]:
    """Return per image, for all objects and for small ones, (tp, conf, predicted class, target class) arrays.

    The matching is per image, so any subset or bootstrap resample of images reuses it: evaluate() is then
    one average_precision over the concatenated rows.
    """
    iouv = np.linspace(0.5, 0.95, 10)
    rows: dict[str, list[tuple]] = {"all": [], "small": []}
    for d, lbl, shape in zip(dets, split.labels, split.shapes):
        if d is None:  # an image not scored (a candidate stopped early): a subset that includes it fails loudly
            rows["all"].append(None)
            rows["small"].append(None)
            continue
        gt = letterbox_boxes(lbl, shape, size)
        gcls = lbl[:, 0].astype(np.int64)
        r2 = min(size / shape[0], size / shape[1]) ** 2
        g_small = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) / r2 < SMALL_AREA
        d_small = (d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1]) / r2 < SMALL_AREA
        for key, gmask, dmask in (("all", slice(None), slice(None)), ("small", g_small, d_small)):
            tp = _match(d.boxes[dmask], d.classes[dmask], gt[gmask], gcls[gmask], iouv)
            rows[key].append((tp, d.scores[dmask], d.classes[dmask], gcls[gmask]))
    return rows


def map_of_rows(rows: list[tuple], idx=None) -> tuple[float | None, float | None, int, object]:
    """Return (mAP50-95, mAP50, targets, (AP per class x threshold, classes)) over the per-image rows idx (all when None)."""
    pick = rows if idx is None else [rows[i] for i in idx]
    tcls_all = np.concatenate([r[3] for r in pick]) if pick else np.zeros(0, np.int64)
    if not len(tcls_all):
        return None, None, 0, None
    ap, classes = average_precision(np.concatenate([r[0] for r in pick]), np.concatenate([r[1] for r in pick]),
                                    np.concatenate([r[2] for r in pick]), tcls_all)
    return float(ap.mean()), float(ap[:, 0].mean()), int(len(tcls_all)), (ap, classes)


def evaluate(dets: list[Detections], split: LabeledSplit, size: int, names: dict) -> dict:
    """Return mAP50-95, mAP50, per-class AP and small-object mAP of detections against the split's labels."""
    rows = matched(dets, split, size)
    out = {}
    for key in ("all", "small"):
        m, m50, n, res = map_of_rows(rows[key])
        out[key] = {"map50_95": m, "map50": m50, "targets": n}
        if key == "all" and res is not None:
            ap, classes = res
            out["per_class"] = {str(names.get(int(c), c)): {"map50_95": float(ap[i].mean()), "ap50": float(ap[i, 0])}
                                for i, c in enumerate(classes)}
    return {"map50_95": out["all"]["map50_95"], "map50": out["all"]["map50"], "targets": out["all"]["targets"],
            "per_class": out.get("per_class", {}), "small": out["small"]}


def agreement_map(ref: list[Detections], test: list[Detections], conf: float = 0.25) -> float:
    """Return the mAP50-95 of test detections scored against reference detections (conf >= conf) as labels.

    A label-free measure of how far a variant moved from FP32 that, unlike matching at IoU 0.5, also sees
    box localisation; test detections should be decoded at a low confidence, as for any mAP.
    """
    iouv = np.linspace(0.5, 0.95, 10)
    tp, scores, pcls, tcls = [], [], [], []
    for r, t in zip(ref, test):
        keep = r.scores >= conf
        tp.append(_match(t.boxes, t.classes, r.boxes[keep], r.classes[keep], iouv))
        scores.append(t.scores)
        pcls.append(t.classes)
        tcls.append(r.classes[keep])
    tcls_all = np.concatenate(tcls)
    if not len(tcls_all):
        return 1.0
    ap = average_precision(np.concatenate(tp), np.concatenate(scores), np.concatenate(pcls), tcls_all)[0]
    return float(ap.mean())


AP_RECALL = np.linspace(0, 1, 101)  # COCO's 101-point interpolation


def average_precision(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                      eps: float = 1e-16) -> tuple[np.ndarray, np.ndarray]:
    """Return (AP per labeled class x IoU threshold, those classes): the arithmetic of Ultralytics' `ap_per_class`.

    The same sort, cumulative sums, precision envelope and 101-point trapezoid, so mAP50-95 equals what
    `model.val()` reports (tests/unit/evaluate/test_accuracy.py checks it against Ultralytics' own function), without
    importing Ultralytics and torch into the stages that only score.
    """
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    order = np.argsort(-conf)
    tp, pred_cls = tp[order], pred_cls[order]
    classes, counts = np.unique(target_cls, return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    for ci, (c, n_l) in enumerate(zip(classes, counts)):
        mine = pred_cls == c
        if not mine.any():
            continue
        tpc = tp[mine].cumsum(0)
        fpc = (1 - tp[mine]).cumsum(0)
        recall, precision = tpc / (n_l + eps), tpc / (tpc + fpc)
        for j in range(tp.shape[1]):
            r = recall[:, j]
            mrec = np.concatenate(([0.0], r, [r[-1]], [1.0]))
            mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision[:, j], [0.0], [0.0])))))
            ap[ci, j] = trapezoid(np.interp(AP_RECALL, mrec, mpre), AP_RECALL)
    return ap, classes


def _match(boxes: np.ndarray, pcls: np.ndarray, gt: np.ndarray, gcls: np.ndarray, iouv: np.ndarray) -> np.ndarray:
    """Return the (detections, thresholds) correctness matrix: greedy by score, one target per detection."""
    correct = np.zeros((len(boxes), len(iouv)), bool)
    if not len(boxes) or not len(gt):
        return correct
    iou = box_iou(gt, boxes) * (gcls[:, None] == pcls[None, :])
    claimed = np.zeros((len(gt), len(iouv)), bool)
    for j in np.flatnonzero((iou >= iouv[0]).any(0)):  # detections arrive sorted by score (NMS order)
        avail = np.where(claimed, 0.0, iou[:, j, None])
        k = avail.argmax(0)
        correct[j] = avail[k, range(len(iouv))] >= iouv
        claimed[k, range(len(iouv))] |= correct[j]
    return correct
