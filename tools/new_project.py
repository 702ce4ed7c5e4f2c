#!/usr/bin/env python
"""Scaffolds a new project under ``projects/<name>/`` that trains out of the box.

    python tools/new_project.py my_detr                 # starts from DETR
    python tools/new_project.py my_dino --base dino     # starts from DINO

Creates ``projects/<name>/`` with ``modeling/`` (a meta-architecture subclassing the base
detector, registered with detectron2's ``META_ARCH_REGISTRY``), ``configs/`` (a config for the
bundled shapes dataset built on the base's shapes config), a ``README.md``, and
``tests/projects/test_<name>.py`` (builds the model, runs a forward pass in both modes and two
training iterations through ``tools/train_net.py``).

Every base builds on ``detr_ext`` alone: the new detector subclasses an unregistered
``detr_ext`` network (``DETRDetectorBase``, ``DeformableDETRDetectorBase`` or
``DINODetectorBase``) and its config loads a shared recipe from ``configs/common/``
(``detr_shapes.py``, ``deformable_detr_shapes.py`` or ``dino_shapes.py``), so the new project
imports no other project. Then::

    python tools/train_net.py --config-file projects/<name>/configs/<name>_shapes.py
    python -m pytest tests/projects/test_<name>.py

The first line of every file it writes is a scaffold marker naming the project,
``# detr_ext-scaffold: project=<name> ...`` (an HTML comment in ``README.md``). A project is
one this tool scaffolded when the first line of its ``__init__.py`` is that marker. ``--force``
rewrites a scaffolded project's files and only those: it refuses, even with ``--force``, an
existing ``projects/<name>`` that was not scaffolded (a bundled or hand-written project) and
any existing file it would write whose first line is not the marker of ``<name>`` (such as a
repository test named ``tests/projects/test_<name>.py``); it then writes nothing. Delete the
marker line of a scaffolded file to make the file yours: ``--force`` refuses rather than rewrite it.

The name is refused when its meta-architecture class (``my_detr`` gives ``MyDetr``) is already
registered with detectron2's ``META_ARCH_REGISTRY``, by detectron2 or by another project (read
from the ``@META_ARCH_REGISTRY.register()`` classes in ``projects/*/``, without importing
them): both could not be imported in one process.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# base name -> (module with the detector, detector class, shapes config to build on). Each class
# is an unregistered detr_ext network and each config a shared recipe in configs/common/, so a
# new project depends on detr_ext only (DESIGN.md: a project never imports another project).
BASES = {
    "detr": ("detr_ext.modeling", "DETRDetectorBase", "common/detr_shapes.py"),
    "deformable_detr": (
        "detr_ext.modeling",
        "DeformableDETRDetectorBase",
        "common/deformable_detr_shapes.py",
    ),
    "dino": ("detr_ext.modeling", "DINODetectorBase", "common/dino_shapes.py"),
}

# The first line of every file written (a comment): how --force recognises its own files.
SCAFFOLD_MARKER = (
    "detr_ext-scaffold: project={name} (tools/new_project.py --force may rewrite this)"
)
_MARKER_FIRST_LINE = re.compile(r"(?:# |<!-- )detr_ext-scaffold: project=([a-z][a-z0-9_]*)\b")

# The files a project starts with: str.format templates ({name}, {class_name}, {title},
# {base_module}, {base_class}, {base_config}, and the marker lines {py_marker} / {md_marker}).
TEMPLATES = Path(__file__).resolve().parent / "new_project_templates"


def read_template(file_name: str) -> str:
    return (TEMPLATES / file_name).read_text()


def class_name_for(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def validate_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise SystemExit(
            f"project name must be a lowercase Python identifier (e.g. 'my_detr'), got {name!r}"
        )
    return name


def marker_line(name: str, path: Path) -> str:
    """The scaffold marker of project ``name`` as the first line of ``path`` (a comment)."""
    marker = SCAFFOLD_MARKER.format(name=name)
    return f"<!-- {marker} -->" if path.suffix == ".md" else f"# {marker}"


def _marker_start(name: str, path: Path) -> str:
    """The marker line of ``path``, shortened for an error message."""
    comment = "<!-- " if path.suffix == ".md" else "# "
    return f"{comment}detr_ext-scaffold: project={name} ..."


def scaffolded_for(path: Path) -> str | None:
    """The project named by the scaffold marker on ``path``'s first line, or None when it has
    none (a file this tool did not write, a missing file, a directory)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            first_line = file.readline()
    except OSError:
        return None
    match = _MARKER_FIRST_LINE.match(first_line)
    return match.group(1) if match else None


def _first_line_of(path: Path) -> str:
    """What ``path`` starts with, for an error message."""
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        return "a directory"
    if not path.exists():
        return "no such file"
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            first_line = file.readline().rstrip("\n")
    except OSError as error:
        return f"an unreadable file ({error})"
    if not first_line:
        return "an empty first line"
    return repr(first_line if len(first_line) <= 80 else first_line[:77] + "...")


def check_overwrite(name: str, project: Path, files: list[Path], root: Path, force: bool) -> None:
    """Refuses, even with ``force``, to write over what this tool did not scaffold for ``name``:
    an existing ``project`` whose ``__init__.py`` lacks the marker (a bundled or hand-written
    project) and any existing file of ``files`` that lacks it (e.g. a repository test named
    ``tests/projects/test_<name>.py``). Without ``force`` it refuses any existing scaffold."""
    init = project / "__init__.py"
    if project.exists() and scaffolded_for(init) != name:
        raise SystemExit(
            f"{project.relative_to(root)} already exists and was not scaffolded by "
            f"tools/new_project.py: expected the first line of {init.relative_to(root)} to be "
            f"the scaffold marker {_marker_start(name, init)!r}, got "
            f"{_first_line_of(init)}; it is a bundled or hand-written project, which "
            "new_project never overwrites, even with --force; choose another name"
        )
    for path in files:
        # A link could lead the write anywhere, so a link is never the tool's own file.
        if path.is_symlink() or (path.exists() and scaffolded_for(path) != name):
            raise SystemExit(
                f"{path.relative_to(root)} already exists and was not written by "
                f"tools/new_project.py for project {name!r}: expected its first line to be the "
                f"scaffold marker {_marker_start(name, path)!r}, got "
                f"{_first_line_of(path)}; new_project never overwrites it, even with --force; "
                "choose another name or move the file away"
            )
    if not force and (project.exists() or any(path.exists() for path in files)):
        raise SystemExit(
            f"project {name!r} already exists, scaffolded by tools/new_project.py "
            f"({project.relative_to(root)} or tests/projects/test_{name}.py); pass --force to "
            "rewrite its scaffolded files"
        )


def _registry_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_meta_arch_register(node: ast.AST) -> bool:
    """``META_ARCH_REGISTRY.register(...)`` (also through a module path)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "register"
        and _registry_name(node.func.value) == "META_ARCH_REGISTRY"
    )


def registered_meta_archs(project_dir: Path, root: Path = REPO) -> dict[str, str]:
    """``{class name: "file:line"}`` of the classes that the Python files under
    ``project_dir`` register with ``META_ARCH_REGISTRY``, with ``@META_ARCH_REGISTRY.register()``
    or ``META_ARCH_REGISTRY.register(SomeClass)``. The files are read, not imported, so that a
    broken project or one that needs other packages cannot stop the check; detectron2
    registers a class under its ``__name__``."""
    found: dict[str, str] = {}
    for path in sorted(project_dir.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        where = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                if any(_is_meta_arch_register(d) for d in node.decorator_list):
                    found.setdefault(node.name, f"{where}:{node.lineno}")
            elif _is_meta_arch_register(node) and node.args:
                registered = node.args[0]
                if isinstance(registered, ast.Name):
                    found.setdefault(registered.id, f"{where}:{node.lineno}")
    return found


def check_class_name_is_free(name: str, root: Path = REPO) -> None:
    """The meta-architecture's class name must not be taken: detectron2 registers its own
    (``retina_net`` would give ``RetinaNet``) and another project may register the same one
    (``d_i_n_o`` gives ``DINO``, as ``projects/dino`` registers); one of the two would fail to
    import ("already registered"), and with it ``tools/list_projects.py`` and training."""
    from detectron2.modeling import META_ARCH_REGISTRY

    class_name = class_name_for(name)
    if class_name in META_ARCH_REGISTRY:
        owner = META_ARCH_REGISTRY.get(class_name).__module__
        # Projects imported into this process are checked below, in root's own files.
        if owner.split(".")[0] != "projects":
            raise SystemExit(
                f"project {name!r} would register the meta-architecture {class_name!r}, which "
                f"{owner} already registers with detectron2's META_ARCH_REGISTRY; choose "
                f"another name (e.g. 'my_{name}')"
            )
    projects = root / "projects"
    others = sorted(p for p in projects.iterdir() if p.is_dir()) if projects.is_dir() else []
    for other in others:
        if other.name == name or other.name == "__pycache__":
            continue
        where = registered_meta_archs(other, root).get(class_name)
        if where is not None:
            raise SystemExit(
                f"project {name!r} would register the meta-architecture {class_name!r}, which "
                f"project {other.name!r} already registers ({where}); detectron2's "
                "META_ARCH_REGISTRY holds one class per name, so the two projects could not be "
                f"imported together; choose another name (e.g. 'my_{name}')"
            )


def scaffold(name: str, base: str, root: Path = REPO, force: bool = False) -> list[Path]:
    """Writes the project files; returns their paths. ``force`` rewrites the files of a project
    this tool scaffolded, never anything else (see ``check_overwrite``)."""
    validate_name(name)
    if base not in BASES:
        raise SystemExit(f"--base must be one of {sorted(BASES)}, got {base!r}")
    base_module, base_class, base_config = BASES[base]
    project = root / "projects" / name
    test_file = root / "tests" / "projects" / f"test_{name}.py"
    templates = {
        project / "__init__.py": read_template("init.py.tmpl"),
        project / "modeling" / "__init__.py": read_template("modeling_init.py.tmpl"),
        project / "modeling" / f"{name}.py": read_template("modeling.py.tmpl"),
        # Built on a shared recipe in configs/common/ (see BASES).
        project / "configs" / f"{name}_shapes.py": read_template("config.py.tmpl"),
        project / "README.md": read_template("README.md.tmpl"),
        test_file: read_template("test.py.tmpl"),
    }
    check_overwrite(name, project, list(templates), root, force)
    check_class_name_is_free(name, root)
    values = {
        "name": name,
        "title": name.replace("_", " ").title(),
        "class_name": class_name_for(name),
        "base_module": base_module,
        "base_class": base_class,
        "base_config": base_config,
    }
    for path, template in templates.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = marker_line(name, path)
        path.write_text(template.format(py_marker=marker, md_marker=marker, **values))
    return list(templates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("name", help="project name, a lowercase identifier such as my_detr")
    parser.add_argument(
        "--base", default="detr", choices=sorted(BASES), help="detector to start from"
    )
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument(
        "--force",
        action="store_true",
        help="rewrite the files of a project this tool scaffolded (they start with its marker);\n"
        "never a bundled or hand-written project or another test",
    )
    args = parser.parse_args(argv)
    for path in scaffold(args.name, args.base, args.root, args.force):
        print(f"wrote {path.relative_to(args.root)}")
    print(
        f"\nnext: python tools/train_net.py --config-file "
        f"projects/{args.name}/configs/{args.name}_shapes.py"
        "\n(after a change, run it again with --overwrite: its output folder then holds a run)"
    )


if __name__ == "__main__":
    sys.exit(main())
