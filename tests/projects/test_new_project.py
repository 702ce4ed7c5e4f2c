"""tools/new_project.py scaffolds a project whose own generated tests pass."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tool_runs import load_script

from .project_references import cross_project_references

REPO = Path(__file__).resolve().parents[2]
new_project = load_script("tools/new_project.py")


def test_name_validation():
    with pytest.raises(SystemExit, match="lowercase Python identifier"):
        new_project.scaffold("My-Detr", "detr", root=REPO)
    with pytest.raises(SystemExit, match="--base must be one of"):
        new_project.scaffold("my_detr", "yolo", root=REPO)
    with pytest.raises(SystemExit, match="bundled or hand-written project"):
        new_project.scaffold("dino", "detr", root=REPO)
    assert new_project.class_name_for("my_fast_detr") == "MyFastDetr"


def test_a_name_whose_meta_architecture_is_taken_is_refused(tmp_path):
    """'retina_net' would register RetinaNet, which detectron2 registers: the scaffolded
    project failed to import ("already registered") and took tools/list_projects.py down."""
    with pytest.raises(SystemExit, match=r"'RetinaNet', which detectron2\.modeling\.meta_arch"):
        new_project.scaffold("retina_net", "detr", root=tmp_path)
    new_project.scaffold("my_detr", "detr", root=tmp_path)
    with pytest.raises(
        SystemExit,
        match=r"'MyDetr', which project 'my_detr' already registers "
        r"\(projects/my_detr/modeling/my_detr\.py:\d+\)",
    ):
        new_project.scaffold("my__detr", "detr", root=tmp_path)
    assert not (tmp_path / "projects" / "retina_net").exists()
    assert not (tmp_path / "projects" / "my__detr").exists()


def _copy_projects(root: Path) -> Path:
    """A copy of the bundled projects under ``root``, for scaffolds that must not touch them."""
    shutil.copytree(
        REPO / "projects", root / "projects", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root / "projects"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    "name, owner, class_name",
    [
        ("d_i_n_o", "dino", "DINO"),
        ("align_d_e_t_r", "align_detr", "AlignDETR"),
        ("d_e_t_r_segm", "detr", "DETRSegm"),
        ("grounding_d_i_n_o", "grounding_dino", "GroundingDINO"),
    ],
)
def test_a_name_whose_class_another_project_registers_is_refused(tmp_path, name, owner, class_name):
    """'d_i_n_o' gives the class DINO, which projects/dino registers: the scaffold was accepted
    (only detectron2's registry and other projects' directory names were compared) and then
    tools/list_projects.py died with a bare "already registered" AssertionError."""
    _copy_projects(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as refused:
        new_project.scaffold(name, "detr", root=tmp_path)
    message = str(refused.value)
    assert f"would register the meta-architecture {class_name!r}" in message
    assert f"which project {owner!r} already registers (projects/{owner}/modeling/" in message
    assert _tree(tmp_path) == before


def test_registered_classes_are_read_in_every_form(tmp_path):
    """A project's registrations are read from its files without importing them, whether by
    decorator (also through a module path) or by a call."""
    modeling = tmp_path / "projects" / "hand" / "modeling"
    modeling.mkdir(parents=True)
    (modeling / "__init__.py").write_text(
        "import detectron2.modeling as d2\n"
        "from detectron2.modeling import META_ARCH_REGISTRY\n\n\n"
        "@d2.META_ARCH_REGISTRY.register()\n"
        "class HandMade:\n    pass\n\n\n"
        "class ByCall:\n    pass\n\n\n"
        "class NotRegistered:\n    pass\n\n\n"
        "META_ARCH_REGISTRY.register(ByCall)\n"
    )
    (modeling / "broken.py").write_text("def (:\n")
    assert new_project.registered_meta_archs(tmp_path / "projects" / "hand", tmp_path) == {
        "HandMade": "projects/hand/modeling/__init__.py:6",
        "ByCall": "projects/hand/modeling/__init__.py:18",
    }
    for name in ("hand_made", "by_call"):
        with pytest.raises(SystemExit, match="which project 'hand' already registers"):
            new_project.scaffold(name, "detr", root=tmp_path)
    new_project.scaffold("not_registered", "detr", root=tmp_path)


def test_force_never_overwrites_what_it_did_not_scaffold(tmp_path):
    """--force overwrote align_detr's and grounding_dino's files (only detr, dino and
    deformable_detr were refused as bundled) and any repository test named
    tests/projects/test_<name>.py. Now every bundled project and every such test is refused,
    with or without --force, and nothing is written."""
    bundled = sorted(path.parent.name for path in _copy_projects(tmp_path).glob("*/__init__.py"))
    assert {"align_detr", "grounding_dino", "detr", "dino", "deformable_detr"} <= set(bundled)
    repository_tests = ["project_independence", "mixed_precision", "new_project", "detr_train_net"]
    (tmp_path / "tests" / "projects").mkdir(parents=True)
    for test in repository_tests:
        shutil.copy(REPO / f"tests/projects/test_{test}.py", tmp_path / "tests" / "projects")
    before = _tree(tmp_path)
    for force in (True, False):
        for name in bundled:
            with pytest.raises(SystemExit) as refused:
                new_project.scaffold(name, "detr", root=tmp_path, force=force)
            message = str(refused.value)
            assert f"projects/{name} already exists and was not scaffolded" in message
            assert "bundled or hand-written project" in message
            assert "even with --force" in message and "pass --force" not in message
        for name in repository_tests:
            with pytest.raises(SystemExit) as refused:
                new_project.scaffold(name, "detr", root=tmp_path, force=force)
            message = str(refused.value)
            assert f"tests/projects/test_{name}.py already exists and was not written by" in message
            assert f"'# detr_ext-scaffold: project={name} ...', got '\"\"\"" in message
            assert "even with --force" in message and "pass --force" not in message
    assert _tree(tmp_path) == before


def test_force_rewrites_only_its_own_scaffold(tmp_path):
    """Each file written starts with the marker of its project; --force rewrites a file that
    carries it and refuses (writing nothing) when one of the files lacks it or names another
    project, or when a directory of that name is not a scaffolded project."""
    written = new_project.scaffold("toy_detr", "detr", root=tmp_path)
    for path in written:
        assert new_project.scaffolded_for(path) == "toy_detr"
    project = tmp_path / "projects" / "toy_detr"
    modeling = project / "modeling" / "toy_detr.py"
    test_file = tmp_path / "tests" / "projects" / "test_toy_detr.py"
    scaffolded = modeling.read_text()
    with pytest.raises(SystemExit, match="already exists, scaffolded .* pass --force"):
        new_project.scaffold("toy_detr", "detr", root=tmp_path)

    modeling.write_text(scaffolded + "# an edit that keeps the marker\n")
    (project / "modeling" / "extra.py").write_text("VALUE = 1\n")
    assert new_project.scaffold("toy_detr", "dino", root=tmp_path, force=True) == written
    assert "DINODetectorBase" in modeling.read_text()
    assert (project / "modeling" / "extra.py").read_text() == "VALUE = 1\n"

    # The marker removed from one file makes that file the user's: nothing is rewritten.
    (project / "README.md").write_text("# my notes\n")
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as refused:
        new_project.scaffold("toy_detr", "detr", root=tmp_path, force=True)
    assert "projects/toy_detr/README.md already exists and was not written by" in str(refused.value)
    assert "'<!-- detr_ext-scaffold: project=toy_detr ...', got '# my notes'" in str(refused.value)
    assert _tree(tmp_path) == before

    # A test file with another project's marker is not this project's test.
    new_project.scaffold("other", "detr", root=tmp_path)
    (project / "README.md").unlink()
    shutil.copy(tmp_path / "tests" / "projects" / "test_other.py", test_file)
    before = _tree(tmp_path)
    with pytest.raises(SystemExit, match="tests/projects/test_toy_detr.py already exists and was"):
        new_project.scaffold("toy_detr", "detr", root=tmp_path, force=True)
    assert _tree(tmp_path) == before

    # A directory whose __init__.py does not carry the marker is not a scaffolded project.
    (tmp_path / "projects" / "hand_made").mkdir()
    (tmp_path / "projects" / "empty").mkdir()
    (tmp_path / "projects" / "hand_made" / "__init__.py").write_text('"""Mine."""\n')
    for name, got in (("hand_made", 'got \'"""Mine."""\''), ("empty", "got no such file")):
        with pytest.raises(SystemExit) as refused:
            new_project.scaffold(name, "detr", root=tmp_path, force=True)
        assert f"projects/{name} already exists and was not scaffolded" in str(refused.value)
        assert got in str(refused.value)
    assert not (tmp_path / "projects" / "empty" / "__init__.py").exists()
    assert not (tmp_path / "tests" / "projects" / "test_hand_made.py").exists()


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
    list_projects = load_script("tools/list_projects.py")
    projects, failures = list_projects.discover()
    assert failures == {}
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
