"""Shared by the benchmarks: the tiny model for quick runs, process-tree memory, tables, README sections."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_args(root: Path) -> list[str]:
    """Build a tiny YOLOv8n checkpoint and image sets under root (as the tests do); return CLI args for them."""
    sys.path.insert(0, str(REPO / "tests"))
    import conftest  # the tests' fixture builders: real small model and images, no downloads

    if not (root / "model" / "tiny_yolov8n.pt").is_file():
        conftest.make_images(root / "calib", 10, seed=1)
        conftest.make_images(root / "eval", 4, seed=2)
        conftest.make_labeled_split(root / "labeled", 6, seed=3)
        factory = type("F", (), {"mktemp": lambda self, n: (root / n).mkdir(parents=True, exist_ok=True) or root / n})()
        conftest.tiny_checkpoint.__wrapped__(factory)
    return ["--model", str(root / "model" / "tiny_yolov8n.pt"), "--calib", str(root / "calib"), "--eval", str(root / "eval"),
            "--set", f"imgsz={conftest.IMGSZ}", "--set", "batch_sizes=1,2", "--set", "max_seconds=0.5",
            "--set", f"data={root / 'labeled' / 'data.yaml'}", "--set", "recipes=false", "--set", "sensitivity=false"]


class PeakMemory:
    """Sample the summed RSS of this process's descendants (kernels included) every 0.5 s; .peak_gib when stopped."""

    def __enter__(self) -> "PeakMemory":
        import psutil

        self.peak, self._stop = 0, False
        me = psutil.Process()

        def sample() -> None:
            while not self._stop:
                total = 0
                for p in me.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
                time.sleep(0.5)

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30


def table(rows: list[list], header: list[str]) -> str:
    """Return rows as a plain text table."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line() -> str:
    """Return the machine a figure was measured on, and when, as one line."""
    sys.path.insert(0, str(REPO / "src"))
    from yolo_compile import runs

    dev = runs.device_info()
    return (f"Machine: {dev.get('cpu')}, {dev.get('cores')} cores, {dev.get('memory_gib')} GiB; "
            f"INT8 instructions: {dev.get('int8_isa')}. "
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


def write_section(name: str, title: str, command: str, text: str) -> None:
    """Put text into bench/README.md between its `<!-- name:start/end -->` markers (appended when absent), atomically."""
    import os

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    readme = REPO / "bench" / "README.md"
    old = readme.read_text() if readme.is_file() else "# Benchmarks\n\nLatest figures; each section names the command that regenerates it.\n"
    section = f"{start}\n## {title}\n\n`{command}`\n\n{text}\n{end}"
    new = old.split(start)[0] + section + old.split(end)[1] if start in old and end in old else old.rstrip() + "\n\n" + section + "\n"
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, readme)
