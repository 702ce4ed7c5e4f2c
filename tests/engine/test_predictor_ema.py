"""The Predictor, the demo and export run the weights --eval-only evaluates: a checkpoint's EMA
weights when the config evaluates those (train.ema.use_ema_weights_for_eval_only), or when asked
(``ema_weights=True``, ``tools/demo.py --ema-weights``). They used to run the raw model weights
whatever the config said: 0 of 50 top detections agreed with the evaluated (EMA) model in an
audit's run."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detr_ext.checkpoint import CheckpointMismatchError, load_model_weights
from detr_ext.checkpoint.loading import ema_weights_requested
from detr_ext.engine import ModelEMA
from detr_ext.engine.predictor import Predictor
from detr_ext.export.checks import build_model
from tests.tool_runs import SHAPES_CONFIGS

CONFIG = SHAPES_CONFIGS["detr"]


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    """A checkpoint as train_net writes it with EMA on: model weights and other EMA weights."""
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(CONFIG)).model)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        for tensor in ema.state.values():
            if tensor.is_floating_point():
                tensor.add_(0.25)
    path = tmp_path_factory.mktemp("ema") / "model_final.pth"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "iteration": 9}, path)
    return path, model.state_dict(), {k: v.clone() for k, v in ema.state.items()}


def _config(ema_only: bool):
    cfg = LazyConfig.load(str(CONFIG))
    cfg.train.ema.enabled = ema_only
    cfg.train.ema.use_ema_weights_for_eval_only = ema_only
    return cfg


def _equal(model, state) -> bool:
    loaded = model.state_dict()
    return all(torch.equal(loaded[key], value) for key, value in state.items())


def test_predictor_follows_the_config_or_the_argument(run_checkpoint):
    path, model_state, ema_state = run_checkpoint
    assert _equal(Predictor(_config(False), path, device="cpu").model, model_state)
    assert _equal(Predictor(_config(True), path, device="cpu").model, ema_state)
    assert _equal(Predictor(_config(False), path, device="cpu", ema_weights=True).model, ema_state)
    assert _equal(
        Predictor(_config(True), path, device="cpu", ema_weights=False).model, model_state
    )


def test_export_builds_the_evaluated_weights(run_checkpoint):
    path, model_state, ema_state = run_checkpoint
    assert _equal(build_model(_config(True), path), ema_state)
    assert _equal(build_model(_config(False), path), model_state)


def test_ema_weights_requested_follows_the_eval_only_option():
    assert ema_weights_requested(_config(True))
    assert not ema_weights_requested(_config(False))
    cfg = _config(False)
    cfg.train.ema.enabled = True  # EMA trained, model weights evaluated
    assert not ema_weights_requested(cfg)
    assert not ema_weights_requested(LazyConfig.load(str(CONFIG)).model)  # no train node


def test_ema_weights_without_ema_enabled_are_refused_as_by_eval_only(run_checkpoint):
    """``use_ema_weights_for_eval_only`` without ``enabled``: ``--eval-only`` refuses it, so the
    Predictor and export do too (they ran the model weights of such a config)."""
    path = run_checkpoint[0]
    cfg = _config(True)
    cfg.train.ema.enabled = False
    with pytest.raises(ValueError, match="needs train.ema.enabled=True too"):
        ema_weights_requested(cfg)
    with pytest.raises(ValueError, match="needs train.ema.enabled=True too"):
        Predictor(cfg, path, device="cpu")
    with pytest.raises(ValueError, match="needs train.ema.enabled=True too"):
        build_model(cfg, path)


def test_a_checkpoint_without_ema_weights_is_an_error_when_they_are_asked_for(tmp_path):
    model = instantiate(LazyConfig.load(str(CONFIG)).model)
    path = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match="has no 'ema' state"):
        Predictor(_config(True), path, device="cpu")
    with pytest.raises(CheckpointMismatchError, match="has no 'ema' state"):
        load_model_weights(model, path, where="test", ema=True)
