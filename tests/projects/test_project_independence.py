"""No project imports another or loads another's files (DESIGN.md: what two projects share
moves down into ``detr_ext`` or ``configs/common/``). The checker is in
``tests/projects/project_references.py``; the first tests show what it catches."""

from __future__ import annotations

from pathlib import Path

import pytest

from .project_references import cross_project_references, project_names

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECTS_DIR = REPO_ROOT / "projects"


def _write_tree(root: Path, source: str) -> Path:
    """``projects/{alpha,beta}`` packages; ``source`` becomes ``alpha/configs/models/x.py``."""
    for name in ("alpha", "beta"):
        (root / name / "configs" / "models").mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
    path = root / "alpha" / "configs" / "models" / "x.py"
    path.write_text(source)
    return path


@pytest.mark.parametrize(
    "source",
    [
        "import projects.beta.modeling",
        "import projects.beta as b",
        "from projects.beta.modeling import Beta",
        "from projects import beta",
        "from projects import alpha, beta",
        "from ....beta.modeling import Beta",  # alpha/configs/models -> projects -> beta
        "from ....beta import modeling",
        "from ... import modeling\nfrom .... import beta",
        "get_config('projects/beta/configs/beta_shapes.py')",
        "importlib.import_module('projects.beta.modeling')",
        "get_config(str(Path(__file__).resolve().parents[3] / 'beta/configs/beta_shapes.py'))",
        "Path(__file__).parents[3] / 'beta' / 'configs' / 'models' / 'beta_r50.py'",
        "os.path.join(root, 'beta', 'configs')",
        "f'{root}/projects/beta/configs/x.py'",
    ],
)
def test_checker_flags_another_project(tmp_path, source):
    path = _write_tree(tmp_path / "projects", source)
    assert project_names(tmp_path / "projects") == {"alpha", "beta"}
    assert cross_project_references(path, tmp_path / "projects"), source


@pytest.mark.parametrize(
    "source",
    [
        '"""Like projects/beta (see projects/beta/README.md), with another loss."""',
        "def f():\n    '''Compares with projects.beta.modeling.Beta.'''",
        "import projects.alpha.modeling\nfrom projects.alpha import modeling",
        "from ...modeling import Alpha\nfrom ..x import y\nfrom . import z",
        "from detr_ext.modeling import DINODetectorBase\nimport projects",
        "get_config('common/dino_shapes.py')",
        "Path(__file__).parents[2] / 'alpha' / 'betas.py'",
        "name = 'beta'  # a plain word is not a path",
        "get_config('projects/alpha/configs/alpha_shapes.py')",
        "os.path.join(root, 'alpha', 'beta')",
        "Path(__file__).parents[3] / 'alpha' / 'beta' / 'x.py'",
    ],
)
def test_checker_allows_own_project_detr_ext_and_prose(tmp_path, source):
    path = _write_tree(tmp_path / "projects", source)
    assert cross_project_references(path, tmp_path / "projects") == []


def test_every_project_is_checked():
    assert {"align_detr", "deformable_detr", "detr", "dino"} <= project_names(PROJECTS_DIR)


def test_no_project_imports_or_loads_another():
    files = sorted(PROJECTS_DIR.glob("*/**/*.py"))
    assert any(path.name == "align_detr.py" for path in files)
    references = [ref for path in files for ref in cross_project_references(path, PROJECTS_DIR)]
    assert references == [], "move what projects share into detr_ext or configs/common"
