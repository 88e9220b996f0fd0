"""Package data: the stage notebooks, workflows, and the reference detector with its image sets.

In a checkout they stay at the repository's top (notebooks/, workflows/, models/, calib_data/, data/);
a wheel carries them inside the package (yolo_compile/notebooks/...), mapped there by pyproject.toml's
package-dir, and they are found through importlib.resources. Runs go to ./artifacts/runs of the working
directory, never into the installed package.
"""

from __future__ import annotations

from importlib import resources as _resources
from pathlib import Path

from yolo_compile.errors import CompileError

DATA_DIRS = ("notebooks", "workflows", "models", "calib_data", "data")
# The repository root in a checkout (src/yolo_compile/resources.py -> the root): the one place that knows the depth.
CHECKOUT = Path(__file__).resolve().parents[2]


def path(name: str) -> Path:
    """Return the folder of one kind of package data (a name in DATA_DIRS) as a real directory."""
    if name not in DATA_DIRS:
        raise CompileError(f"unknown package data folder {name!r}; expected one of {', '.join(DATA_DIRS)}")
    packaged = _resources.files("yolo_compile") / name  # a wheel (or any install that copied the data)
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    if (CHECKOUT / name).is_dir() and (CHECKOUT / "pyproject.toml").is_file():  # a checkout or editable install
        return CHECKOUT / name
    raise CompileError(f"package data folder {name!r} not found in {packaged} nor in {CHECKOUT}: reinstall "
                       "yolo-compile from a wheel or run from a checkout")


def reference_paths() -> dict[str, str]:
    """Return the reference AOI detector and its calibration, held-out and labeled image sets."""
    return {"model": str(path("models") / "aoi_yolov8n.pt"), "calib_dir": str(path("calib_data") / "aoi"),
            "eval_dir": str(path("data") / "aoi" / "val" / "images"), "data": str(path("data") / "aoi" / "data.yaml")}


def runs_root(given: str | Path | None = None) -> Path:
    """Return where run folders go: the given folder, else ./artifacts/runs of the working directory."""
    return Path(given) if given else Path.cwd() / "artifacts" / "runs"
