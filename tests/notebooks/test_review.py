"""Interactive review: executed notebooks stay clean and re-runnable by hand; `yolo-compile review` serves them."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from yolo_compile.pipeline.workflow import notebook_for


def test_an_executed_notebook_re_executed_by_hand_reproduces_its_stage(finished_run, tmp_path):
    from nbclient import NotebookClient

    run = finished_run.parent / "rerun"  # a copy at a new place: the injected run_dir must not point back
    shutil.copytree(finished_run, run)
    path = run / notebook_for("calibrate").name
    nb = nbformat.read(path, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "run_dir = " in injected[0].source and "calib_images = 8" in injected[0].source
    assert nb.metadata.papermill["parameters"]["calib_images"] == 8  # visible parameters kept
    assert nb.metadata.papermill["input_path"] == "notebooks/02_calibrate.ipynb"  # no machine paths
    assert not any("execution" in c.metadata or "papermill" in c.metadata for c in nb.cells)  # no per-cell timings
    injected[0].source = injected[0].source.replace(str(finished_run), str(run))
    before = json.loads((run / "calibrate" / "result.json").read_text())
    (run / "calibrate" / "result.json").unlink()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(run)}}).execute()
    after = json.loads((run / "calibrate" / "result.json").read_text())
    volatile = {"seconds", "cache_reused"}  # wall time, and whether the shared cache already held the tensors
    assert {k: v for k, v in after.items() if k not in volatile} == {k: v for k, v in before.items() if k not in volatile}
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_review_serves_the_run_notebooks_in_jupyterlab_and_prints_the_url(finished_run):
    pytest.importorskip("jupyterlab", reason="pip install 'yolo-compile[review]'")
    proc = subprocess.Popen([sys.executable, "-m", "yolo_compile.cli", "review", str(finished_run), "--no-browser"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[1].strip()
        assert url.startswith("http://127.0.0.1:") and "/lab/tree/02_calibrate.ipynb?token=" in url
        base, token = url.split("/lab/")[0], url.split("token=")[1]
        deadline, listing = time.time() + 120, None
        while time.time() < deadline and listing is None:
            try:
                with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=5) as r:
                    listing = json.load(r)
            except OSError:
                time.sleep(1)
        assert listing is not None, "JupyterLab did not answer within 120 s"
        assert "02_calibrate.ipynb" in {c["name"] for c in listing["content"]}
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # the JupyterLab server went with it (it used to outlive a terminated `review` as an orphan)
    port = url.split("127.0.0.1:")[1].split("/")[0]
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).count(f"--ServerApp.port={port}")]
    assert not left, [_cmdline(p) for p in left]


def _cmdline(p) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
