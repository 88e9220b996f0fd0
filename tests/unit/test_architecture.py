"""The package's import graph, read from the source with ast: no circles, nothing imported upward.

Every import counts, also those inside functions (they hide circles, they do not remove them). A module's layer is
that of its subpackage (or of itself, at the top); a module may import its own subpackage's modules and anything in
a lower layer, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import yolo_compile

PACKAGE = Path(yolo_compile.__file__).parent
# Lowest first. Within a layer, no unit imports another (only its own subpackage's modules).
LAYERS = (
    ("yolo_compile", "errors"),  # the package root holds data only (STAGES, __version__)
    ("resources", "config", "cluster", "fileio"),
    ("runs",),
    ("images", "plots", "progress"),
    ("runtimes",),
    ("evaluate",),
    ("gpu", "reference", "qat"),
    ("quant", "bandwidth"),
    ("stages",),
    ("report",),
    ("ci",),  # junit.xml, step summary, the baseline regression gate, history: called by the pipeline's hooks
    ("pipeline",),
    ("cli",),
)
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Return the package modules `name` imports (module-level and inside functions alike)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def unit(module: str) -> str:
    """Return the layer unit of a module: its first name under yolo_compile (or the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_unit_has_a_layer(graph):
    assert sorted({unit(m) for m in graph} - set(LAYER)) == []


def test_no_import_circles(graph):
    state: dict[str, int] = {}
    circles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if d.startswith(m + "."):  # a package's __init__ importing its own modules is not a circle
                continue
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_nothing_is_imported_upward(graph):
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if unit(m) != unit(d) and LAYER[unit(d)] >= LAYER[unit(m)]]
    assert upward == []


def test_runtimes_import_base_and_never_each_other(graph):
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("yolo_compile.runtimes.")
           and not m.endswith((".registry", ".timing")) for d in deps
           if d.startswith("yolo_compile.runtimes.") and d != "yolo_compile.runtimes.base"]
    assert bad == []


def test_no_stage_is_imported_below_the_pipeline(graph):
    bad = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
           if unit(d) == "stages" and unit(m) not in ("stages", "pipeline", "cli")]
    assert bad == []


def test_no_module_name_is_built_from_a_string():
    """Registries, not f"yolo_compile.{...}": a module found by a formatted name escapes this very test."""
    bad = [f"{name}:{node.lineno}" for name, path in modules().items() for node in ast.walk(ast.parse(path.read_text()))
           if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.Constant) and str(v.value).endswith("yolo_compile.")
                                                       for v in node.values)]
    assert bad == []


def test_modules_are_readable_in_one_sitting():
    """About 300 lines a module; the scene generators (reference/) may be longer."""
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > 330 and unit(name) != "reference"}
    assert long == {}


def test_pyproject_lists_every_subpackage():
    """setuptools is given the package list explicitly: a subpackage missing there is missing from the wheel."""
    import tomllib

    pyproject = PACKAGE.parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("installed from a wheel: no pyproject.toml beside the package")
    listed = set(tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"])
    code = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert sorted(code - listed) == []
