"""tools/new_project.py scaffolds a project whose own generated tests pass."""

from __future__ import annotations

import ast
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


def test_a_name_whose_meta_architecture_is_taken_is_refused(tmp_path):
    """'retina_net' would register RetinaNet, which detectron2 registers: the scaffolded
    project failed to import ("already registered") and took tools/list_projects.py down."""
    with pytest.raises(SystemExit, match=r"'RetinaNet', which detectron2\.modeling\.meta_arch"):
        new_project.scaffold("retina_net", "detr", root=tmp_path)
    (tmp_path / "projects" / "my_detr").mkdir(parents=True)
    with pytest.raises(SystemExit, match="'MyDetr', as projects/my_detr does"):
        new_project.scaffold("my__detr", "detr", root=tmp_path)
    assert not (tmp_path / "projects" / "retina_net").exists()
    assert not (tmp_path / "projects" / "my__detr").exists()


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


def _imported_modules(path: Path) -> set[str]:
    """Absolute modules that ``path`` imports (relative ones are checked by
    ``cross_project_references``)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("base", sorted(new_project.BASES))
def test_scaffold_depends_on_detr_ext_only(tmp_path, base):
    """Every base scaffolds a project that subclasses an unregistered detr_ext network and
    builds on a shared recipe in configs/common/: it imports no other project (DESIGN.md), so
    it keeps working when the bundled project it started from changes or is removed."""
    from detectron2.modeling import META_ARCH_REGISTRY

    base_module, base_class, base_config = new_project.BASES[base]
    assert base_module.startswith("detr_ext.")
    assert base_class not in META_ARCH_REGISTRY
    assert base_config.startswith("common/") and (REPO / "configs" / base_config).is_file()

    root = _repo_copy(tmp_path)
    written = new_project.scaffold("toy_new", base, root=root)
    projects_dir = root / "projects"
    sources = [path for path in written if path.suffix == ".py" and projects_dir in path.parents]
    assert len(sources) == 4
    assert [ref for path in sources for ref in cross_project_references(path, projects_dir)] == []
    imported = set().union(*(_imported_modules(path) for path in sources))
    assert {m for m in imported if m.split(".")[0] == "projects"} == {"projects.toy_new.modeling"}
    assert base_module in _imported_modules(projects_dir / "toy_new" / "modeling" / "toy_new.py")
    config = (projects_dir / "toy_new" / "configs" / "toy_new_shapes.py").read_text()
    assert f'get_config("{base_config}")' in config


def test_deformable_detr_and_dino_scaffolds_build_train_and_predict(tmp_path):
    """The scaffolds of the deformable bases build their model, train (one forward / backward)
    and predict; the DETR scaffold is run in full by ``test_scaffolded_project_trains``. One
    pytest run covers both, to pay the interpreter start-up once."""
    root = _repo_copy(tmp_path)
    for name, base in (("toy_deformable", "deformable_detr"), ("toy_dino", "dino")):
        new_project.scaffold(name, base, root=root)
    result = _run_scaffolded_tests(
        root,
        "toy_deformable",
        str(root / "tests/projects/test_toy_dino.py"),
        "-k",
        "not trains_two_iterations",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout


def test_list_projects_finds_registered_models_and_configs():
    import list_projects

    projects = list_projects.discover()
    assert projects["detr"]["meta_archs"] == ["DETR", "DETRSegm"]
    # DINO's network is detr_ext's (unregistered) DINODetectorBase; each project lists the
    # registered subclass it owns.
    assert projects["dino"]["meta_archs"] == ["DINO"]
    assert projects["align_detr"]["meta_archs"] == ["AlignDETR"]
    # Likewise for DETR and Deformable DETR (detr_ext's DETRDetectorBase and
    # DeformableDETRDetectorBase are unregistered).
    assert projects["deformable_detr"]["meta_archs"] == ["DeformableDETR"]
    assert "projects/detr/configs/detr_shapes.py" in projects["detr"]["configs"]
    assert all("/models/" not in config for info in projects.values() for config in info["configs"])
