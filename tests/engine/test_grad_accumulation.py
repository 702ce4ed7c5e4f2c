"""Trainer(accumulation_steps=k): one optimizer step per k batches, equal to one step on all
of them; non-finite batches skip the whole step; a GradScaler sees the step once. The
end-to-end check under 2 DDP processes is in test_train_net.py."""

import itertools

import pytest
import torch
from torch import nn

from detr_ext.engine import Trainer

from .test_trainer import BatchLoader, LinearRegressor


class Halves:
    """Each batch of ``loader`` as its two halves, one after the other."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        for inputs, targets in self.loader:
            yield inputs[:4], targets[:4]
            yield inputs[4:], targets[4:]


def train(loader, steps: int, **kwargs) -> tuple[LinearRegressor, Trainer]:
    torch.manual_seed(0)
    model = LinearRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, loader, optimizer, **kwargs)
    trainer.train(0, steps)
    return model, trainer


@pytest.mark.parametrize("scaler", [False, True])
def test_two_half_batches_per_step_equal_one_whole_batch(scaler):
    """The mean squared error of a batch is the mean of its halves' (equal halves), so 3 steps
    of 2 accumulated halves give the weights of 3 steps on the whole batches, also through a
    GradScaler (which must unscale and step once per step, not per half)."""
    whole, _ = train(BatchLoader(), 3)
    options = {"grad_scaler": torch.amp.GradScaler("cpu", init_scale=256.0)} if scaler else {}
    halves, trainer = train(Halves(BatchLoader()), 3, accumulation_steps=2, **options)
    for expected, got in zip(whole.parameters(), halves.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert trainer.iter == 3 and trainer.nonfinite_skipped_steps == 0
    if scaler:
        assert trainer.grad_scaler.get_scale() == 256.0  # no overflow, no step skipped


def test_logged_loss_is_the_mean_over_the_accumulated_batches():
    _, trainer = train(Halves(BatchLoader()), 1, accumulation_steps=2)
    inputs, targets = BatchLoader().batches[0]
    torch.manual_seed(0)
    reference = LinearRegressor()
    expected = [
        reference((inputs[part], targets[part]))["loss_mse"].item()
        for part in (slice(0, 4), slice(4, 8))
    ]
    logged = trainer.storage.history("total_loss").values()[0][0]
    assert logged == pytest.approx(sum(expected) / 2, rel=1e-6)


class PoisonSecondBatch:
    """Batches of ``BatchLoader`` with the targets of the 2nd batch overall set to NaN."""

    def __iter__(self):
        for index, (inputs, targets) in enumerate(itertools.cycle(BatchLoader().batches)):
            yield inputs, targets * float("nan") if index == 1 else targets


def test_a_nonfinite_batch_skips_the_whole_step():
    """Batches 0 and 1 make step 0; batch 1's NaN loss skips it (weights untouched), and
    step 1 (batches 2, 3) trains."""
    torch.manual_seed(0)
    initial = LinearRegressor().state_dict()
    model = LinearRegressor()
    model.load_state_dict(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, PoisonSecondBatch(), optimizer, accumulation_steps=2)
    trainer.train(0, 1)
    assert trainer.nonfinite_skipped_steps == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0)
    trainer.train(1, 2)
    assert trainer.nonfinite_skipped_steps == 1
    assert not torch.equal(model.linear.weight, initial["linear.weight"])


class ToggleLossNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, _batch):
        self.calls += 1
        name = "loss_a" if self.calls % 2 else "loss_b"
        return {name: self.weight.sum()}


def test_accumulation_steps_are_validated_and_loss_terms_must_agree():
    model = LinearRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="train.grad_accumulation_steps"):
            Trainer(model, BatchLoader(), optimizer, accumulation_steps=bad)
    toggling = ToggleLossNames()
    trainer = Trainer(
        toggling,
        itertools.repeat(None),
        torch.optim.SGD(toggling.parameters(), lr=0.1),
        accumulation_steps=2,
    )
    with pytest.raises(ValueError, match=r"same loss terms; got \['loss_a'\] and \['loss_b'\]"):
        trainer.train(0, 1)
