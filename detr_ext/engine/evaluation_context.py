"""What an evaluation during training must not change, and must see, with several processes.

- **It must see the saved model.** With ``train.ddp.broadcast_buffers=False`` (the default, as
  detrex) every process keeps its own BatchNorm running statistics, and so does its EMA copy;
  checkpoints hold the main process's. Each process evaluates its share of the test images, so
  without :func:`main_process_buffers` the AP logged during training mixed the statistics of
  all processes and was not the AP of the ``model_final.pth`` written next to it (the images
  of process 1 scored up to 0.017 apart in the audit's 2-process run).
- **It must not change training.** Building the test loader's iterator draws from torch's
  generator: an evaluation at a checkpoint iteration (the COCO recipes evaluate and save every
  5000 iterations) moved the generators away from the states the checkpoint recorded, so a run
  resumed there drew other noise than the uninterrupted one. :func:`preserved_random_states`
  puts them back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import nn

from .ema import ModelEMA, unwrap_model
from .random_states import capture_rng_states, restore_rng_states

__all__ = ["main_process_buffers", "preserved_random_states"]


@contextlib.contextmanager
def preserved_random_states() -> Iterator[None]:
    """Run the block, then put torch's (CPU and CUDA), numpy's and Python's generators back to
    where they were before it."""
    states = capture_rng_states()
    try:
        yield
    finally:
        restore_rng_states(states)


@contextlib.contextmanager
def main_process_buffers(model: nn.Module, ema: ModelEMA | None = None) -> Iterator[None]:
    """Inside the block every process holds the main process's buffers (BatchNorm statistics)
    in ``model`` and in the ``ema`` copy, i.e. the ones a checkpoint written now would hold;
    afterwards each process has its own back, so training goes on as it would have. All
    processes must enter it (it broadcasts); with one process it does nothing."""
    if comm.get_world_size() == 1:
        yield
        return
    module = unwrap_model(model)
    names = [name for name, _ in module.named_buffers()]
    tensors = [buffer for _, buffer in module.named_buffers()]
    if ema is not None:
        tensors += [ema.state[name] for name in names if name in ema.state]
    own = [tensor.clone() for tensor in tensors]
    try:
        with torch.no_grad():
            for tensor in tensors:
                _broadcast_from_main(tensor)
        yield
    finally:
        with torch.no_grad():
            for tensor, saved in zip(tensors, own, strict=True):
                tensor.copy_(saved)


def _broadcast_from_main(tensor: torch.Tensor) -> None:
    # NCCL takes CUDA tensors only; an EMA kept on the CPU (train.ema.device="cpu") goes
    # through the current GPU.
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(staged, src=0)
        tensor.copy_(staged)
    else:
        dist.broadcast(tensor, src=0)
