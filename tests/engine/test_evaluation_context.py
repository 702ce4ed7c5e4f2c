"""detr_ext.engine.evaluation_context with 2 gloo processes: inside ``main_process_buffers``
every process holds process 0's BatchNorm statistics (model and EMA), afterwards its own;
``preserved_random_states`` undoes what a block draws."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from detr_ext.engine.ema import ModelEMA
from detr_ext.engine.evaluation_context import main_process_buffers, preserved_random_states
from tests.gloo import gloo_group

WORLD_SIZE = 2


def _model(rank: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.train()
    torch.manual_seed(10 + rank)  # each process sees its own data: its own statistics
    model(torch.randn(8, 3) * (rank + 1))
    return model


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    with gloo_group(rank, WORLD_SIZE, init_file):
        model = _model(rank)
        ema = ModelEMA(model, decay=0.5)
        model(torch.randn(8, 3) * (rank + 1))
        ema.update(model)
        own = {name: buffer.clone() for name, buffer in model.named_buffers()}
        own_ema = {name: tensor.clone() for name, tensor in ema.state.items()}
        with main_process_buffers(model, ema):
            inside = {name: buffer.tolist() for name, buffer in model.named_buffers()}
            inside_ema = {name: ema.state[name].tolist() for name in own}
            weight = ema.state["0.weight"].tolist()
        restored = all(torch.equal(b, own[name]) for name, b in model.named_buffers())
        restored_ema = all(torch.equal(t, own_ema[name]) for name, t in ema.state.items())
        result = {
            "inside": inside,
            "inside_ema": inside_ema,
            "own": {name: buffer.tolist() for name, buffer in own.items()},
            "restored": restored and restored_ema,
            "ema_weight": weight,
        }
        (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps(result))


def test_main_process_buffers_inside_and_each_process_its_own_after(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["own"]["1.running_mean"] != rank1["own"]["1.running_mean"]  # the premise
    assert rank1["inside"] == rank0["own"]  # every buffer, also num_batches_tracked
    assert rank1["inside_ema"] == rank0["inside_ema"]
    assert rank1["inside_ema"]["1.running_var"] != rank1["own"]["1.running_var"]
    assert rank0["restored"] and rank1["restored"]
    assert rank0["ema_weight"] == rank1["ema_weight"]  # parameters are not touched


def test_main_process_buffers_does_nothing_in_one_process():
    model = _model(0)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with main_process_buffers(model, ModelEMA(model)):
        assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())


def test_preserved_random_states_undoes_the_draws_of_the_block():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    with preserved_random_states():
        torch.rand(5), np.random.rand(5), random.random()
    after = (torch.rand(1).item(), float(np.random.rand()), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    assert after == (torch.rand(1).item(), float(np.random.rand()), random.random())
