"""Finds where a project's Python files reach into another project (DESIGN.md: "a project never
imports another project; what two projects share moves down into ``detr_ext`` or
``configs/common/``").

:func:`cross_project_references` parses a file with :mod:`ast` (nothing is imported or run)
and reports:

- imports of another project: ``import projects.<other>...``, ``from projects.<other>... import``,
  ``from projects import <other>`` and relative imports that climb out of the file's own
  project (``from ...<other>.configs import ...``), resolved exactly against the file's package;
- another project's files named by path in code: a string (not a docstring) containing
  ``projects/<other>`` or ``projects.<other>`` (e.g. ``get_config("projects/dino/...")`` or
  ``importlib.import_module("projects.dino.modeling")``), and a path joined from a string
  whose first component is another project (``Path(...).parents[2] / "dino/configs/x.py"``,
  ``os.path.join(root, "dino", ...)``).

Docstrings are prose and may compare a project with another one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath

__all__ = ["cross_project_references", "project_names"]

_PROJECT_IN_STRING = re.compile(r"projects[/\\.]([A-Za-z_][A-Za-z0-9_]*)")


def project_names(projects_dir: Path) -> set[str]:
    """The projects under ``projects_dir``: its sub-directories that are Python packages."""
    return {path.parent.name for path in projects_dir.glob("*/__init__.py")}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    scopes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, scopes) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _first_path_part(value: str) -> str:
    parts = PurePosixPath(value.replace("\\", "/")).parts
    return parts[0] if parts else ""


def cross_project_references(path: Path, projects_dir: Path) -> list[str]:
    """References from ``path`` (a ``.py`` file under ``projects_dir/<project>/``) to any other
    project under ``projects_dir``, as ``"<file>:<line>: <what>"`` strings; empty if none."""
    relative = path.relative_to(projects_dir)
    own = relative.parts[0]
    others = project_names(projects_dir) - {own}
    # The file's package, e.g. ("projects", "align_detr", "configs") for a config file.
    package = ("projects", *relative.parts[:-1])
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstring_nodes(tree)
    where = f"{projects_dir.name}/{relative.as_posix()}"
    found = []

    def check_module(parts: tuple[str, ...], names: list[str], node: ast.AST) -> None:
        targets = [parts]
        if parts == ("projects",):  # from projects import <other>
            targets = [(*parts, name) for name in names]
        for target in targets:
            if len(target) >= 2 and target[0] == "projects" and target[1] in others:
                found.append(f"{where}:{node.lineno}: imports {'.'.join(target)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(tuple(alias.name.split(".")), [], node)
        elif isinstance(node, ast.ImportFrom):
            module = tuple(node.module.split(".")) if node.module else ()
            if node.level:
                if node.level - 1 > len(package):
                    found.append(f"{where}:{node.lineno}: relative import beyond projects/")
                    continue
                module = (*package[: len(package) - (node.level - 1)], *module)
            check_module(module, [alias.name for alias in node.names], node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            for match in _PROJECT_IN_STRING.finditer(node.value):
                if match.group(1) in others:
                    found.append(f"{where}:{node.lineno}: names {match.group(0)!r} in a string")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            # Only the first literal joined onto a computed root names a project:
            # root / "dino" / "configs", not root / "align_detr" / "dino".
            if _is_str(node.right) and not (
                isinstance(node.left, ast.BinOp)
                and isinstance(node.left.op, ast.Div)
                and _is_str(node.left.right)
            ):
                if _first_path_part(node.right.value) in others:
                    found.append(f"{where}:{node.lineno}: joins a path into {node.right.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("join", "joinpath"):
                first = next((arg for arg in node.args if _is_str(arg)), None)
                if first is not None and _first_path_part(first.value) in others:
                    found.append(f"{where}:{node.lineno}: joins a path into {first.value!r}")
    return found
