"""Kernels started ahead (kernels.py): a real kernel, a real papermill run on it."""

import json

import nbformat
import papermill as pm

from yolo_compile import kernels
from yolo_compile.workflow import KERNEL_ARGS


def test_a_kernel_started_ahead_has_its_imports_and_no_names_and_counts_from_one(tmp_path):
    pool = kernels.KernelPool(tmp_path, KERNEL_ARGS)
    pool.prepare("calibrate")
    assert pool.take("export") is None  # a kernel is only handed to the stage it was started for
    pool.prepare("calibrate")
    km = pool.take("calibrate")
    assert km is not None and pool.take("calibrate") is None
    nb = nbformat.v4.new_notebook()
    code = ("import sys, os\n"
            "skip = {'In', 'Out', 'exit', 'quit', 'get_ipython', 'open', 'sys', 'os', 'skip'}\n"
            "names = ','.join(sorted(k for k in globals() if not k.startswith('_') and k not in skip))\n"
            "import threading\n"
            "warm = any(t.name == 'yolo-compile-warm' for t in threading.enumerate())\n"
            "print('cv2' in sys.modules, 'yolo_compile.calibrate' in sys.modules, os.getcwd(), names, warm, sep='|')")
    nb.cells = [nbformat.v4.new_code_cell(code)]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    try:
        pm.execute_notebook(str(src), str(out), km=km, kernel_name="python3", progress_bar=False)
    finally:
        kernels.shutdown(km)
    cell = json.loads(out.read_text())["cells"][0]
    assert cell["execution_count"] == 1
    text = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    cv2_loaded, stage_loaded, cwd, names, warming = text.strip().splitlines()[-1].split("|")
    assert cv2_loaded == "True" and stage_loaded == "True" and cwd == str(tmp_path)
    assert warming == "False"  # the first cell ran after the low-priority import thread had finished
    assert names == ""  # the warm-up leaves nothing behind in the user namespace


def test_warm_lines_import_every_stage_and_ignore_missing_modules(tmp_path):
    for stage in kernels.WARM:
        compile(kernels.warm_lines(stage), stage, "exec")
    ns: dict = {}
    exec(kernels.warm_lines("no_such_stage_module"), ns)  # an import that fails is ignored
    assert "_yc_warm" not in ns and "numpy" in __import__("sys").modules


def test_two_kernels_ahead_and_the_ones_no_longer_wanted_are_ended(tmp_path):
    from jupyter_core.utils import run_sync

    pool = kernels.KernelPool(tmp_path, KERNEL_ARGS, depth=2)
    try:
        pool.prepare("calibrate", "bandwidth", "build")  # only the first two start
        assert sorted(pool.ahead) == ["bandwidth", "calibrate"]
        first = pool.ahead["calibrate"]
        pool.prepare("bandwidth", None, "build")  # None ends the list: calibrate's kernel is no longer wanted
        assert list(pool.ahead) == ["bandwidth"]
        assert not run_sync(first.is_alive)()
        km = pool.take("bandwidth")
        assert km is not None and run_sync(km.is_alive)() and pool.ahead == {}
        kernels.shutdown(km)
    finally:
        pool.close()


def test_no_kernel_is_started_ahead_past_a_timed_stage():
    """A kernel importing beside the build's engine choice or the throughput sweep would slow what they time."""
    from yolo_compile.kernels import TIMED, ahead_of

    assert set(TIMED) == {"build", "throughput"}
    assert ahead_of(["quantize", "compare", "build"]) == ["quantize", "compare", "build"]
    assert ahead_of(["compare", "build", "throughput", "bandwidth"]) == ["compare", "build"]
    assert ahead_of(["throughput", "bandwidth"]) == ["throughput"]
    assert ahead_of(["calibrate", None, "quantize"]) == ["calibrate"]
