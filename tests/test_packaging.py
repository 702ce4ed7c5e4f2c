"""A non-editable install of detr_ext carries the shared configs: ``get_config("common/...")``
works from the installed package, with neither the repository nor its ``configs/`` in reach.

The package is built with ``pip install --no-deps --no-build-isolation --target`` from a copy
of the repository's packaging inputs, with ``DETR_EXT_BUILD_EXTENSION=0`` (no compiled
extension: this checks packaging, not the kernels), then imported in a fresh interpreter whose
working directory and ``sys.path`` exclude the repository.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# What setup.py needs to build the package; projects/, tools/ and tests/ are not part of it.
PACKAGING_INPUTS = (
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
    "requirements.txt",
    "detr_ext",
    "configs",
    "csrc",
)


def config_values() -> dict:
    """A few values from the shared configs, and the top-level keys of every file under
    ``configs/`` loaded with ``get_config`` (a file importing ``configs.*`` loaded only from a
    checkout)."""
    from detr_ext.config import configs_dir, get_config

    schedule = get_config("common/coco_schedule.py")
    root = configs_dir()
    return {
        "files": {
            path.relative_to(root).as_posix(): sorted(
                get_config(path.relative_to(root).as_posix()).keys()
            )
            for path in sorted(root.rglob("*.py"))
        },
        "max_iter": get_config("common/train.py").train.max_iter,
        "adamw_lr": get_config("common/optim.py").AdamW.lr,
        "milestones_50ep": list(schedule.lr_multiplier_50ep.scheduler.milestones),
        "coco_train": get_config("common/data/coco_detr.py").dataloader.train.dataset.names,
        "shapes_train": get_config("common/data/shapes.py").dataloader.train.dataset.names,
    }


# Runs in the installed package; prints what the test checks as one JSON line.
PROBE = (
    inspect.getsource(config_values)
    + """
import json, sys
import detr_ext
from detr_ext.config import configs_dir

print(json.dumps({
    "detr_ext": detr_ext.__file__,
    "configs_dir": str(configs_dir()),
    "sys_path": sys.path,
    "values": config_values(),
}))
"""
)


def _copy_packaging_inputs(destination: Path) -> None:
    """The repository's packaging inputs without build products (a clean source tree)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "build", "*.egg-info")
    destination.mkdir(parents=True)
    for name in PACKAGING_INPUTS:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)


def _dependency_path() -> list[str]:
    """This interpreter's site-packages plus the directories their ``.pth`` files add (e.g.
    detectron2's), without any directory that holds a ``detr_ext`` (the repository, which the
    venv's ``detr_ext-repo.pth`` puts on ``sys.path``)."""
    entries = []
    for site_dir in map(Path, site.getsitepackages()):
        entries.append(site_dir)
        for pth in sorted(site_dir.glob("*.pth")):
            for line in pth.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import ", "import\t")):
                    entries.append((site_dir / line).resolve())
    return [str(p) for p in entries if p.is_dir() and not (p / "detr_ext").exists()]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def test_installed_package_ships_the_shared_configs(tmp_path, monkeypatch):
    monkeypatch.delenv("DETR_EXT_CONFIGS", raising=False)  # compare with the checkout's configs
    source, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    _copy_packaging_inputs(source)
    elsewhere.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "DETR_EXT_", "PIP_"))
    }
    build_env = {
        **env,
        "DETR_EXT_BUILD_EXTENSION": "0",
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
        + ["--no-compile", "--target", str(target), str(source)],
        cwd=elsewhere,
        env=build_env,
    )
    packaged = target / "detr_ext" / "config" / "configs"
    shipped = sorted(p.relative_to(packaged).as_posix() for p in packaged.rglob("*.py"))
    in_repo = sorted(
        p.relative_to(REPO_ROOT / "configs").as_posix()
        for p in (REPO_ROOT / "configs").rglob("*.py")
    )
    assert shipped == in_repo
    assert not list(target.glob("detr_ext/_C*.so"))  # the extension build was skipped

    # -S: no site module, so no .pth file (such as detr_ext-repo.pth) adds the repository; the
    # working directory, which -c puts on sys.path, is an empty temporary one.
    probe_env = {**env, "PYTHONPATH": os.pathsep.join([str(target), *_dependency_path()])}
    result = _run([sys.executable, "-S", "-c", PROBE], cwd=elsewhere, env=probe_env)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert Path(report["detr_ext"]).resolve().is_relative_to(target.resolve())
    assert Path(report["configs_dir"]).resolve() == packaged.resolve()
    assert all(Path(entry).resolve() != REPO_ROOT for entry in report["sys_path"] if entry)
    # The installed copies hold what the checkout's configs hold.
    assert report["values"] == config_values()
    assert report["values"]["shapes_train"] == "shapes_train"
    assert len(report["values"]["files"]) == len(in_repo)
