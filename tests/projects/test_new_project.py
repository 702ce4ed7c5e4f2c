"""tools/new_project.py scaffolds a project whose own generated tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import new_project  # noqa: E402

from .project_references import cross_project_references  # noqa: E402


def test_name_validation():
    with pytest.raises(SystemExit, match="lowercase Python identifier"):
        new_project.scaffold("My-Detr", "detr", root=REPO)
    with pytest.raises(SystemExit, match="--base must be one of"):
        new_project.scaffold("my_detr", "yolo", root=REPO)
    with pytest.raises(SystemExit, match="bundled project"):
        new_project.scaffold("dino", "detr", root=REPO)
    assert new_project.class_name_for("my_fast_detr") == "MyFastDetr"


def _repo_copy(tmp_path: Path) -> Path:
    """A copy of the repository's sources, so the scaffold does not touch the working tree."""
    root = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("detr_ext", "projects", "configs", "tools"):
        shutil.copytree(REPO / part, root / part, ignore=ignore)
    (root / "tests" / "projects").mkdir(parents=True)
    return root


def _run_scaffolded_tests(root: Path, name: str, *pytest_args: str):
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(root / f"tests/projects/test_{name}.py"),
            *pytest_args,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_scaffolded_project_trains(tmp_path):
    root = _repo_copy(tmp_path)
    written = new_project.scaffold("toy_detr", "detr", root=root)
    assert {path.name for path in written} == {
        "__init__.py",
        "toy_detr.py",
        "toy_detr_shapes.py",
        "README.md",
        "test_toy_detr.py",
    }
    with pytest.raises(SystemExit, match="already exists"):
        new_project.scaffold("toy_detr", "detr", root=root)
    result = _run_scaffolded_tests(root, "toy_detr")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout


def test_dino_scaffold_depends_on_detr_ext_only(tmp_path):
    """A project scaffolded from DINO subclasses detr_ext's DINODetectorBase and builds on
    configs/common/dino_shapes.py: it imports no other project, and its model builds, trains
    (one forward / backward) and predicts."""
    root = _repo_copy(tmp_path)
    written = new_project.scaffold("toy_dino", "dino", root=root)
    projects_dir = root / "projects"
    sources = [path for path in written if path.suffix == ".py" and projects_dir in path.parents]
    assert len(sources) == 4
    assert [ref for path in sources for ref in cross_project_references(path, projects_dir)] == []
    result = _run_scaffolded_tests(root, "toy_dino", "-k", "not trains_two_iterations")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout


def test_list_projects_finds_registered_models_and_configs():
    import list_projects

    projects = list_projects.discover()
    assert projects["detr"]["meta_archs"] == ["DETR"]
    # DINO's network is detr_ext's (unregistered) DINODetectorBase; each project lists the
    # registered subclass it owns.
    assert projects["dino"]["meta_archs"] == ["DINO"]
    assert projects["align_detr"]["meta_archs"] == ["AlignDETR"]
    assert "projects/detr/configs/detr_shapes.py" in projects["detr"]["configs"]
    assert all("/models/" not in config for info in projects.values() for config in info["configs"])
