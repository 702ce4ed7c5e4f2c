"""Networks of DINO self-distillation: a backbone + projection head that embeds multi-crop
views (:class:`BackboneEmbedder`), and the student / momentum-teacher pair
(:class:`SelfDistillation`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .head import DINOHead

__all__ = ["BackboneEmbedder", "SelfDistillation"]


class BackboneEmbedder(nn.Module):
    """Backbone -> global average pooling of one feature map -> :class:`DINOHead`.

    The backbone is any module that maps ``[B, 3, H, W]`` to a dict of ``[B, C, h, w]`` maps
    (a detectron2 ``Backbone`` such as ``ResNet``, or a timm wrapper); its weights are kept
    under ``backbone.*`` so that they load into a detector's ``backbone.*``.

    Args:
        backbone: the network to pretrain.
        in_feature: the output of ``backbone`` to pool (e.g. ``"res5"``).
        head: projection head (required); ``head.in_dim`` must equal the channels of
            ``in_feature`` when the backbone reports ``output_shape()``.
    """

    def __init__(
        self, backbone: nn.Module, in_feature: str = "res5", head: DINOHead | None = None
    ) -> None:
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"BackboneEmbedder: expected a DINOHead as head, got {head!r}")
        if hasattr(backbone, "output_shape"):
            shapes = backbone.output_shape()
            if in_feature not in shapes:
                raise ValueError(
                    f"BackboneEmbedder: in_feature={in_feature!r} is not a backbone output; "
                    f"available: {sorted(shapes)}"
                )
            channels = shapes[in_feature].channels
            head_dim = getattr(head, "in_dim", None)
            if channels is not None and head_dim is not None and channels != head_dim:
                raise ValueError(
                    f"BackboneEmbedder: backbone output {in_feature!r} has {channels} "
                    f"channels but head.in_dim={head_dim}"
                )
        self.backbone = backbone
        self.in_feature = in_feature
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: ``images [B, 3, H, W]`` -> ``[B, C]`` (for k-NN probes)."""
        if images.dim() != 4:
            raise ValueError(
                f"BackboneEmbedder: expected images [B, 3, H, W], got {tuple(images.shape)}"
            )
        outputs = self.backbone(images)
        if self.in_feature not in outputs:
            raise ValueError(
                f"BackboneEmbedder: backbone returned {sorted(outputs)}, "
                f"expected {self.in_feature!r}"
            )
        return outputs[self.in_feature].mean(dim=(-2, -1))

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embed views: ``crops`` is a list of ``V`` tensors ``[B, 3, h_v, w_v]`` (the same
        ``B``); returns head logits ``[V * B, K]``, view-major (all images of view 0 first).

        Consecutive views of the same size go through the backbone as one batch (DINO's
        multi-crop trick: 2 global + n local views cost two backbone calls).
        """
        if isinstance(crops, torch.Tensor) or len(crops) == 0:
            raise TypeError("BackboneEmbedder: expected a non-empty list of [B, 3, h, w] tensors")
        batch_size = crops[0].shape[0]
        for index, crop in enumerate(crops):
            if crop.dim() != 4 or crop.shape[0] != batch_size:
                raise ValueError(
                    f"BackboneEmbedder: crop {index} has shape {tuple(crop.shape)}, expected "
                    f"[{batch_size}, 3, h, w] like crop 0"
                )
        pooled = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            pooled.append(self.features(torch.cat(list(crops[start:end]), dim=0)))
            start = end
        return self.head(torch.cat(pooled, dim=0))


class SelfDistillation(nn.Module):
    """A student :class:`BackboneEmbedder` and its momentum (EMA) teacher.

    The teacher is a deep copy of the student with ``requires_grad=False`` on every
    parameter; it is a submodule, so ``train()`` / ``eval()``, ``.to()`` and ``state_dict()``
    (``student.*`` and ``teacher.*``) cover both. It only changes through
    :meth:`update_teacher`.

    Args:
        student: the network trained by the optimizer.
        teacher_momentum: default ``m`` of :meth:`update_teacher`, in [0, 1].
    """

    def __init__(self, student: BackboneEmbedder, teacher_momentum: float = 0.996) -> None:
        super().__init__()
        _check_momentum(teacher_momentum)
        self.student = student
        self.teacher = copy.deepcopy(student)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher_momentum = float(teacher_momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float | None = None) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for every parameter; buffers are
        copied. ``momentum`` defaults to ``teacher_momentum``; call after each optimizer step.
        """
        momentum = self.teacher_momentum if momentum is None else momentum
        _check_momentum(momentum)
        student_params = dict(self.student.named_parameters())
        for name, teacher_param in self.teacher.named_parameters():
            student_param = student_params[name].detach()
            teacher_param.mul_(momentum).add_(student_param, alpha=1.0 - momentum)
        student_buffers = dict(self.student.named_buffers())
        for name, teacher_buffer in self.teacher.named_buffers():
            teacher_buffer.copy_(student_buffers[name])

    def forward(
        self, crops: Sequence[torch.Tensor], num_global: int = 2
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``crops``: ``V`` tensors ``[B, 3, h, w]``, the first ``num_global`` global.

        Returns:
            ``(student_out [V * B, K], teacher_out [num_global * B, K])``; the teacher sees
            only the global views and builds no graph.
        """
        if not 1 <= num_global <= len(crops):
            raise ValueError(
                f"SelfDistillation: expected 1 <= num_global <= {len(crops)} crops, "
                f"got num_global={num_global}"
            )
        student_out = self.student(crops)
        with torch.no_grad():
            teacher_out = self.teacher(list(crops[:num_global]))
        return student_out, teacher_out


def _check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"SelfDistillation: expected teacher momentum in [0, 1], got {momentum!r}")
