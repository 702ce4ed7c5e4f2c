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
"""

from __future__ import annotations

import argparse
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

INIT = '''"""{title}: a detr_ext project (scaffolded from {base_class})."""
'''

MODELING_INIT = '''"""{title} modeling; importing it registers ``{class_name}``."""

from .{name} import {class_name}

__all__ = ["{class_name}"]
'''

MODELING = '''"""The {class_name} meta-architecture.

It starts as {base_class} unchanged. Change what your method changes here (override
``__init__`` for new modules, or the methods of {base_class} / ``DetectorBase``), and keep
the detectron2 contract: training returns a dict of weighted losses, inference returns
``[{{"instances": Instances}}]`` at the original image size.
"""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from {base_module} import {base_class}

__all__ = ["{class_name}"]


@META_ARCH_REGISTRY.register()
class {class_name}({base_class}):
    """{title}, built on {base_class}."""
'''

# Built on a shared recipe in configs/common/ (see BASES).
CONFIG = '''"""{class_name} on the bundled shapes dataset (CPU friendly), built on
the shared recipe ``configs/{base_config}``.

    python tools/train_net.py --config-file projects/{name}/configs/{name}_shapes.py
"""

from detr_ext.config import get_config
from projects.{name}.modeling import {class_name}

_base = get_config("{base_config}")
dataloader = _base.dataloader
optimizer = _base.optimizer
lr_multiplier = _base.lr_multiplier
train = _base.train
model = _base.model

model._target_ = {class_name}
train.output_dir = "./output/{name}_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
'''

README = """# {title}

A detr_ext project scaffolded from `{base_class}` by `tools/new_project.py`.

- `modeling/{name}.py`: the `{class_name}` meta-architecture (registered with detectron2's
  `META_ARCH_REGISTRY`).
- `configs/{name}_shapes.py`: trains on the bundled `shapes` dataset, on a CPU.

```bash
python tools/train_net.py --config-file projects/{name}/configs/{name}_shapes.py
python tools/train_net.py --config-file projects/{name}/configs/{name}_shapes.py \\
    --eval-only train.init_checkpoint=output/{name}_shapes/model_final.pth
python -m pytest tests/projects/test_{name}.py
```

To train on your own COCO-format data, see the top-level README.
"""

TEST = '''"""Scaffolded tests of the {name} project: the model builds, runs, and trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "projects/{name}/configs/{name}_shapes.py"


def _batch(num_images=2):
    from detectron2.structures import Boxes, Instances

    inputs = []
    for index in range(num_images):
        instances = Instances((96, 128))
        instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0]]))
        instances.gt_classes = torch.tensor([index % 3])
        image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
        inputs.append({{"image": image, "height": 96, "width": 128, "instances": instances}})
    return inputs


def test_registered_and_builds():
    cfg = LazyConfig.load(str(CONFIG))
    model = instantiate(cfg.model)
    assert "{class_name}" in META_ARCH_REGISTRY
    assert type(model).__name__ == "{class_name}"


def test_forward_train_and_eval():
    cfg = LazyConfig.load(str(CONFIG))
    model = instantiate(cfg.model)
    losses = model(_batch())
    assert losses and all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(_batch())
    assert outputs[0]["instances"].image_size == (96, 128)


TINY_CONFIG = """
from detectron2.config import LazyConfig
from detr_ext.data.datasets import register_shapes

_base = LazyConfig.load({{config!r}})
register_shapes(root=None, num_train=4, num_val=2, seed=0, replace=True)
model, dataloader, train = _base.model, _base.dataloader, _base.train
optimizer, lr_multiplier = _base.optimizer, _base.lr_multiplier
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
train.max_iter = 2
"""


def test_trains_two_iterations(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG.format(config=str(CONFIG)))
    env = dict(os.environ, DETR_EXT_DATASETS=str(tmp_path / "datasets"), CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(config)]
    command.append(f"train.output_dir={{tmp_path / 'output'}}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "output" / "model_final.pth").is_file()
'''


def class_name_for(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def validate_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise SystemExit(
            f"project name must be a lowercase Python identifier (e.g. 'my_detr'), got {name!r}"
        )
    return name


def check_class_name_is_free(name: str, root: Path = REPO) -> None:
    """The meta-architecture's class name must not be taken: detectron2 registers its own
    (``retina_net`` would give ``RetinaNet``) and another project may give the same one
    (``my__detr`` and ``my_detr`` both give ``MyDetr``); the project would fail to import."""
    from detectron2.modeling import META_ARCH_REGISTRY

    class_name = class_name_for(name)
    if class_name in META_ARCH_REGISTRY:
        owner = META_ARCH_REGISTRY.get(class_name).__module__
        raise SystemExit(
            f"project {name!r} would register the meta-architecture {class_name!r}, which "
            f"{owner} already registers with detectron2's META_ARCH_REGISTRY; choose another "
            f"name (e.g. 'my_{name}')"
        )
    projects = root / "projects"
    others = sorted(p.name for p in projects.iterdir() if p.is_dir()) if projects.is_dir() else []
    for other in others:
        if other != name and class_name_for(other) == class_name:
            raise SystemExit(
                f"project {name!r} would register the meta-architecture {class_name!r}, as "
                f"projects/{other} does; choose another name"
            )


def scaffold(name: str, base: str, root: Path = REPO, force: bool = False) -> list[Path]:
    """Writes the project files; returns their paths."""
    validate_name(name)
    check_class_name_is_free(name, root)
    if base not in BASES:
        raise SystemExit(f"--base must be one of {sorted(BASES)}, got {base!r}")
    if name in BASES:
        raise SystemExit(f"project {name!r} already exists as a bundled project")
    base_module, base_class, base_config = BASES[base]
    project = root / "projects" / name
    test_file = root / "tests" / "projects" / f"test_{name}.py"
    if (project.exists() or test_file.exists()) and not force:
        raise SystemExit(f"{project} or {test_file} already exists; pass --force to overwrite")
    values = {
        "name": name,
        "title": name.replace("_", " ").title(),
        "class_name": class_name_for(name),
        "base_module": base_module,
        "base_class": base_class,
        "base_config": base_config,
    }
    files = {
        project / "__init__.py": INIT,
        project / "modeling" / "__init__.py": MODELING_INIT,
        project / "modeling" / f"{name}.py": MODELING,
        project / "configs" / f"{name}_shapes.py": CONFIG,
        project / "README.md": README,
        test_file: TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return list(files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("name", help="project name, a lowercase identifier such as my_detr")
    parser.add_argument(
        "--base", default="detr", choices=sorted(BASES), help="detector to start from"
    )
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    for path in scaffold(args.name, args.base, args.root, args.force):
        print(f"wrote {path.relative_to(args.root)}")
    print(
        f"\nnext: python tools/train_net.py --config-file "
        f"projects/{args.name}/configs/{args.name}_shapes.py"
    )


if __name__ == "__main__":
    sys.exit(main())
