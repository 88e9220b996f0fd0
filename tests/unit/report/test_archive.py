"""Run-folder commands on a real (small) finished run: verify catches any change, signing, ls, diff, gc, report."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from yolo_compile import cli, runs
from yolo_compile.report.archive import SIG, verify_run
from yolo_compile.quant.graph import onnx_layer_precisions as layer_precisions
from yolo_compile.report.html import facts, write_report


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    dst = tmp_path / "runs" / finished_run.name
    shutil.copytree(finished_run, dst)
    return dst


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_finished_run_verifies_clean(run, capsys):
    assert verify_run(run) == []
    assert cli.main(["verify", str(run)]) == 0
    assert "ok:" in capsys.readouterr().out


@pytest.mark.parametrize("rel", ["quantize/model.quant.onnx", "export/result.json", "report.html", "02_calibrate.ipynb"])
def test_verify_catches_a_one_byte_change_in_any_artifact(run, rel, capsys):
    _flip_one_byte(run / rel)
    assert cli.main(["verify", str(run)]) == 1
    assert f"changed: {rel}" in capsys.readouterr().out


def test_verify_catches_missing_and_added_files(run):
    (run / "export" / "model.onnx").unlink()
    (run / "quantize" / "extra.onnx").write_bytes(b"x")
    problems = verify_run(run)
    assert "missing: export/model.onnx" in problems and any(p.startswith("added: quantize/extra.onnx") for p in problems)


def test_verify_refuses_a_run_that_never_finished(run):
    m = json.loads((run / "manifest.json").read_text())
    del m["outputs"]
    (run / "manifest.json").write_text(json.dumps(m))
    assert "never finished" in verify_run(run)[0]


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (OpenSSH) not installed")
def test_manifest_signed_with_an_ssh_key_verifies_and_a_changed_manifest_does_not(run, tmp_path, capsys):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "reviewer", "-f", str(key)], check=True)
    assert cli.main(["verify", str(run), "--sign", str(key)]) == 0 and (run / SIG).is_file()
    assert cli.main(["verify", str(run), "--signer", f"{key}.pub"]) == 0
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    assert cli.main(["verify", str(run), "--signer", f"{other}.pub"]) == 1  # signed, but not by this key
    m = json.loads((run / "manifest.json").read_text())
    m["status"] = "passed "
    (run / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert cli.main(["verify", str(run), "--signer", f"{key}.pub"]) == 1
    assert "FAILED: manifest.json.sig" in capsys.readouterr().out


def test_ls_lists_runs_newest_first_and_diff_shows_what_changed(run, tmp_path, capsys):
    other = run.parent / "20260102T000000Z-0000othr"
    shutil.copytree(run, other)
    m = json.loads((other / "manifest.json").read_text())
    m.update(created_utc="2999-01-02T00:00:00+00:00", workflow="fp16")
    m["parameters"]["recipe"] = "float"
    (other / "manifest.json").write_text(json.dumps(m))
    assert cli.main(["ls", "--artifacts", str(run.parent)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "status", "workflow"]
    assert out[1].startswith(other.name) and out[2].startswith(run.name) and "mixed" in out[2]
    page = tmp_path / "diff.html"
    assert cli.main(["diff", run.name, other.name, "--artifacts", str(run.parent), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "== parameters" in text and '"mixed"' in text and '"float"' in text and "fp16" in text
    assert "== tool versions (" in text  # same tools: only a count of identical rows
    assert "tr class=changed" in page.read_text() and "http" not in page.read_text().replace("http://www.w3.org", "")


def test_gc_removes_cache_entries_no_run_references_and_keeps_referenced_ones(run, tmp_path, capsys):
    cache = tmp_path / "cache" / "tensors"
    cache.mkdir(parents=True)
    used = json.loads((run / "export" / "result.json").read_text())["onnx_sha256"]  # any hash a run records
    old = time.time() - 3 * 3600
    for name in (f"{used}.npy", f"{used}.json", f"{'a' * 64}.npy", f"{'b' * 64}.npy"):
        (cache / name).write_bytes(b"0" * 1000)
        os.utime(cache / name, (old, old))
    fresh = cache / f"{'c' * 64}.npy"  # unreferenced but new: a running compile may be writing it
    fresh.write_bytes(b"0")
    args = ["gc", "--artifacts", str(run.parent), "--cache", str(tmp_path / "cache")]
    assert cli.main([*args, "--dry-run"]) == 0 and (cache / f"{'a' * 64}.npy").exists()
    assert cli.main(args) == 0
    assert sorted(p.name for p in cache.iterdir()) == sorted([f"{used}.npy", f"{used}.json", fresh.name])
    assert "freed" in capsys.readouterr().out
    assert cli.main([*args, "--max-age-days", "0.1"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == [fresh.name]


def test_precision_strip_reads_int8_and_the_float_head_from_the_qdq_model(finished_run):
    layers = layer_precisions(finished_run / "quantize" / "model.quant.onnx", 22)
    head = [x for x in layers if x["head"]]
    assert head and any(x["precision"] == "INT8" for x in layers if not x["head"])
    assert any(x["precision"] == "FP32" and x["name"].endswith("cv3.0.2/Conv") for x in head)  # mixed keeps it float
    assert not any(x["op"] in ("QuantizeLinear", "DequantizeLinear") for x in layers)


def test_report_is_self_contained_with_summary_first_and_notebooks_collapsed(finished_run):
    page = (finished_run / "report.html").read_text()
    assert page.index("id='summary'") < page.index("<h2>Pictures") < page.index("Executed notebooks")
    assert "<svg class=\"strip\"" in page and "02_calibrate.ipynb" in page and "<details class=\"nb-in\"" in page
    assert "parameters this run used" in page  # papermill's injected cell stays open
    for attr in ("src=\"http", "href=\"http", "src='http", "href='http", "url(http", "@import", "<script src"):
        assert attr not in page


def test_a_failed_run_reports_where_and_why(run):
    runs.record_stage(run, "compare", status="failed", failed_cell=3, notebook="04_compare.ipynb",
                      error="CompareError: accuracy gate failed: score p99 0.2 > 0.05")
    page = write_report(run, "failed").read_text()
    f = facts(run, "failed")
    assert f["verdict"].startswith("failed in stage compare (cell 3): CompareError: accuracy gate failed")
    assert "FAIL" in page and "accuracy gate failed" in page[:page.index("<h2>Pictures")]


def test_report_renders_unknown_result_fields_as_tables(run):
    res = json.loads((run / "quantize" / "result.json").read_text())
    res["choice"] = {"picked": "entropy", "candidates": [{"method": "entropy", "drop": 0.1}, {"method": "max", "drop": 0.4}]}
    (run / "quantize" / "result.json").write_text(json.dumps(res))
    page = write_report(run).read_text()
    assert "<th>method</th>" in page and "<td>max</td>" in page


def test_cli_help_lists_the_archive_commands():
    out = subprocess.run([sys.executable, "-m", "yolo_compile.cli", "--help"], capture_output=True, text=True)
    for cmd in ("ls", "diff", "verify", "gc", "review"):
        assert cmd in out.stdout


def _matrix_json(folder: Path, name: str, run_names: list[str]) -> None:
    """Write matrix.json shaped as matrix.run_matrix writes it (one passed row per run, one refused row)."""
    rows = [{"key": f"{i:016x}", "label": f"tiny / cpu / r{i}", "node": "n1", "status": "passed", "run": r, "seconds": 9.0,
             "summary": {"status": "passed", "gate_passed": True, "map_drop_points": 0.1, "quantized_sha256": "0" * 64},
             "entry": {"model": "/m/tiny.pt", "target": "cpu", "recipe": f"r{i}"}} for i, r in enumerate(run_names)]
    rows.append({"key": "f" * 16, "label": "tiny / tensorrt / r0", "status": "refused", "error": "needs a node with a GPU",
                 "entry": {"model": "/m/tiny.pt", "target": "tensorrt", "recipe": "r0"}})
    folder.mkdir(parents=True)
    (folder / "matrix.json").write_text(json.dumps({"name": name, "matrix_file": "/m/matrix.yaml", "seconds": 20.0,
                                                    "cluster": {"CPU": 2.0}, "runs": rows}, indent=1))


def test_ls_groups_the_runs_of_a_matrix_under_its_name(run, tmp_path, capsys):
    a, b = run.parent / "20260103T000000Z-0000mtxa", run.parent / "20260104T000000Z-0000mtxb"
    for d in (a, b):
        shutil.copytree(run, d)
    matrices = tmp_path / "matrices"  # beside runs/, as artifacts/matrices sits beside artifacts/runs
    _matrix_json(matrices / "20260101T000000Z-old", "old", [a.name])
    _matrix_json(matrices / "20260105T000000Z-nightly", "nightly", [b.name, a.name, "20260101T000000Z-gone"])
    assert cli.main(["ls", "--artifacts", str(run.parent)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["run", "status"] and out[1].startswith(run.name), "a run of no matrix: as before"
    i = next(k for k, line in enumerate(out) if line.startswith("matrix nightly: 2 runs"))
    assert out[i - 1] == "" and "1 listed runs are not in" in out[i]
    assert out[i + 1].startswith(b.name) and out[i + 2].startswith(a.name), "in the matrix's order"
    assert not any(line.startswith("matrix old") for line in out), "a reused run belongs to the newest matrix"
    assert sum(line.startswith(a.name) for line in out) == 1 and len(out) == i + 3
    assert len({line.index("passed") for line in out if "passed" in line}) == 1, "one table: columns line up"
