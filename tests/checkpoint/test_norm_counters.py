"""BatchNorm step counters of a BN-trained checkpoint loaded into a FrozenBN model are ignored,
not reported as unexpected; everything else is loaded and reported as before."""

from __future__ import annotations

import logging

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from detr_ext.checkpoint import ShapeCheckingCheckpointer
from detr_ext.checkpoint.norm_counters import frozen_norm_counters
from detr_ext.engine.checkpointer import SafeCheckpointer


def _net(norm) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), norm(4), nn.ReLU(), norm(4))


def _bn_checkpoint() -> dict:
    trained = _net(nn.BatchNorm2d)
    with torch.no_grad():
        for module in trained.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(7)
    return {"model": trained.state_dict()}


def test_frozen_norm_counters_names_only_frozen_layers():
    model_keys = _net(FrozenBatchNorm2d).state_dict().keys()
    checkpoint_keys = [
        "1.num_batches_tracked",
        "module.3.num_batches_tracked",  # saved from DistributedDataParallel
        "9.num_batches_tracked",  # no such layer in the model: stays unexpected
        "1.running_mean",
    ]
    assert frozen_norm_counters(checkpoint_keys, model_keys) == [
        "1.num_batches_tracked",
        "module.3.num_batches_tracked",
    ]
    # A BatchNorm model has its counters: nothing is dropped.
    bn_keys = _net(nn.BatchNorm2d).state_dict().keys()
    assert frozen_norm_counters(checkpoint_keys, bn_keys) == []


@pytest.mark.parametrize("checkpointer_class", [SafeCheckpointer, ShapeCheckingCheckpointer])
def test_bn_checkpoint_into_frozen_bn_model(checkpointer_class, caplog):
    checkpoint = _bn_checkpoint()
    expected = {key: value.clone() for key, value in checkpoint["model"].items()}
    checkpoint["model"]["5.num_batches_tracked"] = torch.tensor(3)  # a layer the model lacks
    model = _net(FrozenBatchNorm2d)
    with caplog.at_level(logging.INFO, logger="detr_ext.checkpoint.norm_counters"):
        incompatible = checkpointer_class(model)._load_model(checkpoint)
    assert incompatible.unexpected_keys == ["5.num_batches_tracked"]
    assert incompatible.missing_keys == []
    assert "Ignored 2 BatchNorm step counters" in caplog.text
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_bn_model_keeps_its_counters():
    checkpoint = _bn_checkpoint()
    model = _net(nn.BatchNorm2d)
    incompatible = SafeCheckpointer(model)._load_model(checkpoint)
    assert incompatible.unexpected_keys == []
    assert int(model[1].num_batches_tracked) == 7
