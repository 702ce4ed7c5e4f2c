"""Models whose losses or gradients go non-finite on cue, for the tests of non-finite steps
(``test_nonfinite.py``: the Trainer; ``test_nonfinite_do_train.py``: ``do_train``)."""

import torch
from torch import nn

from tests.engine.tiny_project import IN_FEATURES, TinyModel


class InfGradient(torch.autograd.Function):
    """Identity forward, inf backward: a layer whose backward pass overflows."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class FlakyRegressor(nn.Module):
    """Linear regressor on a batch ``(inputs [B, 3], targets [B])`` returning
    ``{"loss_mse", "loss_reg"}``; on the forward calls listed in ``inf_grad_at`` its backward
    overflows (finite loss, inf gradient), on those in ``nan_loss_at`` ``loss_reg`` is NaN."""

    def __init__(self, inf_grad_at=(), nan_loss_at=(), batchnorm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.norm = nn.BatchNorm1d(3) if batchnorm else nn.Identity()
        self.inf_grad_at = set(inf_grad_at)
        self.nan_loss_at = set(nan_loss_at)
        self.calls = 0

    def forward(self, batch):
        call, self.calls = self.calls, self.calls + 1
        inputs, targets = batch
        if call in self.nan_loss_at and isinstance(self.norm, nn.BatchNorm1d):
            inputs = inputs * float("nan")  # poisons the BatchNorm running statistics
        preds = self.linear(self.norm(inputs)).squeeze(-1)
        if call in self.inf_grad_at:
            preds = InfGradient.apply(preds)
        loss_mse = ((preds.float() - targets) ** 2).mean()
        loss_reg = 1e-3 * self.linear.weight.square().sum()
        if call in self.nan_loss_at:
            loss_reg = loss_reg * float("nan")
        return {"loss_mse": loss_mse, "loss_reg": loss_reg}


class DivergingTinyModel(TinyModel):
    """:class:`TinyModel` whose backward overflows from its ``diverge_at``-th forward on."""

    def __init__(self, diverge_at: int, in_features: int = IN_FEATURES) -> None:
        super().__init__(in_features)
        self.diverge_at = diverge_at
        self.calls = 0

    def forward(self, batched_inputs):
        if not self.training:
            return super().forward(batched_inputs)
        self.calls += 1
        inputs = torch.stack([item["x"] for item in batched_inputs])
        preds = self.linear(self.norm(inputs)).squeeze(-1)
        if self.calls > self.diverge_at:
            preds = InfGradient.apply(preds)
        targets = torch.stack([item["y"] for item in batched_inputs])
        return {"loss_mse": nn.functional.mse_loss(preds, targets)}
