"""The import rules of DESIGN.md that only a test keeps true (project independence is
tests/projects/test_project_independence.py):

- ``detr_ext.ops`` needs torch only: the operator, its benchmark tool and its tests run on a
  GPU machine that has nothing else (no detectron2, fvcore, omegaconf ...). Checked by running
  them in a fresh interpreter in which importing those packages fails.
- ``detr_ext`` never imports ``projects``, ``tools`` or ``configs``; tools never import each
  other (shared tool code lives in ``detr_ext``). Checked on the source with :mod:`ast`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a machine with only PyTorch lacks (the device image: torch, but no detectron2 or fvcore).
NOT_ON_A_TORCH_ONLY_MACHINE = (
    "detectron2",
    "fvcore",
    "iopath",
    "omegaconf",
    "hydra",
    "pycocotools",
    "scipy",
    "cv2",
    "timm",
    "transformers",
    "projects",
    "configs",
)

_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{{name}} is not on a torch-only machine", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def _run_without_extras(code: str) -> subprocess.CompletedProcess:
    script = _BLOCKER.format(blocked=NOT_ON_A_TORCH_ONLY_MACHINE) + textwrap.dedent(code)
    # Plugins installed here (hydra's) would import blocked packages; the device has none.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_the_blocker_blocks():
    """The check below can fail: importing a blocked package fails in that interpreter."""
    result = _run_without_extras("import detectron2.config")
    assert result.returncode != 0 and "not on a torch-only machine" in result.stderr


def test_the_operator_its_benchmark_and_tests_need_only_torch():
    result = _run_without_extras(
        """
        import pkgutil, runpy, sys
        import torch
        import detr_ext.ops as ops
        for module in pkgutil.iter_modules(ops.__path__):
            __import__(f"detr_ext.ops.{module.name}")
        shapes, starts = torch.tensor([[4, 5], [2, 3]]), torch.tensor([0, 20])
        value = torch.randn(1, 26, 2, 4, requires_grad=True)
        locations = torch.rand(1, 3, 2, 2, 2, 2)
        weights = torch.rand(1, 3, 2, 2, 2)
        for backend in ("auto", "pytorch"):
            output = ops.ms_deform_attn(value, shapes, starts, locations, weights, backend=backend)
            output.sum().backward()
        sys.argv = ["benchmark_msda.py", "--help"]
        try:
            runpy.run_path("tools/benchmark_msda.py", run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        import pytest
        sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/ops"]))
        """
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "usage: benchmark_msda.py" in result.stdout
    assert " tests collected" in result.stdout or "tests collected" in result.stdout


def _imported_modules(repo: Path, path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``; relative imports resolved against the
    file's package (``detr_ext.engine.x``: ``from ..config import y`` is ``detr_ext.config``)."""
    relative = path.relative_to(repo).with_suffix("")
    package = list(relative.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def import_rule_violations(repo: Path) -> list[str]:
    """``"<file>:<line>: <rule>"`` for each import that breaks a rule above."""
    violations = []
    tool_names = {path.stem for path in (repo / "tools").glob("*.py")}
    for path in sorted((repo / "detr_ext").rglob("*.py")):
        for line, module in _imported_modules(repo, path):
            if module.split(".")[0] in ("projects", "tools", "configs"):
                violations.append(f"{path.relative_to(repo)}:{line}: detr_ext imports {module}")
    for path in sorted((repo / "tools").glob("*.py")):
        for line, module in _imported_modules(repo, path):
            top = module.split(".")[0]
            if top == "tools" or (top in tool_names and top != path.stem):
                violations.append(f"{path.relative_to(repo)}:{line}: a tool imports {module}")
    return violations


def test_detr_ext_and_tools_import_down_only():
    assert import_rule_violations(REPO) == []


@pytest.mark.parametrize(
    "file, source",
    [
        ("detr_ext/engine/x.py", "from projects.dino.modeling import DINO\n"),
        ("detr_ext/engine/x.py", "import tools.train_net\n"),
        ("detr_ext/x.py", "from configs.common.coco_schedule import lr_multiplier_12ep\n"),
        ("tools/a.py", "import b\n"),
        ("tools/a.py", "from b import main\n"),
        ("tools/a.py", "from tools.b import main\n"),
    ],
)
def test_each_rule_is_caught(tmp_path, file, source):
    for name in ("detr_ext/__init__.py", "tools/b.py", file):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / file).write_text(source)
    assert len(import_rule_violations(tmp_path)) == 1
