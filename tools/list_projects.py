#!/usr/bin/env python
"""Lists the projects, their registered meta-architectures and their configs.

python tools/list_projects.py            # table of projects, models and configs
python tools/list_projects.py --json     # the same as JSON
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def discover(repo: Path = REPO) -> dict[str, dict]:
    """``{project: {"meta_archs": [...], "configs": [...]}}``; importing each project's
    ``modeling`` package registers its meta-architectures with detectron2."""
    from detectron2.modeling import META_ARCH_REGISTRY

    projects = {}
    for project_dir in sorted((repo / "projects").iterdir()):
        if not (project_dir / "modeling" / "__init__.py").is_file():
            continue
        module = f"projects.{project_dir.name}.modeling"
        importlib.import_module(module)
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
    return projects


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    projects = discover()
    if args.json:
        print(json.dumps(projects, indent=2))
        return
    for name, info in projects.items():
        print(f"{name}: meta-architectures {', '.join(info['meta_archs']) or '-'}")
        for config in info["configs"]:
            print(f"    {config}")


if __name__ == "__main__":
    main()
