"""ModelEMA: the averaging math, checkpoint state, weight swapping and the training hook."""

import pytest
import torch
from torch import nn

from detr_ext.engine import EMAHook, ModelEMA, apply_ema


class Scalar(nn.Module):
    """One parameter, one float buffer, one integer buffer: easy to compute by hand."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([value]))
        self.register_buffer("running", torch.tensor([value]))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))

    def set(self, value: float, count: int) -> None:
        with torch.no_grad():
            self.weight.fill_(value)
            self.running.fill_(10 * value)
            self.count.fill_(count)


def test_update_matches_hand_computed_average():
    model = Scalar(1.0)
    model.running.fill_(10.0)
    ema = ModelEMA(model, decay=0.5)
    for step, value in enumerate([2.0, 4.0, 8.0], start=1):
        model.set(value, count=step)
        ema.update(model)
    # 0.5 * 1 + 0.5 * 2 = 1.5; 0.5 * 1.5 + 0.5 * 4 = 2.75; 0.5 * 2.75 + 0.5 * 8 = 5.375
    assert ema.state["weight"].item() == pytest.approx(5.375)
    assert ema.state["running"].item() == pytest.approx(53.75)
    assert ema.state["count"].item() == 3  # integer buffers are copied, not averaged
    assert ema.num_updates == 3


def test_unwraps_data_parallel_and_uses_plain_keys():
    model = Scalar(1.0)
    ema = ModelEMA(nn.DataParallel(model), decay=0.9)
    assert set(ema.state) == {"weight", "running", "count"}
    model.set(2.0, count=1)
    ema.update(nn.DataParallel(model))
    assert ema.state["weight"].item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)


def test_apply_ema_swaps_in_and_restores_in_place():
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.5)
    model.set(3.0, count=5)
    ema.update(model)  # EMA weight: 2.0
    param = model.weight
    with apply_ema(model, ema):
        assert model.weight.item() == pytest.approx(2.0)
        assert model.count.item() == 5
    assert model.weight is param  # optimizer references stay valid
    assert model.weight.item() == 3.0
    with pytest.raises(RuntimeError, match="boom"), apply_ema(model, ema):
        raise RuntimeError("boom")
    assert model.weight.item() == 3.0
    with apply_ema(model, None):
        assert model.weight.item() == 3.0


def test_state_dict_round_trip():
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.5)
    model.set(5.0, count=1)
    ema.update(model)
    restored = ModelEMA(Scalar(0.0), decay=0.1)
    restored.load_state_dict(ema.state_dict())
    assert restored.state["weight"].item() == pytest.approx(3.0)
    assert restored.decay == 0.5 and restored.num_updates == 1


def test_mismatched_model_is_rejected():
    ema = ModelEMA(Scalar(1.0))
    with pytest.raises(KeyError, match="missing"):
        ema.update(nn.Linear(1, 1))
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(Scalar(1.0), decay=1.0)


def test_hook_restarts_fresh_average_and_updates_each_step():
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.5)
    model.set(4.0, count=0)  # e.g. weights loaded from init_checkpoint after the EMA was built
    hook = EMAHook(ema, model)
    hook.before_train()
    assert ema.state["weight"].item() == 4.0
    model.set(6.0, count=1)
    hook.after_step()
    assert ema.state["weight"].item() == pytest.approx(5.0)
    model.set(0.0, count=2)
    hook.before_train()  # a resumed average is kept
    assert ema.state["weight"].item() == pytest.approx(5.0)
