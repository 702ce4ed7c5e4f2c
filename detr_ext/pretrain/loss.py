"""DINO self-distillation loss: cross-entropy between a centered, sharpened teacher
distribution and the student's, over every (teacher view, other student view) pair."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLoss"]


class DINOLoss(nn.Module):
    """DINO loss with teacher centering and a teacher temperature warm-up.

    With ``B`` images, ``V`` student crops per image (the first ``num_global_crops`` of them
    global) and ``K`` logits, crops are stacked view-major (all images of view 0, then of view
    1, ...), as :class:`~detr_ext.pretrain.BackboneEmbedder` returns them:

    - teacher view ``i``: ``P_t^i = softmax((t^i - center) / teacher_temp(iteration))``, no
      gradient;
    - student view ``j``: ``log P_s^j = log_softmax(s^j / student_temp)``;
    - loss: mean over the pairs ``(i, j)``, ``i < num_global_crops``, ``j != i``, and over the
      batch, of ``-sum_k P_t^i[k] * log P_s^j[k]``.

    After computing the loss, :meth:`update_center` folds the batch mean of the teacher
    outputs into ``center`` (a ``[1, K]`` buffer, so it is saved in checkpoints).

    Args:
        out_dim: number of logits ``K``.
        num_global_crops: teacher views per image (the student's first views).
        student_temp: student softmax temperature.
        teacher_temp: teacher softmax temperature after the warm-up (sharpening).
        warmup_teacher_temp: teacher temperature at iteration 0.
        warmup_teacher_temp_iters: iterations of linear warm-up from ``warmup_teacher_temp``
            to ``teacher_temp``; 0 uses ``teacher_temp`` from the start.
        center_momentum: ``m`` in ``center <- m * center + (1 - m) * batch_mean``, in [0, 1].
    """

    def __init__(
        self,
        out_dim: int,
        num_global_crops: int = 2,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_iters: int = 0,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if not isinstance(out_dim, int) or out_dim <= 0:
            raise ValueError(f"DINOLoss: expected out_dim to be a positive int, got {out_dim!r}")
        if not isinstance(num_global_crops, int) or num_global_crops < 1:
            raise ValueError(f"DINOLoss: expected num_global_crops >= 1, got {num_global_crops!r}")
        for name, temp in (
            ("student_temp", student_temp),
            ("teacher_temp", teacher_temp),
            ("warmup_teacher_temp", warmup_teacher_temp),
        ):
            if not temp > 0:
                raise ValueError(f"DINOLoss: expected {name} > 0, got {temp!r}")
        if warmup_teacher_temp_iters < 0:
            raise ValueError(
                "DINOLoss: expected warmup_teacher_temp_iters >= 0, "
                f"got {warmup_teacher_temp_iters!r}"
            )
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(
                f"DINOLoss: expected center_momentum in [0, 1], got {center_momentum!r}"
            )
        self.out_dim = out_dim
        self.num_global_crops = num_global_crops
        self.student_temp = float(student_temp)
        self.teacher_temp_final = float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.warmup_teacher_temp_iters = int(warmup_teacher_temp_iters)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, iteration: int) -> float:
        """Teacher temperature at ``iteration``: linear warm-up, then ``teacher_temp``."""
        if iteration < 0:
            raise ValueError(f"DINOLoss: expected iteration >= 0, got {iteration}")
        if iteration >= self.warmup_teacher_temp_iters:
            return self.teacher_temp_final
        fraction = iteration / self.warmup_teacher_temp_iters
        return self.warmup_teacher_temp + fraction * (
            self.teacher_temp_final - self.warmup_teacher_temp
        )

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, iteration: int
    ) -> torch.Tensor:
        """Loss for one step, then update the center.

        Args:
            student_out: ``[V * B, K]`` student logits, view-major.
            teacher_out: ``[num_global_crops * B, K]`` teacher logits, view-major.
            iteration: training iteration (for the teacher temperature warm-up).

        Returns:
            a scalar tensor (float32).
        """
        num_crops = self._check_shapes(student_out, teacher_out)
        temperature = self.teacher_temperature(iteration)
        student_log_probs = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
        with torch.no_grad():
            teacher_probs = F.softmax((teacher_out.float() - self.center) / temperature, dim=-1)
        student_views = student_log_probs.chunk(num_crops)
        teacher_views = teacher_probs.chunk(self.num_global_crops)

        total = student_out.new_zeros((), dtype=torch.float32)
        num_pairs = 0
        for teacher_index, target in enumerate(teacher_views):
            for student_index, log_probs in enumerate(student_views):
                if student_index == teacher_index:
                    continue  # the same view seen by both networks teaches nothing
                total = total + (-target * log_probs).sum(dim=-1).mean()
                num_pairs += 1
        self.update_center(teacher_out)
        return total / num_pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``center <- m * center + (1 - m) * mean(teacher_out)`` over the batch of every
        process (one ``all_reduce`` when ``torch.distributed`` is initialized).

        Args:
            teacher_out: ``[N, K]`` teacher logits.
        """
        if teacher_out.dim() != 2 or teacher_out.shape[1] != self.out_dim:
            raise ValueError(
                f"DINOLoss.update_center: expected teacher_out [N, {self.out_dim}], "
                f"got {tuple(teacher_out.shape)}"
            )
        batch_sum = teacher_out.detach().float().sum(dim=0, keepdim=True)
        count = teacher_out.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            count *= dist.get_world_size()
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))

    def _check_shapes(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> int:
        """Validate ``[V * B, K]`` / ``[num_global_crops * B, K]``; return ``V``."""
        for name, tensor in (("student_out", student_out), ("teacher_out", teacher_out)):
            if tensor.dim() != 2 or tensor.shape[1] != self.out_dim:
                raise ValueError(
                    f"DINOLoss: expected {name} [N, {self.out_dim}], got {tuple(tensor.shape)}"
                )
        num_teacher = teacher_out.shape[0]
        if num_teacher == 0 or num_teacher % self.num_global_crops:
            raise ValueError(
                f"DINOLoss: teacher_out has {num_teacher} rows, expected a positive multiple "
                f"of num_global_crops={self.num_global_crops}"
            )
        batch_size = num_teacher // self.num_global_crops
        num_student = student_out.shape[0]
        if num_student % batch_size or num_student // batch_size < self.num_global_crops:
            raise ValueError(
                f"DINOLoss: student_out has {num_student} rows, expected V * B with B="
                f"{batch_size} (from teacher_out) and V >= num_global_crops="
                f"{self.num_global_crops}"
            )
        num_crops = num_student // batch_size
        if num_crops < 2:
            raise ValueError("DINOLoss: needs at least 2 student views per image, got 1")
        return num_crops
