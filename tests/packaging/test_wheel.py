"""The wheel works anywhere: built from the checkout, installed into a fresh venv elsewhere, compiling from an empty folder."""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMGSZ

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_compiles_from_an_empty_folder(tmp_path, tiny_checkpoint, image_sets):
    pytest.importorskip("build", reason="pip install build (the dev extra)")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, cwd=REPO)
    (wheel,) = dist.glob("yolo_compile-*.whl")

    # A fresh venv outside the checkout; its dependencies come from this environment through a .pth (paths
    # added that way do not run that folder's own .pth files, so this checkout's editable install stays out).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    (purelib / "deps_from_dev_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["YOLO_COMPILE_CACHE"] = str(tmp_path / "cache")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, env=env)

    empty = tmp_path / "work"
    empty.mkdir()
    probe = ("import yolo_compile, jupyter_client.kernelspec as k; from yolo_compile import resources; "
             "print(yolo_compile.__file__); print(resources.path('notebooks')); "
             "print(k.KernelSpecManager().get_kernel_spec('python3').argv[0])")
    where, notebooks, kernel_python = subprocess.check_output([str(py), "-c", probe], text=True, env=env,
                                                              cwd=empty).split()
    assert where.startswith(str(venv)) and notebooks.startswith(str(venv)), "yolo_compile must import from the wheel"
    assert Path(kernel_python).parent == py.parent, "the notebooks' kernel must be the new venv's python"

    cli = str(venv / "bin" / "yolo-compile")
    out = subprocess.run([cli, "run", "default", "--model", str(tiny_checkpoint), "--calib", str(image_sets["calib"]),
                          "--eval", str(image_sets["eval"]), "--set", f"data={image_sets['data']}",
                          "--set", f"imgsz={IMGSZ}", "--set", "batch_sizes=1", "--set", "max_seconds=0.3",
                          "--set", "target=cpu", "--set", "recipes=false", "--set", "sensitivity=false",
                          "--set", "search_steps=1"], capture_output=True, text=True, env=env, cwd=empty, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = (empty / "artifacts" / "runs").iterdir()
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "passed" and (run / "report.html").is_file()
    listing = subprocess.run([cli, "ls"], capture_output=True, text=True, env=env, cwd=empty)
    assert run.name in listing.stdout and "passed" in listing.stdout
    assert subprocess.run([cli, "verify", str(run)], capture_output=True, env=env, cwd=empty).returncode == 0
    assert sorted(p.name for p in empty.iterdir()) == ["artifacts"], "nothing but artifacts/ lands in the working folder"
