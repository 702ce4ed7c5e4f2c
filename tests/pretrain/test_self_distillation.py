"""Student / momentum teacher: no teacher gradients, the exact EMA rule, the fixed weight-norm
magnitude of the head, multi-crop grouping on the shapes ResNet-18 GN backbone, schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from torch import nn

from detr_ext.config import get_config
from detr_ext.pretrain import BackboneEmbedder, DINOHead, SelfDistillation, cosine_schedule

K = 16


def _shapes_backbone() -> nn.Module:
    """The ResNet-18 GN backbone of ``configs/common/detr_shapes.py``."""
    return instantiate(get_config("common/detr_shapes.py").model.backbone)


def _tiny_head(in_dim: int, norm_last_layer: bool = True) -> DINOHead:
    return DINOHead(
        in_dim, out_dim=K, hidden_dim=32, bottleneck_dim=8, norm_last_layer=norm_last_layer
    )


class ConvBNBackbone(nn.Module):
    """A small backbone with BatchNorm running statistics (buffers), output ``{"res5": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res5": self.norm(self.conv(x))}


def _crops(batch: int = 2, global_size: int = 32, local_size: int = 16, num_local: int = 3):
    return [torch.randn(batch, 3, global_size, global_size) for _ in range(2)] + [
        torch.randn(batch, 3, local_size, local_size) for _ in range(num_local)
    ]


def test_shapes_backbone_embeds_crops_grouped_by_size_in_order():
    embedder = BackboneEmbedder(_shapes_backbone(), "res5", _tiny_head(512)).eval()
    batch_sizes = []
    embedder.backbone.register_forward_hook(
        lambda module, args, output: batch_sizes.append(tuple(args[0].shape))
    )
    crops = _crops(batch=2)
    with torch.no_grad():
        out = embedder(crops)
    assert out.shape == (5 * 2, K)
    # 2 global crops in one backbone call, 3 local crops in another.
    assert batch_sizes == [(4, 3, 32, 32), (6, 3, 16, 16)]
    # Rows are view-major: rows 2v, 2v + 1 are view v (GroupNorm: no batch coupling).
    with torch.no_grad():
        one_by_one = torch.cat([embedder([crop]) for crop in crops])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-4)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        features = embedder.features(images)
        res5 = embedder.backbone(images)["res5"]
    assert features.shape == (2, 512)
    # Global average pooling of the 3 x 3 res5 map, by hand.
    assert res5.shape[-2:] == (3, 3)
    manual = res5.sum(dim=(2, 3)) / (res5.shape[2] * res5.shape[3])
    torch.testing.assert_close(features, manual)


def test_embedder_rejects_mismatches():
    with pytest.raises(ValueError, match="res4"):
        BackboneEmbedder(_shapes_backbone(), "res4", _tiny_head(512))
    with pytest.raises(ValueError, match="512 channels"):
        BackboneEmbedder(_shapes_backbone(), "res5", _tiny_head(256))
    with pytest.raises(TypeError, match="DINOHead"):
        BackboneEmbedder(_shapes_backbone(), "res5")
    embedder = BackboneEmbedder(ConvBNBackbone(), "res5", _tiny_head(8))
    with pytest.raises(ValueError, match="crop 1"):
        embedder([torch.zeros(2, 3, 8, 8), torch.zeros(3, 3, 8, 8)])


def test_teacher_gets_no_gradients_and_sees_only_global_crops():
    model = SelfDistillation(BackboneEmbedder(_shapes_backbone(), "res5", _tiny_head(512)), 0.9)
    teacher_calls = []
    model.teacher.backbone.register_forward_hook(
        lambda module, args, output: teacher_calls.append(tuple(args[0].shape))
    )
    student_out, teacher_out = model(_crops(batch=2), num_global=2)
    assert student_out.shape == (10, K) and teacher_out.shape == (4, K)
    assert teacher_calls == [(4, 3, 32, 32)]
    assert not teacher_out.requires_grad
    (student_out.sum() + teacher_out.sum()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
    # train() / eval() reach the teacher too.
    model.eval()
    assert not model.teacher.training and not model.student.training
    model.train()
    assert model.teacher.training


def test_update_teacher_follows_the_ema_rule():
    model = SelfDistillation(BackboneEmbedder(ConvBNBackbone(), "res5", _tiny_head(8)), 0.5)
    before = {name: p.detach().clone() for name, p in model.teacher.named_parameters()}
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(torch.randn_like(parameter))
    model.student(_crops(batch=4, global_size=8, local_size=4, num_local=1))  # BN statistics
    assert not torch.equal(model.student.backbone.norm.running_mean, torch.zeros(8))
    student = dict(model.student.named_parameters())
    model.update_teacher(0.9)
    for name, parameter in model.teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * student[name].detach()
        torch.testing.assert_close(parameter, expected, rtol=0, atol=1e-6)
    for (name, teacher_buffer), (_, student_buffer) in zip(
        model.teacher.named_buffers(), model.student.named_buffers(), strict=True
    ):
        assert torch.equal(teacher_buffer, student_buffer), name
    # Two crop sizes, two BatchNorm passes in the student; the teacher never ran but copied it.
    assert model.teacher.backbone.norm.num_batches_tracked.item() == 2
    # m = 1 keeps the teacher; the default momentum is the constructor's.
    frozen = {name: p.detach().clone() for name, p in model.teacher.named_parameters()}
    model.update_teacher(1.0)
    assert all(torch.equal(p, frozen[n]) for n, p in model.teacher.named_parameters())
    with pytest.raises(ValueError, match="momentum"):
        model.update_teacher(1.5)


def test_head_weight_norm_magnitude_stays_fixed():
    head = _tiny_head(8)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.shape == (K, 1) and not magnitude.requires_grad
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(4, 8)).pow(2).sum().backward()
    optimizer.step()
    assert torch.equal(magnitude, torch.ones(K, 1))
    row_norms = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(row_norms, torch.ones(K))
    trainable = _tiny_head(8, norm_last_layer=False)
    assert trainable.last_layer.parametrizations.weight.original0.requires_grad
    torch.testing.assert_close(
        trainable.last_layer.parametrizations.weight.original0, torch.ones(K, 1)
    )


def test_head_logits_are_bounded_by_the_normalized_embedding():
    # Unit-norm embedding times unit-norm weight rows: every logit is a cosine, in [-1, 1],
    # however large the input.
    head = _tiny_head(8)
    logits = head(1000.0 * torch.randn(6, 8))
    assert logits.abs().max() <= 1.0 + 1e-5
    assert logits.abs().max() > 0.1


def test_head_output_shape_and_errors():
    head = DINOHead(8, out_dim=5, hidden_dim=6, bottleneck_dim=4, num_layers=1)
    assert head(torch.randn(3, 8)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        head(torch.randn(3, 7))
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(8, num_layers=0)


def test_cosine_schedule_points():
    momentum = cosine_schedule(0.996, 1.0, total_iters=100)
    assert momentum(0) == pytest.approx(0.996)
    assert momentum(50) == pytest.approx(0.998)
    assert momentum(100) == pytest.approx(1.0)
    assert momentum(101) == pytest.approx(1.0)
    assert momentum(150) == pytest.approx(1.0)
    lr = cosine_schedule(1e-3, 1e-5, total_iters=110, warmup_iters=10, warmup_start=1e-4)
    assert lr(0) == pytest.approx(1e-4)
    assert lr(5) == pytest.approx(5.5e-4)
    assert lr(10) == pytest.approx(1e-3)
    # A quarter into the cosine part: final + (base - final) * (1 + cos(pi / 4)) / 2.
    quarter = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2
    assert lr(35) == pytest.approx(quarter)
    assert lr(110) == pytest.approx(1e-5)
    assert lr(115) == pytest.approx(1e-5)  # stays at final past the end, no second half-wave
    with pytest.raises(ValueError, match="warmup_iters"):
        cosine_schedule(1.0, 0.0, total_iters=5, warmup_iters=6)
    with pytest.raises(ValueError, match="iteration"):
        lr(-1)


def test_head_batch_norm_keeps_nearly_alike_inputs_apart():
    """``use_bn`` (DINO's use_bn_in_head) puts BatchNorm1d before each GELU: inputs that differ
    by 1e-3 (pooled features of a random backbone are nearly alike) give embeddings far apart,
    where the plain head's stay almost identical."""
    torch.manual_seed(0)
    inputs = torch.randn(1, 16).repeat(8, 1) + 1e-3 * torch.randn(8, 16)
    spreads = {}
    for use_bn in (False, True):
        torch.manual_seed(1)
        head = DINOHead(16, out_dim=K, hidden_dim=32, bottleneck_dim=8, use_bn=use_bn).train()
        assert sum(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == (2 if use_bn else 0)
        embeddings = F.normalize(head.mlp(inputs), dim=-1)
        spreads[use_bn] = (embeddings - embeddings.mean(0)).norm(dim=-1).mean().item()
        assert head(inputs).shape == (8, K)
    assert spreads[False] < 1e-2 < 0.3 < spreads[True]
