"""The README's commands are tests: each line of its "Using it" block runs as written, from a folder outside the
checkout, with the binary-aoi detector standing in for `my.pt` (another model, other images, other classes)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_compile import resources

README = Path(__file__).resolve().parents[2] / "README.md"


def using_it_lines() -> list[str]:
    """Return the command lines of the README's "Using it" code block, comments stripped."""
    text = README.read_text()
    block = re.search(r"## Using it\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Using it' bash block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith(".venv/bin/yolo-compile")]


def test_the_using_it_block_is_what_this_test_runs():
    lines = using_it_lines()
    assert any("--model my.pt" in line and "data=" not in line for line in lines)  # the gate-skipped case
    assert all(line.split()[1] in ("run", "params") for line in lines)


@pytest.mark.slow
def test_every_using_it_command_runs_as_written_outside_the_checkout(tmp_path):
    mine = tmp_path / "mine"  # the user's own folder, not the checkout
    (mine / "my").mkdir(parents=True)
    shutil.copyfile(resources.path("models") / "binary_aoi_yolov8n.pt", mine / "my.pt")
    shutil.copytree(resources.path("calib_data") / "binary_aoi", mine / "frames")
    shutil.copytree(resources.path("data") / "binary_aoi" / "val", mine / "my" / "val")
    shutil.copytree(mine / "my" / "val" / "images", mine / "held_out")
    (mine / "my" / "data.yaml").write_text((resources.path("data") / "binary_aoi" / "data.yaml").read_text())
    env = {**os.environ, "YOLO_COMPILE_CACHE": str(tmp_path / "cache")}
    runs_made: list[Path] = []
    for line in using_it_lines():
        argv = shlex.split(line)[1:]
        if "<run>" in line:  # a searched recipe from an earlier run: the first run's folder, as a recipe search writes it
            run = runs_made[0]
            (run / "compare").chmod(0o755)
            (run / "compare" / "nodes_to_exclude.json").write_text(json.dumps(["/model\\.18/"]))
            argv = [a.replace("artifacts/runs/<run>", str(run.relative_to(mine).parent / run.name)) for a in argv]
        out = subprocess.run([sys.executable, "-m", "yolo_compile.cli", *argv], cwd=mine, env=env, capture_output=True,
                             text=True, timeout=1200)
        assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        if argv[0] != "run":
            assert "map_drop_max" in out.stdout  # params lists every parameter
            continue
        run = Path(out.stdout.strip().splitlines()[-1].split(": ", 1)[1]).parent
        assert run.is_relative_to(mine / "artifacts" / "runs")
        runs_made.append(run)
        manifest = json.loads((run / "manifest.json").read_text())
        if "--model" in argv and "data=" not in line:
            compare = json.loads((run / "compare" / "result.json").read_text())
            assert manifest["parameters"].get("data", "") == "" and not compare["accuracy"].get("drop_points")
            assert any("mAP gate" in s for s in compare["skipped"]), compare["skipped"]
            assert "mAP gate" in (run / "report.html").read_text()
        if "data=my/data.yaml" in line:
            compare = json.loads((run / "compare" / "result.json").read_text())
            assert compare["accuracy"]["fp32"]["map50_95"] > 0.5
