"""Console progress: the quantize stage's candidates (k of n and the score) and images scored reach the console."""

from __future__ import annotations

import io

from yolo_compile import progress
from yolo_compile.stages import quantize



class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quantize_candidates_reach_the_console(run_copy, image_sets, tmp_path, monkeypatch):
    events = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(events))
    quantize.run(quantize.QuantizeConfig(target="cpu", recipe="mixed", quantizer="modelopt", calibration_method="auto",
                                         accept_drop=0, search_budget=0, eval_dir=str(image_sets["eval"])), run_copy)
    log = io.StringIO()
    got = progress.Watcher(events, log).poll()
    cands = [e for e in got if e["stage"] == "quantize"]
    assert [e["done"] for e in cands] == [1, 2, 3, 4] and {e["total"] for e in cands} == {4}
    lines = log.getvalue().splitlines()  # not a terminal: one line per candidate, image batches thinned
    assert sum("candidate modelopt" in line for line in lines) == 4
    assert any("] 4/4 candidate modelopt percentile-99.999: drop " in line for line in lines)
    assert any("images scored" in e["text"] for e in got)
    term = _Terminal()
    watcher = progress.Watcher(events, term)
    watcher.poll()
    watcher.clear()
    assert term.getvalue().count("\r\x1b[K") >= len(got) and "\n" not in term.getvalue()


def test_no_progress_file_no_output(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.step("quantize", "candidate x", 1, 2)  # a notebook run by hand: nothing written anywhere
    assert not list(tmp_path.iterdir())
