"""What each stage notebook calls: logging for the notebook, a run folder check, a strict config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from yolo_compile import fileio
from yolo_compile.config import build
from yolo_compile.errors import RunFolderError


def setup(stage: str, run_dir: str, **params: Any):
    """Configure notebook logging, check run_dir, and return the stage's validated config."""
    from yolo_compile import runs
    from yolo_compile.runtimes.openvino import use_openvino_cache
    from yolo_compile.pipeline import threads
    from yolo_compile.pipeline.registry import config_class

    threads.apply()  # a matrix run's CPU share (YOLO_COMPILE_THREADS), where its task set one
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True)
    if not run_dir:
        raise RunFolderError(f"{stage}: parameter 'run_dir' is empty; pass -p run_dir artifacts/runs/<name>")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    use_openvino_cache(runs.cache_root(run_dir) / "openvino")
    return build(config_class(stage), params)


def show(result: Any, run_dir: str) -> None:
    """Display a stage result (facts, tables, plot) under the notebook's run folder."""
    from IPython.display import HTML, display

    from yolo_compile import runs
    from yolo_compile.report.html import stage_html

    display(HTML(stage_html(Path(run_dir), "", fileio.to_jsonable(result))))


def clean_executed(path: str | Path) -> bool:
    """Strip an executed notebook of per-cell timings and machine paths, keeping parameters; True if it changed.

    What stays: outputs, execution counts, cell tags (the injected-parameters cell stays visible), and the
    notebook-level papermill record (parameters, start/end time, duration, version). What goes: per-cell
    iopub/papermill timestamps (noise in every diff) and the absolute path of the source notebook.
    """
    import json

    from yolo_compile.fileio import write_text
    path = Path(path)
    nb = json.loads(path.read_text())
    before = json.dumps(nb, sort_keys=True)
    for cell in nb.get("cells", []):
        md = cell.get("metadata", {})
        md.pop("execution", None)
        md.pop("papermill", None)
        if not md.get("tags"):
            md.pop("tags", None)
    pm = nb.get("metadata", {}).get("papermill")
    if isinstance(pm, dict):
        pm["input_path"] = f"notebooks/{Path(str(pm.get('input_path', path.name))).name}"
        pm["output_path"] = path.name
        if not pm.get("environment_variables"):
            pm.pop("environment_variables", None)
    if json.dumps(nb, sort_keys=True) == before:
        return False
    write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def clean_run_notebooks(run_dir: str | Path) -> list[Path]:
    """Clean every executed notebook (NN_<stage>.ipynb) at the top of a run folder; return those changed."""
    return [p for p in sorted(Path(run_dir).glob("[0-9][0-9]_*.ipynb")) if clean_executed(p)]
