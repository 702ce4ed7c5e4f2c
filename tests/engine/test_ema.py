"""ModelEMA: the averaging math, checkpoint state, weight swapping and the training hook."""

import logging
import math

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


def test_state_dict_round_trip_keeps_the_configured_decay(caplog):
    """The average and its count come from the state; the decay is a hyperparameter and stays
    the one this EMA was built with (a resumed run may change train.ema.decay), with a
    warning when the state's differs."""
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.5)
    model.set(5.0, count=1)
    ema.update(model)
    restored = ModelEMA(Scalar(0.0), decay=0.1)
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.ema"):
        restored.load_state_dict(ema.state_dict())
    assert restored.state["weight"].item() == pytest.approx(3.0)
    assert restored.decay == 0.1 and restored.num_updates == 1
    assert "decay: the checkpoint's is 0.5, this EMA's (the config's train.ema.decay) 0.1" in (
        caplog.text
    )

    caplog.clear()
    same = ModelEMA(Scalar(0.0), decay=0.5)
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.ema"):
        same.load_state_dict(ema.state_dict())
    assert same.decay == 0.5 and caplog.text == ""

    other_warmup = ModelEMA(Scalar(0.0), decay=0.5, warmup=100)
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.ema"):
        other_warmup.load_state_dict(ema.state_dict())
    assert other_warmup.warmup == 100
    assert "warmup: the checkpoint's is 0.0, this EMA's (the config's train.ema.warmup) 100" in (
        caplog.text
    )


def test_warmup_ramps_the_decay_up():
    """decay_t = decay * (1 - exp(-t / warmup)): the first updates nearly copy the model, so
    the random initial weights fade fast (with a fixed 0.9998 they kept 82 % after 1000)."""
    model = Scalar(0.0)
    ema = ModelEMA(model, decay=0.9, warmup=2.0)
    expected_weight = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0], start=1):
        decay = 0.9 * (1.0 - math.exp(-step / 2.0))
        assert ema.current_decay() == pytest.approx(decay)
        model.set(value, count=step)
        ema.update(model)
        expected_weight = decay * expected_weight + (1 - decay) * value
        assert ema.state["weight"].item() == pytest.approx(expected_weight)
    assert ema.current_decay(10**6) == pytest.approx(0.9)
    # The share of the initial weights after 1000 updates at 0.9998, with and without the ramp.
    ramped = ModelEMA(Scalar(0.0), decay=0.9998, warmup=2000)
    share = math.prod(ramped.current_decay(t) for t in range(1, 1001))
    assert share < 1e-100 and 0.9998**1000 > 0.8
    assert ModelEMA(Scalar(0.0), decay=0.9).current_decay(1) == 0.9  # warmup=0: fixed


@pytest.mark.parametrize("bad", [-1, float("nan"), "2000", True, None])
def test_invalid_warmup_is_rejected(bad):
    with pytest.raises(ValueError, match=r"warmup \(train.ema.warmup\)"):
        ModelEMA(Scalar(1.0), warmup=bad)


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


# Found by `make mutate` (mutmut survivors).
def test_fresh_ema_starts_at_zero_updates_so_the_hook_restarts_it():
    """A new EMA counts 0 updates, so ``EMAHook.before_train`` restarts it from the weights the
    model has when training starts (e.g. just loaded from ``train.init_checkpoint``)."""
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.5)
    assert ema.num_updates == 0
    model.set(3.0, count=0)  # weights loaded after the EMA was built
    EMAHook(ema, model).before_train()
    assert ema.state["weight"].item() == 3.0 and ema.state["running"].item() == 30.0


def test_load_state_dict_without_count_or_decay_keeps_decay_and_restarts_count():
    """A checkpoint holding only the averaged tensors: the EMA keeps its own decay and counts
    0 updates (so the hook restarts the average from the model)."""
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.25)
    ema.update(model)
    ema.load_state_dict({"state": {k: v * 2 for k, v in ema.state.items()}})
    assert ema.decay == 0.25 and ema.num_updates == 0
    assert ema.state["weight"].item() == 2.0


def test_decay_zero_tracks_the_model_and_device_is_kept():
    model = Scalar(1.0)
    ema = ModelEMA(model, decay=0.0, device="cpu")
    assert ema.device == torch.device("cpu")
    assert ModelEMA(model).device is None  # each tensor stays with the model tensor it tracks
    model.set(5.0, count=1)
    ema.update(model)
    assert ema.state["weight"].item() == 5.0


def test_errors_name_the_method():
    model, other = Scalar(1.0), nn.Linear(1, 1)
    ema = ModelEMA(model)
    with pytest.raises(
        KeyError, match=r"ModelEMA.load_state_dict: expected keys .*got \['decay'\]"
    ):
        ema.load_state_dict({"decay": 0.5})
    with pytest.raises(KeyError, match=r"ModelEMA.load_state_dict: model state does not match"):
        ema.load_state_dict({"state": other.state_dict()})
    with pytest.raises(KeyError, match=r"ModelEMA.copy_to: .*missing \['count', 'running'"):
        ema.copy_to(other)
    with pytest.raises(KeyError, match=r"ModelEMA.update: .*unexpected \['bias'\]"):
        ema.update(other)
