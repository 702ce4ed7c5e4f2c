#!/usr/bin/env python
"""Lists the projects, their registered meta-architectures and their configs.

python tools/list_projects.py            # table of projects, models and configs
python tools/list_projects.py --json     # the same as JSON

Each project's ``modeling`` package is imported on its own: a project that fails to import is
reported on stderr as ``project <name>: import failed: <error>``, the others are still listed,
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _describe_import_error(error: Exception) -> str:
    """``Type: message``; for a name registered twice, also who registered it first."""
    from detectron2.modeling import META_ARCH_REGISTRY

    text = f"{type(error).__name__}: {error}"
    taken = re.search(r"An object named '([^']+)' was already registered", str(error))
    if taken and taken.group(1) in META_ARCH_REGISTRY:
        owner = META_ARCH_REGISTRY.get(taken.group(1)).__module__
        text += f" (already registered by {owner})"
    return text


def discover(repo: Path = REPO) -> tuple[dict[str, dict], dict[str, str]]:
    """``({project: {"meta_archs": [...], "configs": [...]}}, {project: import error})``;
    importing each project's ``modeling`` package registers its meta-architectures with
    detectron2. A project whose import fails is in the second dict only."""
    from detectron2.modeling import META_ARCH_REGISTRY

    projects, failures = {}, {}
    for project_dir in sorted((repo / "projects").iterdir()):
        if not (project_dir / "modeling" / "__init__.py").is_file():
            continue
        module = f"projects.{project_dir.name}.modeling"
        try:
            importlib.import_module(module)
        except Exception as error:  # any error of one project must not hide the others
            failures[project_dir.name] = _describe_import_error(error)
            continue
        meta_archs = sorted(
            name
            for name, cls in META_ARCH_REGISTRY
            if cls.__module__.startswith(f"projects.{project_dir.name}.")
        )
        configs = sorted(
            str(path.relative_to(repo))
            for path in (project_dir / "configs").rglob("*.py")
            if "models" not in path.relative_to(project_dir / "configs").parts[:-1]
            and path.name != "__init__.py"
        )
        projects[project_dir.name] = {"meta_archs": meta_archs, "configs": configs}
    return projects, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    projects, failures = discover()
    if args.json:
        print(json.dumps(projects, indent=2))
    else:
        for name, info in projects.items():
            print(f"{name}: meta-architectures {', '.join(info['meta_archs']) or '-'}")
            for config in info["configs"]:
                print(f"    {config}")
    for name, error in failures.items():
        print(f"project {name}: import failed: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
