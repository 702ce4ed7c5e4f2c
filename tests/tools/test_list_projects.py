"""tools/list_projects.py in subprocesses, on a copy of the tool beside made-up projects: one
project that fails to import is reported by name and the others are still listed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

REGISTERS = """from detectron2.modeling import META_ARCH_REGISTRY


@META_ARCH_REGISTRY.register()
class {class_name}:
    pass
"""


def _project(root: Path, name: str, modeling: str, configs: tuple[str, ...] = ()) -> None:
    (root / "projects" / name / "modeling").mkdir(parents=True)
    (root / "projects" / name / "__init__.py").write_text("")
    (root / "projects" / name / "modeling" / "__init__.py").write_text(modeling)
    for config in configs:
        (root / "projects" / name / "configs").mkdir(exist_ok=True)
        (root / "projects" / name / "configs" / config).write_text("")


def _repo(root: Path, broken: bool) -> Path:
    """A repository with the tool and projects alpha and zeta (each registers its class); with
    ``broken``, also beta (raises on import) and gamma (registers alpha's class again)."""
    (root / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "list_projects.py", root / "tools")
    (root / "projects").mkdir()
    (root / "projects" / "__init__.py").write_text("")
    _project(root, "alpha", REGISTERS.format(class_name="Alpha"), ("alpha_shapes.py",))
    _project(root, "zeta", REGISTERS.format(class_name="Zeta"))
    if broken:
        _project(root, "beta", 'raise RuntimeError("beta is broken")\n')
        _project(root, "gamma", REGISTERS.format(class_name="Alpha"))
    return root


def _list_projects(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "list_projects.py"), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_project_that_fails_to_import_is_named_and_the_others_listed(tmp_path):
    """A project that registered a class name twice stopped the listing with a bare
    "AssertionError: An object named 'DINO' was already registered" that named no project."""
    result = _list_projects(_repo(tmp_path, broken=True))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == [
        "alpha: meta-architectures Alpha",
        "    projects/alpha/configs/alpha_shapes.py",
        "zeta: meta-architectures Zeta",
    ]
    failures = [line for line in result.stderr.splitlines() if line.startswith("project ")]
    assert failures == [
        "project beta: import failed: RuntimeError: beta is broken",
        "project gamma: import failed: AssertionError: An object named 'Alpha' was already "
        "registered in 'META_ARCH' registry! (already registered by projects.alpha.modeling)",
    ]

    result = _list_projects(tmp_path, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout) == {
        "alpha": {"meta_archs": ["Alpha"], "configs": ["projects/alpha/configs/alpha_shapes.py"]},
        "zeta": {"meta_archs": ["Zeta"], "configs": []},
    }
    assert "project beta: import failed: RuntimeError: beta is broken" in result.stderr


def test_exit_status_is_zero_when_every_project_imports(tmp_path):
    result = _list_projects(_repo(tmp_path, broken=False))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "import failed" not in result.stderr
    assert result.stdout.splitlines()[0] == "alpha: meta-architectures Alpha"
