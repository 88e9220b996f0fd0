"""junit.xml and the exit codes: a stage that fails still leaves a JUnit file naming it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import nbformat

from yolo_compile import cli
from yolo_compile.pipeline import workflow
from yolo_compile.ci import hooks, junit, summary

from conftest import IMGSZ


def test_a_failed_stage_still_writes_junit(tmp_path, monkeypatch, tiny_checkpoint, image_sets):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for stage in ("export", "calibrate"):
        src = workflow.notebook_for(stage)
        nb = nbformat.read(src, as_version=4)
        if stage == "export":  # the export notebook raises in its third cell, as a broken stage does
            nb.cells = [nb.cells[1], nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('planted')")]
        nbformat.write(nb, folder / src.name)
    monkeypatch.setattr(workflow, "NOTEBOOKS", folder)
    wf = tmp_path / "two.yaml"
    wf.write_text("stages: [export, calibrate]\n")
    run_dir, manifest = workflow.run_workflow(wf, {"model": str(tiny_checkpoint), "imgsz": IMGSZ,
                                                   "calib_dir": str(image_sets["calib"]), "eval_dir": str(image_sets["eval"])},
                                              tmp_path / "runs", use_cache=False)
    assert manifest["status"] == "failed" and hooks.exit_code(manifest) == 1
    suite = ET.parse(run_dir / junit.JUNIT).getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    export, calibrate = suite.findall("testcase")
    failure = export.find("failure")
    assert export.get("name") == "export" and "ValueError: planted" in failure.text and "cell" in failure.text
    assert calibrate.find("skipped") is not None
    assert "junit.xml" in manifest["outputs"]  # hashed like every other file: verify stays clean
    assert cli.main(["verify", str(run_dir)]) == 0
    md = summary.markdown(run_dir, manifest, 1)
    assert "ValueError: planted" in md and "report.html" in md


def test_bad_baseline_input_exits_2_before_any_run(tmp_path, tiny_checkpoint, image_sets, capsys):
    args = ["run", "default", "--model", str(tiny_checkpoint), "--calib", str(image_sets["calib"]),
            "--eval", str(image_sets["eval"]), "--artifacts", str(tmp_path / "runs")]
    assert cli.main([*args, "--baseline", "accepted"]) == 2
    assert "yolo-compile accept RUN" in capsys.readouterr().err
    assert cli.main([*args, "--baseline", str(tmp_path)]) == 2  # not a run folder
    assert cli.main([*args, "--regress-size-max", "1.2"]) == 2  # a threshold without a baseline
    assert cli.main([*args, "--baseline", "accepted", "--set", "regress_map_max=abc"]) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
