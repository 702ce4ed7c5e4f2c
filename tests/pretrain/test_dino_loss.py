"""DINOLoss against a hand computation (2 global + 1 local view, B=1, K=3), the center update
(also across 2 gloo processes), and the teacher temperature warm-up."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from detr_ext.pretrain import DINOLoss
from tests.gloo import gloo_group

STUDENT = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, -0.5, 1.0]]  # views 0, 1 (global), 2 (local)
TEACHER = [[0.6, 0.0, -0.3], [0.0, 0.9, 0.3]]  # the two global views
CENTER = [0.1, 0.0, 0.2]


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _tiny_loss(**kwargs) -> DINOLoss:
    loss = DINOLoss(
        out_dim=3,
        num_global_crops=2,
        student_temp=0.5,
        teacher_temp=0.25,
        warmup_teacher_temp=0.5,
        warmup_teacher_temp_iters=2,
        center_momentum=0.9,
        **kwargs,
    )
    loss.center.copy_(torch.tensor([CENTER]))
    return loss


def test_loss_matches_hand_computation():
    loss_fn = _tiny_loss()
    # Iteration 1 of a 2-iteration warm-up from 0.5 to 0.25: teacher temperature 0.375.
    teacher_temp = 0.375
    # Teacher: softmax((t - center) / 0.375): view 0 softmax([0.5, 0, -0.5] / 0.375) =
    # [0.75014, 0.19774, 0.05212], view 1 softmax([-0.1, 0.9, 0.1] / 0.375) =
    # [0.05849, 0.84180, 0.09970].
    targets = [_softmax([(t - c) / teacher_temp for t, c in zip(row, CENTER)]) for row in TEACHER]
    # Student: log_softmax(s / 0.5): view 0 [-0.14293, -2.14293, -4.14293], view 1
    # [-0.86199, -0.86199, -1.86199], view 2 [-2.16985, -3.16985, -0.16985].
    log_probs = [[math.log(p) for p in _softmax([s / 0.5 for s in row])] for row in STUDENT]
    # Pairs (teacher view, student view): (0, 1), (0, 2), (1, 0), (1, 2); never (i, i).
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expected = sum(-sum(q * lp for q, lp in zip(targets[i], log_probs[j])) for i, j in pairs) / len(
        pairs
    )
    assert expected == pytest.approx(2.0537631, abs=1e-6)  # the same sum, written out once

    student = torch.tensor(STUDENT, requires_grad=True)
    loss = loss_fn(student, torch.tensor(TEACHER), iteration=1)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_center_update_after_loss():
    loss_fn = _tiny_loss()
    loss_fn(torch.tensor(STUDENT), torch.tensor(TEACHER), iteration=5)
    # center <- 0.9 * center + 0.1 * mean over the batch of teacher outputs.
    mean = [(a + b) / 2 for a, b in zip(*TEACHER)]  # [0.3, 0.45, 0.0]
    expected = [0.9 * c + 0.1 * m for c, m in zip(CENTER, mean)]  # [0.12, 0.045, 0.18]
    assert loss_fn.center.tolist()[0] == pytest.approx(expected, abs=1e-7)
    assert "center" in loss_fn.state_dict()
    # A second step starts from the updated center.
    loss_fn.update_center(torch.tensor([[1.0, 1.0, 1.0]]))
    again = [0.9 * e + 0.1 * 1.0 for e in expected]
    assert loss_fn.center.tolist()[0] == pytest.approx(again, abs=1e-7)


def test_teacher_temperature_warmup():
    loss_fn = DINOLoss(
        out_dim=3, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_iters=30
    )
    assert loss_fn.teacher_temperature(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temperature(10) == pytest.approx(0.05)
    assert loss_fn.teacher_temperature(15) == pytest.approx(0.055)
    assert loss_fn.teacher_temperature(30) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(1000) == pytest.approx(0.07)
    constant = DINOLoss(out_dim=3, teacher_temp=0.07, warmup_teacher_temp=0.04)
    assert constant.teacher_temperature(0) == pytest.approx(0.07)


def test_rejects_bad_shapes_and_arguments():
    loss_fn = DINOLoss(out_dim=3)
    with pytest.raises(ValueError, match="student_out"):
        loss_fn(torch.zeros(3, 4), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="num_global_crops=2"):
        loss_fn(torch.zeros(3, 3), torch.zeros(3, 3), 0)
    with pytest.raises(ValueError, match="V \\* B"):
        loss_fn(torch.zeros(5, 3), torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(out_dim=3, center_momentum=1.5)
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(out_dim=3, student_temp=0.0)


def _center_on_rank(rank: int, world_size: int, init_file: str, results) -> None:
    with gloo_group(rank, world_size, init_file):
        loss_fn = DINOLoss(out_dim=2, center_momentum=0.5)
        teacher = (
            torch.tensor([[1.0, 0.0], [3.0, 0.0]])
            if rank == 0
            else torch.tensor([[0.0, 4.0], [0.0, 8.0]])
        )
        loss_fn(torch.cat([teacher, teacher, teacher]), teacher, iteration=0)
        results[rank] = loss_fn.center.tolist()


def test_center_is_averaged_over_processes(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_center_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    # Mean of the 4 teacher rows of both ranks: [1, 3]; center 0.5 * 0 + 0.5 * [1, 3].
    assert results[0][0] == pytest.approx([0.5, 1.5])
    assert results[1][0] == pytest.approx([0.5, 1.5])
