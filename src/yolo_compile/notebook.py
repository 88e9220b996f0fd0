"""What each stage notebook calls: logging for the notebook, a run folder check, a strict config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from .config import build
from .errors import RunFolderError


def setup(stage: str, run_dir: str, **params: Any):
    """Configure notebook logging, check run_dir, and return the stage's validated config."""
    from .workflow import config_class

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True)
    if not run_dir:
        raise RunFolderError(f"{stage}: parameter 'run_dir' is empty; pass -p run_dir artifacts/runs/<name>")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return build(config_class(stage), params)


def show(result: Any, run_dir: str) -> None:
    """Display a stage result (facts, tables, plot) under the notebook's run folder."""
    from IPython.display import HTML, display

    from . import runs
    from .report import stage_html

    display(HTML(stage_html(Path(run_dir), "", runs.to_jsonable(result))))
