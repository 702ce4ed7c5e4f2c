"""Mixed precision: a training step of every project's shapes model under autocast.

bfloat16 on the CPU runs here; float16 and bfloat16 on CUDA are ``cuda``-marked. The models
are the configs' own, shrunk (``tests/projects/tiny_shapes.py``). Under autocast the heads
give reduced-precision logits and boxes; the matcher and the criterion compute in float32
(``detr_ext.modeling.losses.precision``), so the losses are float32 and finite, and so are the
gradients. The last test runs the trainer's own path (``Trainer(bf16=True)``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from detectron2.config import instantiate

from detr_ext.engine import Trainer

from .tiny_shapes import SHAPES_CONFIGS, synthetic_batch, tiny_shapes_config

PROJECTS = sorted(SHAPES_CONFIGS)


def train_step_under_autocast(
    project: str, device: str, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """Forward (under autocast) and backward of one batch with 3 objects and an empty image;
    the losses and the model, its gradients filled. Checks that the transformer's linear
    layers ran in ``dtype`` (a forward that left autocast would pass the rest unseen)."""
    torch.manual_seed(0)
    model = instantiate(tiny_shapes_config(project).model).to(device).train()
    batch = synthetic_batch([3, 0], seed=0)
    output_dtypes: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is kept
            output_dtypes.setdefault(name, output.dtype)

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("transformer.")
    ]
    with torch.autocast(device_type=device, dtype=dtype):
        losses = model(batch)
    for hook in hooks:
        hook.remove()
    assert output_dtypes, "no linear layer of the transformer ran"
    full_precision = sorted(name for name, got in output_dtypes.items() if got != dtype)
    assert not full_precision, f"not in {dtype} under autocast: {full_precision[:5]}"
    sum(losses.values()).backward()
    return losses, model


def check_losses_and_gradients(losses: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    assert losses, "no losses"
    for key, value in losses.items():
        assert value.dtype == torch.float32, (key, value.dtype)
        assert torch.isfinite(value), (key, value)
    assert losses["loss_bbox"] > 0  # the batch has objects: the matched boxes were trained
    grads = {name: param.grad for name, param in model.named_parameters() if param.requires_grad}
    missing = [name for name, grad in grads.items() if grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    nonfinite = [name for name, grad in grads.items() if not torch.isfinite(grad).all()]
    assert not nonfinite, f"non-finite gradients: {nonfinite[:5]}"
    assert any(grad.abs().sum() > 0 for grad in grads.values())


@pytest.mark.parametrize("project", PROJECTS)
def test_cpu_bfloat16_train_step(project):
    losses, model = train_step_under_autocast(project, "cpu", torch.bfloat16)
    check_losses_and_gradients(losses, model)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("project", PROJECTS)
def test_cuda_train_step(project, dtype):
    losses, model = train_step_under_autocast(project, "cuda", dtype)
    check_losses_and_gradients(losses, model)


def test_trainer_bf16_step_on_a_deformable_model():
    """``train.bf16=True`` as ``do_train`` runs it: one ``Trainer.run_step`` of Deformable
    DETR on the CPU updates every parameter to finite values and logs a finite loss."""
    torch.manual_seed(0)
    cfg = tiny_shapes_config("deformable_detr")
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = Trainer(
        model, itertools.repeat(synthetic_batch([2, 1], seed=0)), optimizer, bf16=True
    )
    assert trainer.autocast_dtype == torch.bfloat16
    trainer.train(0, 1)

    total_loss = [value for value, _ in trainer.storage.history("total_loss").values()]
    assert len(total_loss) == 1 and torch.isfinite(torch.tensor(total_loss[0]))
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        assert torch.isfinite(param).all(), name
    changed = {name for name, param in model.named_parameters() if not param.equal(before[name])}
    sampling_offsets = "transformer.encoder.layers.0.attentions.0.sampling_offsets.weight"
    assert {"class_embed.0.weight", sampling_offsets} <= changed
