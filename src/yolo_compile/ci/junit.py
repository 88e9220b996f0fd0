"""run_dir/junit.xml: one test suite per run, one test case per stage and per gate check."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from .. import fileio, runs

JUNIT = "junit.xml"


def _result(run_dir: Path, stage: str) -> dict:
    try:
        return json.loads((run_dir / stage / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def gate_cases(run_dir: Path, manifest: dict) -> list[dict]:
    """Return the gate checks as cases {classname, name, status passed|failed|skipped, message}."""
    stages = manifest.get("stages") or {}
    cmp = _result(run_dir, "compare")
    cases = []
    if "compare" in stages or cmp:
        if not cmp:
            why = f"the compare stage {stages.get('compare', {}).get('status', 'did not run')}: no gate result"
            for name in ("tensor comparison", "mAP gate"):
                cases.append({"classname": "gate", "name": name, "status": "skipped", "message": why})
        else:
            reasons = [str(r) for r in cmp.get("reasons") or []]
            tensor = [r for r in reasons if "mAP" not in r]
            cases.append({"classname": "gate", "name": "tensor comparison", "status": "failed" if tensor else "passed",
                          "message": "; ".join(tensor) or f"boxes and scores within tolerance on {cmp.get('images')} images"})
            acc = cmp.get("accuracy") or {}
            mapr = [r for r in reasons if "mAP" in r]
            if acc:
                cases.append({"classname": "gate", "name": "mAP gate", "status": "failed" if mapr else "passed",
                              "message": "; ".join(mapr) or f"mAP50-95 drop {acc.get('drop_points', 0):.2f} points <= "
                                                             f"{(cmp.get('thresholds') or {}).get('map_drop_max')}"})
            else:
                cases.append({"classname": "gate", "name": "mAP gate", "status": "skipped",
                              "message": "no labeled split (data=): the mAP gate did not run"})
    reg = manifest.get("regression") or {}
    for check in reg.get("checks") or []:
        cases.append({"classname": "regression", "name": f"vs baseline: {check['name']}", "status": check["status"],
                      "message": check["message"]})
    if reg.get("error"):
        cases.append({"classname": "regression", "name": "vs baseline", "status": "failed", "message": reg["error"]})
    return cases


def stage_cases(manifest: dict) -> list[dict]:
    """Return one case per stage the workflow lists (a stage never reached is skipped)."""
    stages = manifest.get("stages") or {}
    cases = []
    for stage in manifest.get("stage_list") or list(stages):
        info = stages.get(stage)
        if not info:
            cases.append({"classname": "stage", "name": stage, "status": "skipped", "message": "not reached: an earlier stage failed"})
            continue
        status = info.get("status")
        msg = info.get("error") or info.get("reason") or ""
        if status == "failed" and info.get("failed_cell"):
            msg = f"cell {info['failed_cell']}: {msg}"
        cases.append({"classname": "stage", "name": stage, "status": "failed" if status == "failed" else
                      "skipped" if status == "skipped" else "passed", "message": msg,
                      "time": info.get("wall_seconds", info.get("seconds", 0)) or 0})
    return cases


def write(run_dir: str | Path, manifest: dict | None = None) -> Path:
    """Write run_dir/junit.xml from the manifest and the results; return its path."""
    run_dir = Path(run_dir)
    manifest = manifest if manifest is not None else runs.read_manifest(run_dir)
    cases = stage_cases(manifest) + gate_cases(run_dir, manifest)
    suite = ET.Element("testsuite", name=f"yolo-compile {manifest.get('workflow', '')} {run_dir.name}".strip(),
                       tests=str(len(cases)), failures=str(sum(c["status"] == "failed" for c in cases)),
                       skipped=str(sum(c["status"] == "skipped" for c in cases)), errors="0",
                       time=f"{sum(float(c.get('time', 0)) for c in cases):.2f}",
                       timestamp=str(manifest.get("created_utc", "")))
    props = ET.SubElement(suite, "properties")
    for k in ("run_dir", "workflow", "git_commit"):
        ET.SubElement(props, "property", name=k, value=str(manifest.get(k) or ""))
    for c in cases:
        el = ET.SubElement(suite, "testcase", classname="yolo-compile." + c["classname"], name=c["name"],
                           time=f"{float(c.get('time', 0)):.2f}")
        if c["status"] == "failed":
            ET.SubElement(el, "failure", message=c["message"][:1000], type=c["classname"]).text = c["message"]
        elif c["status"] == "skipped":
            ET.SubElement(el, "skipped", message=c["message"][:1000])
        elif c["message"]:
            ET.SubElement(el, "system-out").text = c["message"]
    root = ET.Element("testsuites", name="yolo-compile")
    root.append(suite)
    ET.indent(root)
    return fileio.write_text(run_dir / JUNIT, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
