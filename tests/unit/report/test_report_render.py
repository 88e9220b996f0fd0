"""The report's notebooks, rendered when their stage ends (workflow._prerender) and reused at the end."""

import json
import shutil

from yolo_compile.report import notebooks
from yolo_compile.pipeline import workflow


def test_a_notebook_rendered_ahead_is_reused_and_a_changed_one_rendered_again(finished_run, tmp_path):
    nb = tmp_path / "02_calibrate.ipynb"
    shutil.copy(finished_run / "02_calibrate.ipynb", nb)
    data = json.loads(nb.read_text())
    data["cells"][0].setdefault("metadata", {})["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nb.write_text(json.dumps(data))  # as papermill leaves it: per-cell timings
    workflow._prerender(nb)
    assert "execution" not in json.loads(nb.read_text())["cells"][0]["metadata"]  # cleaned, as the run's end would
    ahead = notebooks.render_notebook(nb)
    assert notebooks.render_notebook(nb) is ahead and "calibrate" in ahead  # the report reuses it
    data = json.loads(nb.read_text())
    data["cells"].append({"cell_type": "markdown", "id": "later-edit", "metadata": {}, "source": "a later edit"})
    nb.write_text(json.dumps(data))
    again = notebooks.render_notebook(nb)
    assert again is not ahead and "a later edit" in again


def test_prerender_of_a_missing_or_broken_notebook_is_quiet(tmp_path):
    workflow._prerender(tmp_path / "no_such.ipynb")
    broken = tmp_path / "01_export.ipynb"
    broken.write_text("{not json")
    workflow._prerender(broken)  # the report says what went wrong at the end, not a background thread
    assert "could not render" in notebooks.notebooks_html(tmp_path, {"stages": {"export": {"notebook": broken.name}}})
