"""The house rules of docs/architecture.md, checked on the source: imports only flow one way
between rooms, argparse only in the CLI, no ``assert`` for checks, files of one idea."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aiokd"
ROOMS = ["errors", "io", "lock", "students", "config", "data", "model", "distill", "train",
         "formats", "inference", "evaluation", "cli"]
"""Every room may import only rooms before it (``__init__`` and ``__main__`` stand outside)."""


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8")))
            for path in sorted(PACKAGE.rglob("*.py"))]


def room(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def runtime_imports(tree: ast.Module) -> list[str]:
    """``aiokd`` modules imported at run time (not under ``if TYPE_CHECKING:``)."""
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiokd"):
            found += ([f"aiokd.{alias.name}" for alias in node.names]
                      if node.module == "aiokd" else [node.module])
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("aiokd")]
    return found


def test_every_module_lives_in_a_known_room():
    assert {room(path) for path, _ in modules()} <= {*ROOMS, "__init__", "__main__", "datasets"}


def test_imports_flow_one_way_between_rooms():
    backward = []
    for path, tree in modules():
        here = room(path)
        if here not in ROOMS:
            continue
        for name in runtime_imports(tree):
            there = (name.split(".") + ["__init__"])[1]
            if there in ROOMS and ROOMS.index(there) > ROOMS.index(here):
                backward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert backward == []


def test_argparse_only_in_the_cli():
    users = [path.name for path, tree in modules() for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and "argparse" in {getattr(node, "module", None),
                                *(alias.name for alias in node.names)}]
    assert users == ["cli.py"]


def test_no_assert_in_the_package():
    found = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path, tree in modules()
             for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert found == []


def test_no_package_file_over_500_lines():
    long = {str(path.relative_to(PACKAGE)): n for path, _ in modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
