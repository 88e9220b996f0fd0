"""The stages a workflow chains, each with its module, config class and notebook: one explicit table.

Papermill's engine registry is the model: a name maps to an object registered here, never to a module name built
from a string. Adding a stage is one module under `stages/`, one notebook and one line in REGISTRY.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from yolo_compile import STAGES, resources
from yolo_compile.errors import WorkflowError
from yolo_compile.stages import bandwidth, build, calibrate, compare, export, quantize, throughput


@dataclass(frozen=True)
class Stage:
    """One stage: its module (with run(cfg, run_dir)), its strict config class and its notebook."""

    name: str
    module: ModuleType
    config: type

    @property
    def notebook(self) -> Path:
        """Return notebooks/NN_<stage>.ipynb (NN is the stage's place in STAGES)."""
        return resources.path("notebooks") / f"{STAGES.index(self.name) + 1:02d}_{self.name}.ipynb"

    def fields(self) -> set[str]:
        """Return the parameter names the stage's config declares."""
        return {f.name for f in dataclasses.fields(self.config)}


REGISTRY: dict[str, Stage] = {s.name: s for s in (
    Stage("export", export, export.ExportConfig),
    Stage("calibrate", calibrate, calibrate.CalibrateConfig),
    Stage("quantize", quantize, quantize.QuantizeConfig),
    Stage("compare", compare, compare.CompareConfig),
    Stage("build", build, build.BuildConfig),
    Stage("throughput", throughput, throughput.ThroughputConfig),
    Stage("bandwidth", bandwidth, bandwidth.BandwidthConfig),
)}
assert tuple(REGISTRY) == STAGES, "REGISTRY and yolo_compile.STAGES must name the same stages in the same order"


def get(stage: str) -> Stage:
    """Return the registered stage of that name."""
    try:
        return REGISTRY[stage]
    except KeyError:
        raise WorkflowError(f"unknown stage {stage!r}; expected one of {', '.join(REGISTRY)}") from None


def config_class(stage: str) -> type:
    """Return the config dataclass of a stage."""
    return get(stage).config


def config_defaults(stage: str) -> dict[str, Any]:
    """Return each parameter of a stage's config that has a default, with that default (tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config_class(stage)):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def path_params() -> dict[str, str]:
    """Return {name: kind} of every parameter a stage config declares with config.path_field, in stage order.

    kind 'file': always a file or folder; 'json': a path only when the value ends with .json (keep_float).
    """
    found: dict[str, str] = {}
    for stage in REGISTRY.values():
        for f in dataclasses.fields(stage.config):
            if f.metadata.get("path"):
                found.setdefault(f.name, f.metadata["path"])
    return found


def is_path(name: str, value: Any) -> bool:
    """Return whether a parameter's value names a file or folder (see path_params)."""
    kind = path_params().get(name)
    return kind == "file" or (kind == "json" and str(value).endswith(".json"))


def stage_params(stage: str, params: dict) -> dict:
    """Return the subset of params that a stage's config declares."""
    names = get(stage).fields()
    return {k: v for k, v in params.items() if k in names}
