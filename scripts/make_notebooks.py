"""Regenerate notebooks/NN_<stage>.ipynb from the stage configs (four thin cells each, no outputs).

    python scripts/make_notebooks.py          # rewrite
    python scripts/make_notebooks.py --check  # exit 1 if a committed notebook differs
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

import nbformat

from yolo_compile import STAGES
from yolo_compile.pipeline import registry
from yolo_compile.pipeline.registry import config_class
from yolo_compile.pipeline.workflow import notebook_for, reference_defaults

REPO = Path(__file__).resolve().parents[1]
TITLES = {
    "export": "Export: Ultralytics .pt -> ONNX (static image size, opset >= 17, simplified)",
    "calibrate": "Calibrate: the calibration set, preprocessed exactly as inference does (memory-mapped)",
    "quantize": "Quantize: INT8 backbone/neck, head in float; calibration and quantizer (ModelOpt, NNCF) chosen by measured mAP",
    "compare": "Compare: Polygraphy runs FP32 vs quantized on held-out images; boxes and scores gated apart",
    "build": "Build: TensorRT (strongly typed, via Polygraphy) or the faster verified CPU engine (OpenVINO IR or ONNX Runtime)",
    "throughput": "Throughput: latency and images/s of the engine and the FP32 baseline, batch sweep",
    "bandwidth": "Bandwidth: bytes a frame of the compiled model for a camera set, and the link that saturates",
}


def field_help(cls: type) -> dict[str, str]:
    """Return each field's trailing `# comment` in the dataclass source."""
    src = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^\n#]*#\s*([^\n]*)$", src, re.M)}


def literal(value) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def type_name(kind) -> str:
    return "list" if typing.get_origin(kind) is tuple else kind.__name__


def parameters_cell(stage: str) -> str:
    cls = config_class(stage)
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    refs = {k: str(Path(v).relative_to(REPO)) for k, v in reference_defaults().items()}
    lines = ['run_dir: str = ""  # run folder shared by the chain, e.g. artifacts/runs/manual (required)']
    for f in dataclasses.fields(cls):
        default = refs.get(f.name, f.default)
        lines.append(f"{f.name}: {type_name(hints[f.name])} = {literal(default)}  # {helps.get(f.name, '')}")
    return "\n".join(lines)


def make(stage: str) -> nbformat.NotebookNode:
    names = [f.name for f in dataclasses.fields(config_class(stage))]
    package, _, module = registry.get(stage).module.__name__.rpartition(".")
    args = ", ".join(f"{n}={n}" for n in names)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {STAGES.index(stage) + 1}. {TITLES[stage]}\n\n"
                                      f"Logic lives in `{package}.{module}`; this notebook is its reviewable record."),
        nbformat.v4.new_code_cell(parameters_cell(stage), metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"from yolo_compile.pipeline import notebook\nfrom {package} import {module}\n\n"
                                  f"cfg = notebook.setup({stage!r}, run_dir, {args})\ncfg"),
        nbformat.v4.new_code_cell(f"result = {stage}.run(cfg, run_dir)"),
        nbformat.v4.new_code_cell("notebook.show(result, run_dir)"),
    ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stage}-{i}"
    return nb


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for stage in STAGES:
        text = nbformat.writes(make(stage)) + "\n"
        path = notebook_for(stage)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print("stale notebooks (run python scripts/make_notebooks.py):", ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
