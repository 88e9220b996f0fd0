"""Progress of long stages on the console: the stage kernels append events, the CLI shows them.

A stage runs in its own kernel, so its progress cannot reach the console through Python objects: when the CLI sets
`$YOLO_COMPILE_PROGRESS` to a file, `step()` (called by the stage code: each quantize candidate scored, each batch of
images scored) appends one JSON line there, and the CLI's `Watcher` thread shows it: a live bar on a terminal, one line
per step otherwise (CI logs; image batches at most one line per few seconds), nothing with -q.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ENV = "YOLO_COMPILE_PROGRESS"


def step(stage: str, text: str, done: int | None = None, total: int | None = None) -> None:
    """Record one step of a long stage (a no-op unless the CLI asked for progress); never raises."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"stage": stage, "text": text, "done": done, "total": total, "t": time.time()}) + "\n")
    except OSError:
        pass


def format_event(e: dict, width: int = 24) -> str:
    """Return one event as a console line: stage, a bar (k of n) where the total is known, the text."""
    done, total = e.get("done"), e.get("total")
    bar = ""
    if isinstance(done, int) and isinstance(total, int) and 0 < total and done <= total:
        filled = int(width * min(done, total) / total)
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
    elif isinstance(done, int):
        bar = f"{done}: "
    return f"  {e.get('stage', ''):<10} {bar}{e.get('text', '')}"


class Watcher:
    """Tail the progress file in a thread: a bar redrawn in place on a TTY, else one line per step."""

    def __init__(self, path: Path, out=None, interval: float = 0.5, line_every_s: float = 5.0):
        self.path, self.out, self.interval, self.line_every_s = Path(path), out or sys.stdout, interval, line_every_s
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self._pos, self._shown, self._last = 0, False, {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="yolo-compile-progress", daemon=True)

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def poll(self) -> list[dict]:
        """Read and show the events appended since the last poll; return them."""
        with self._lock:  # the watcher thread and the CLI's stage printer both poll
            try:
                with open(self.path, encoding="utf-8") as fh:
                    fh.seek(self._pos)
                    chunk = fh.read()
            except OSError:
                return []
            complete = chunk[: chunk.rfind("\n") + 1]
            self._pos += len(complete.encode("utf-8"))
            events = []
            for line in complete.splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
            for e in events:
                self._show(e)
            return events

    def _show(self, e: dict) -> None:
        line = format_event(e)
        if self.tty:
            self.out.write("\r\x1b[K" + line[:200])
            self._shown = True
        else:
            key = (e.get("stage"), str(e.get("text", "")).split(":")[0])
            finished = e.get("done") is not None and e.get("done") == e.get("total")
            if e.get("total") is None or finished or time.time() - self._last.get(key, 0) >= self.line_every_s:
                self.out.write(line + "\n")
                self._last[key] = time.time()
        self.out.flush()

    def clear(self) -> None:
        """Take the live bar off the line (before a stage line is printed)."""
        with self._lock:
            if self._shown:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self._shown = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except (OSError, ValueError):  # the console went away (closed stdout): progress ends, the run goes on
                return

    def stop(self) -> None:
        self._stop.set()
        self.poll()
        self.clear()


_CONSOLE: list[Watcher] = []


def start_console(out=None) -> Watcher:
    """Point $YOLO_COMPILE_PROGRESS at a fresh file (inherited by the stage kernels) and watch it until stop_console."""
    stop_console()  # one watcher at a time (a second run in the same process)
    fd, name = tempfile.mkstemp(prefix="yolo-compile-progress-", suffix=".jsonl")
    os.close(fd)
    os.environ[ENV] = name
    w = Watcher(Path(name), out).start()
    _CONSOLE.append(w)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return w


def stop_console() -> None:
    """Show what is left and stop watching, before the CLI prints its last line (CI scripts read that line)."""
    while _CONSOLE:
        w = _CONSOLE.pop()
        try:
            w.stop()
        except (OSError, ValueError):
            w._stop.set()
        os.environ.pop(ENV, None)
