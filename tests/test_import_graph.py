"""No import cycles anywhere in the packages, in-function imports included (they hide cycles from Python's own
import, not from a reader), checked on the source by ``ast``."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports anywhere in its file (``from p import m`` counts as ``p.m``
    when ``m`` is a module, else as ``p``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycle(root: Path, packages: tuple[str, ...]) -> list[str] | None:
    """One import cycle among the modules of ``packages`` (``[a, b, ..., a]``), or ``None``."""
    modules = module_names(root, packages)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def test_the_packages_have_no_import_cycle():
    assert import_cycle(ROOT, ("d4s", "annotation", "bench")) is None


@pytest.mark.parametrize("inside_a_function", [False, True])
def test_the_check_finds_a_cycle_even_behind_an_import_in_a_function(tmp_path, inside_a_function):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import helper\n")
    late = "def f():\n    from . import a\n" if inside_a_function else "import pkg.a\n"
    (tmp_path / "pkg" / "b.py").write_text(late + "def helper():\n    return 1\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg import a\n")  # depends on the cycle, is not in it
    cycle = import_cycle(tmp_path, ("pkg",))
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"}
    (tmp_path / "pkg" / "b.py").write_text("def helper():\n    return 1\n")
    assert import_cycle(tmp_path, ("pkg",)) is None
