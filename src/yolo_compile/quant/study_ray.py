"""The accuracy study's variants as Ray tasks: layer-sensitivity variants and recipe-search candidates fan out.

Used when the compare stage's `study_workers` > 1 (Ray starts embedded with that many CPUs and stops after) or a
cluster is attached (`RAY_ADDRESS`, or Ray already initialised, e.g. inside a matrix task). Each task builds one
variant with `variants.build`, the code the serial study runs, from what the driver puts once in the object
store: the FP32 model's bytes, the calibration array and the activation statistics computed once
(`quantize/activations.npz`), the judge and the labeled split. No shared filesystem is needed, and the scores
are the serial study's: the same scales (the variant's sha256 is kept to show it), the same judge.

The recipe search is a chain of decisions (keep a group float or undo it), so it stays the serial
`sensitivity.search`; only its `drop_of` runs here, evaluating ahead the candidates the search can ask next
(both outcomes of the step in flight), and reading each answer when the search asks for it.
Ray is optional (`yolo-compile[cluster]`) and imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yolo_compile import fileio
from yolo_compile.errors import CompareError

log = logging.getLogger(__name__)


def wanted(cfg) -> bool:
    """Return whether the study fans out: study_workers > 1, or a Ray cluster attached."""
    if int(getattr(cfg, "study_workers", 1) or 1) > 1:
        return True
    if os.environ.get("RAY_ADDRESS"):
        return True
    import sys

    ray = sys.modules.get("ray")  # already imported by whoever attached us to a cluster; never imported here
    return bool(ray is not None and ray.is_initialized())


@contextlib.contextmanager
def fan_out(study):
    """Yield a Fanout for the study's variants while the block runs (None: the serial study); release Ray after it.

    Study(fanout=fan_out) calls it around the sensitivity; nothing here sets attributes on the study.
    """
    if not wanted(study.cfg):
        yield None
        return
    fan = Fanout(study, int(getattr(study.cfg, "study_workers", 1) or 1))
    try:
        yield fan
    finally:
        fan.close()


@dataclass
class Shared:
    """What every variant task needs, put in the object store once."""

    fp32: bytes
    calib: np.ndarray
    stats: Any  # scales.ActivationStats
    exp: dict
    hp_dtype: str
    method: str
    input_name: str
    eval_array: np.ndarray
    judge: Any  # sensitivity.OutputJudge
    val: np.ndarray | None = None  # labeled split (None without data): the recipe search scores mAP on it
    split: Any = None
    size: int = 0
    names: dict | None = None
    backend: str = "onnxruntime"
    base: float = 0.0  # FP32 mAP50-95 on the split


def variant_task(shared: Shared, kind: str, exclude: list[str], include: list[str]) -> tuple[Any, str]:
    """Build one variant on this worker; return (judge verdict or mAP drop in points, the variant's sha256)."""
    import tempfile

    from yolo_compile import images, runs
    from yolo_compile.evaluate import accuracy
    from yolo_compile.quant import variants

    with tempfile.TemporaryDirectory(prefix="yolo-study-task-") as tmp:
        work = Path(tmp)
        src = work / "model.onnx"
        src.write_bytes(shared.fp32)
        stats = shared.stats
        dst = variants.build(src, work / "variant.onnx", shared.calib, shared.exp, shared.hp_dtype, shared.method,
                             lambda t: variants.complete(stats, src, t, shared.calib), work, exclude=exclude,
                             include=include)
        sha = fileio.sha256(dst)
        if kind == "judge":
            return shared.judge.judge(images.run_onnx(dst, shared.eval_array, shared.input_name)), sha
        dets = accuracy.predict(dst, shared.val, shared.input_name, desc="recipe search", backend=shared.backend)
        return 100 * (shared.base - accuracy.evaluate(dets, shared.split, shared.size, shared.names)["map50_95"]), sha


class Fanout:
    """Ray tasks for one study: the sensitivity's 2 x groups variants, and the recipe search's candidates."""

    def __init__(self, study, workers: int):
        try:
            import ray
        except ImportError:
            why = f"study_workers={workers}" if workers > 1 else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
            raise CompareError(f"{why} runs the study on Ray, which is not installed: pip install 'yolo-compile[cluster]', "
                               "or set study_workers=1 (and unset RAY_ADDRESS) for the serial study") from None
        from yolo_compile.cluster import connect

        self.owned = not ray.is_initialized()  # started here: stopped in close()
        self.ray = connect(None, workers if workers > 1 else None)
        self.refs: dict[tuple, Any] = {}
        self.hashes: dict[tuple, str] = {}  # (kind, exclude, include) -> sha256 of the variant built
        try:
            self._start(study, workers)
        except BaseException:
            self.close()
            raise

    def _start(self, study, workers: int) -> None:
        """Declare the task and put what every task needs in the object store, once."""
        self.limit = workers if workers > 1 else max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        # a lost worker's variant is rebuilt elsewhere: it is a pure function of what is in the object store
        self.task = self.ray.remote(num_cpus=1, max_retries=2)(variant_task)
        self.t0 = time.perf_counter()
        data = np.load(study.run_dir / study.calib["array"], mmap_mode="r")
        shared = Shared(study.src.read_bytes(), np.array(data), study.statistics([], data), study.exp, study.hp_dtype,
                        study.method(), study.input, np.asarray(study.eval_array), study.judge)
        if study.split is not None:
            shared.val, shared.split, shared.size, shared.names = np.array(study.val), study.split, study.size, study.names
            shared.backend, shared.base = study.backend, study.map_of(study.fp32, "fp32")["map50_95"]
        self.shared = self.ray.put(shared)

    def submit(self, kind: str, exclude: list[str], include: list[str]):
        key = (kind, tuple(exclude), tuple(include))
        if key not in self.refs:
            self.refs[key] = self.task.remote(self.shared, kind, list(exclude), list(include))
        return key

    def result(self, key: tuple) -> Any:
        value, sha = self.ray.get(self.refs[key])
        self.hashes[key] = sha
        return value

    def verdicts(self, groups) -> dict[str, tuple[dict, dict]]:
        """Return {group: (verdict kept float, verdict only it INT8)}, at most `limit` variants in flight."""
        from tqdm.auto import tqdm

        todo = [(g.name, i, ex, inc) for g in groups for i, (ex, inc) in enumerate(((g.patterns, []), ([], g.patterns)))]
        out: dict[str, list] = {g.name: [None, None] for g in groups}
        running: dict[Any, tuple] = {}
        with tqdm(total=len(todo), desc=f"layer sensitivity ({self.limit} Ray workers)", unit="variant") as bar:
            while todo or running:
                while todo and len(running) < self.limit:
                    name, i, ex, inc = todo.pop(0)
                    key = self.submit("judge", ex, inc)
                    running[self.refs[key]] = (name, i, key)
                done, _ = self.ray.wait(list(running), num_returns=1)
                name, i, key = running.pop(done[0])
                out[name][i] = self.result(key)
                bar.update(1)
        return {name: (v[0], v[1]) for name, v in out.items()}

    def drops(self, ranked: list[dict], groups, max_steps: int):
        """Return drop_of(exclude) for sensitivity.search, its first two candidates already submitted."""
        order = [r["group"] for r in ranked[:max_steps]]
        by_name = {g.name: g for g in groups}
        names_of: dict[tuple, list[str]] = {}
        depth = max(1, int(math.log2(self.limit + 2)) - 1)  # 2 workers: the step in flight and both its outcomes

        def submit(names: list[str]) -> tuple:
            key = self.submit("drop", [p for n in names for p in by_name[n].patterns], [])
            names_of.setdefault(key, list(names))
            return key

        def ahead(names: list[str], levels: int) -> None:
            if levels <= 0 or not names or order.index(names[-1]) + 1 >= len(order):
                return
            nxt = order[order.index(names[-1]) + 1]
            for child in (names + [nxt], names[:-1] + [nxt]):  # the step kept, or undone
                submit(child)
                ahead(child, levels - 1)

        submit([])
        if order:
            submit(order[:1])

        def drop_of(exclude: list[str]) -> float:
            key = ("drop", tuple(exclude), ())
            if key not in self.refs:
                self.submit("drop", exclude, [])
            ahead(names_of.get(key, []), depth)
            return self.result(key)

        return drop_of

    def describe(self) -> dict:
        """Return how the study ran: workers, variants built, search candidates evaluated ahead and never asked."""
        unused = [k for k in self.refs if k not in self.hashes]
        return {"workers": self.limit, "variants": len(self.hashes), "speculative_unused": len(unused),
                "seconds": round(time.perf_counter() - self.t0, 1)}

    def close(self) -> None:
        """Cancel variants no one asked for; stop Ray if this study started it."""
        for key, ref in self.refs.items():
            if key not in self.hashes:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
        if self.owned:
            self.ray.shutdown()
