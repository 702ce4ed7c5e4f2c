"""The pretrained backbone as a detector checkpoint: the TEACHER's backbone weights (DINO keeps
the teacher as the result) under the detectors' ``backbone.`` prefix, loadable with
``train.init_checkpoint=<output>/backbone.pth``, and a report of what a detector would not
load from it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..utils.file_io import atomic_write

__all__ = [
    "BackboneLoadReport",
    "backbone_checkpoint",
    "backbone_load_report",
    "save_backbone_checkpoint",
]

BACKBONE_PREFIX = "backbone."


def backbone_checkpoint(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{"model": {"backbone.<name>": tensor}}`` from ``model.teacher.backbone`` (a
    ``SelfDistillation``), tensors detached and on the CPU."""
    teacher = getattr(model, "teacher", None)
    backbone = getattr(teacher, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            "backbone_checkpoint: expected a SelfDistillation with .teacher.backbone, got "
            f"{type(model).__name__}"
        )
    return {
        "model": {
            BACKBONE_PREFIX + name: tensor.detach().cpu().clone()
            for name, tensor in backbone.state_dict().items()
        }
    }


def save_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Write :func:`backbone_checkpoint` of ``model`` to ``path`` atomically; returns it."""
    checkpoint = backbone_checkpoint(model)
    atomic_write(path, lambda file: torch.save(checkpoint, file))
    return checkpoint


@dataclass
class BackboneLoadReport:
    """What loading a backbone checkpoint into a detector would leave out.

    Attributes:
        loaded: detector ``backbone.*`` keys the checkpoint fills.
        missing: detector ``backbone.*`` keys the checkpoint lacks (they keep their init).
        mismatched: ``(key, checkpoint shape, detector shape)`` of keys not loaded for shape.
        unexpected: checkpoint keys the detector does not have.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every detector backbone key is loaded with its shape."""
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        lines = [
            f"{len(self.loaded)} backbone tensors load; {len(self.missing)} missing, "
            f"{len(self.mismatched)} shape-mismatched, {len(self.unexpected)} unexpected"
        ]
        lines += [f"  missing: {key}" for key in self.missing]
        lines += [
            f"  shape mismatch: {key}: checkpoint {list(got)} vs detector {list(want)}"
            for key, got, want in self.mismatched
        ]
        lines += [f"  unexpected: {key}" for key in self.unexpected]
        return "\n".join(lines)


def backbone_load_report(
    detector: nn.Module, checkpoint: dict | str | os.PathLike
) -> BackboneLoadReport:
    """Compare a backbone checkpoint (a path or ``{"model": state}``) with ``detector``'s
    ``backbone.*`` state (the keys detectron2's checkpointer would fill through
    ``train.init_checkpoint``)."""
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    target = {
        key: tuple(tensor.shape)
        for key, tensor in detector.state_dict().items()
        if key.startswith(BACKBONE_PREFIX)
    }
    if not target:
        raise ValueError(
            f"backbone_load_report: expected a detector with '{BACKBONE_PREFIX}*' parameters, "
            f"got {type(detector).__name__} with none"
        )
    report = BackboneLoadReport()
    for key, shape in target.items():
        if key not in state:
            report.missing.append(key)
        elif tuple(state[key].shape) != shape:
            report.mismatched.append((key, tuple(state[key].shape), shape))
        else:
            report.loaded.append(key)
    report.unexpected = [key for key in state if key not in target]
    return report
