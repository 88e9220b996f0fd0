"""accept + --baseline: an equal recompile passes, a worse recipe exits 3 and is named on the console, in junit.xml,
in the report and in the step summary; a regressed run cannot be accepted."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from yolo_compile import cli
from yolo_compile.stages import quantize
from yolo_compile.ci.baseline import compare

from helpers_ci import compile_args, workflow_file


def _run(capsys, *args) -> tuple[int, str]:
    code = cli.main(list(map(str, args)))
    return code, capsys.readouterr().out


def _spec(base, **kw) -> dict:
    return {"baseline": str(base), "run_dir": str(base), "regress_map_max": 0.5, "regress_latency_max": 1.25,
            "regress_size_max": 1.10, **kw}


def test_paired_checks_on_real_models(quantized_run, image_sets, tmp_path):
    base, same, worse = (tmp_path / n for n in ("base", "same", "worse"))
    for d in (base, same, worse):
        shutil.copytree(quantized_run, d)
    params = {"data": str(image_sets["data"])}
    rec = compare(same, _spec(base), params)  # the same files: no difference at all, whatever the noise
    checks = {c["name"]: c for c in rec["checks"]}
    assert not rec["regressed"] and not rec.get("error")
    assert checks["mAP50-95"]["drop_points"] == 0 and checks["mAP50-95"]["noise_points"] == 0
    assert checks["size"]["ratio"] == 1.0 and checks["latency"]["rounds"] == 21
    assert checks["latency"]["status"] == "passed" and checks["latency"]["ratio_low"] <= checks["latency"]["ratio"]
    shutil.rmtree(worse / "quantize")
    quantize.run(quantize.QuantizeConfig(target="cpu", recipe="float"), worse)
    rec = compare(worse, _spec(base), params)
    checks = {c["name"]: c for c in rec["checks"]}
    assert rec["regressed"] and checks["size"]["status"] == "failed" and checks["size"]["ratio"] > 2
    assert "size" in rec["summary"] and "regress_size_max 1.1" in rec["summary"]
    looser = {c["name"]: c for c in compare(worse, _spec(base, regress_size_max=5.0), params)["checks"]}
    assert looser["size"]["status"] == "passed"  # the threshold decides
    assert compare(same, _spec(base), {})["checks"][0]["status"] == "skipped"  # no labels: mAP not compared


@pytest.mark.slow  # about 60-170 s on 2 shared cores: three five-stage compiles
def test_baseline_gate(tmp_path, tiny_checkpoint, image_sets, capsys, monkeypatch):
    runs_dir = tmp_path / "runs"
    wf = workflow_file(tmp_path)
    common = [*compile_args(tiny_checkpoint, image_sets), "--artifacts", runs_dir, "--no-cache"]
    code, out = _run(capsys, "run", wf, *common)
    assert code == 0, out
    base = next(runs_dir.iterdir())
    assert cli.main(["accept", base.name, "--artifacts", str(runs_dir)]) == 0
    assert json.loads((runs_dir / "accepted.json").read_text())["run"] == base.name

    summary_md = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary_md))
    # An equal recompile, every stage executed again (no stage cache): no false alarm.
    code, out = _run(capsys, "run", wf, *common, "--baseline", "accepted", "-q")
    assert code == 0, out
    assert "vs baseline mAP50-95  ok" in out and "vs baseline size      ok" in out and "1.000x" in out
    assert "export " not in out  # -q: no stage lines
    equal = sorted(p for p in runs_dir.iterdir() if p.is_dir() and p != base)[-1]
    reg = json.loads((equal / "manifest.json").read_text())["regression"]
    assert not reg["regressed"] and reg["checks"][0]["drop_points"] == 0 and reg["checks"][0]["images"] == 6

    # A worse recipe planted on purpose: no INT8 at all, so the shipped model is ~3.4x the size.
    code, out = _run(capsys, "run", wf, *common, "--baseline", base, "--set", "recipe=float")
    assert code == 3, out
    assert "REGRESSION  size" in out and out.rstrip().splitlines()[-1].startswith("regressed: ")
    bad = sorted(p for p in runs_dir.iterdir() if p.is_dir() and p not in (base, equal))[-1]
    cases = {c.get("name"): c for c in ET.parse(bad / "junit.xml").getroot().iter("testcase")}
    assert cases["vs baseline: size"].find("failure") is not None
    assert "regress_size_max 1.1" in cases["vs baseline: size"].find("failure").text
    assert cases["vs baseline: mAP50-95"].find("failure") is None
    page = (bad / "report.html").read_text()
    assert "id='vs-baseline'" in page and "REGRESSION" in page and page.index("vs-baseline") < page.index("class='verdict")
    md = summary_md.read_text()
    assert md.count("### ") == 2 and "regressed against the baseline" in md and "📉" in md
    assert cli.main(["verify", str(bad)]) == 0
    assert cli.main(["accept", str(bad), "--artifacts", str(runs_dir)]) == 2  # regressed: refused
    assert json.loads((runs_dir / "accepted.json").read_text())["run"] == base.name

    history = tmp_path / "history.html"  # ls --html: the three runs of the one model, the accepted one starred
    assert cli.main(["ls", "--artifacts", str(runs_dir), "--html", str(history)]) == 0
    page = history.read_text()
    assert f"★ {base.name}" in page and f"<td class='regressed'>regressed</td>" in page
    assert page.count("data:image/png;base64,") == 1 and "3 runs of 1 models" in page
