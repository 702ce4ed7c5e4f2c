"""A minimal "project" for the train_net end-to-end test: a linear regressor that follows
detectron2's model contract (list of dicts in; a loss dict in training, per-input outputs in
inference), an in-memory dataset registered with DatasetCatalog, and an evaluator."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from torch import nn

IN_FEATURES = 4
TRUE_WEIGHT = [0.5, -1.0, 2.0, 0.25]


def _make_dicts(num_items: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_items, IN_FEATURES, generator=generator)
    targets = inputs @ torch.tensor(TRUE_WEIGHT)
    return [
        {"image_id": index, "x": x.tolist(), "y": float(y)}
        for index, (x, y) in enumerate(zip(inputs, targets, strict=True))
    ]


for _name, _size, _seed in (("tiny_train", 16, 0), ("tiny_test", 6, 1), ("tiny_one", 1, 2)):
    if _name not in DatasetCatalog.list():
        DatasetCatalog.register(_name, lambda size=_size, seed=_seed: _make_dicts(size, seed))


class TinyMapper:
    """Dataset dict -> ``{"x": [IN_FEATURES] float tensor, "y": [] float tensor}``; with
    ``jitter``, ``x`` gets numpy noise of that scale, drawn as detectron2's augmentations draw
    (numpy's global generator)."""

    def __init__(self, jitter: float = 0.0) -> None:
        self.jitter = jitter

    def __call__(self, dataset_dict: dict) -> dict:
        x = torch.tensor(dataset_dict["x"], dtype=torch.float32)
        if self.jitter:
            x = x + torch.from_numpy(np.random.normal(0.0, self.jitter, x.shape)).float()
        return {
            "image_id": dataset_dict["image_id"],
            "x": x,
            "y": torch.tensor(dataset_dict["y"], dtype=torch.float32),
        }


class TinyModel(nn.Module):
    """Linear regressor: ``{"loss_mse"}`` in training, ``[{"pred": []}]`` in inference."""

    def __init__(self, in_features: int = IN_FEATURES, norm: bool = True, noise: float = 0.0):
        super().__init__()
        # Training noise on the inputs from torch's generator, as DINO's denoising queries.
        self.noise = noise
        self.linear = nn.Linear(in_features, 1)
        # Gives the model buffers for EMA to track; off where batches of different sizes
        # must give the same gradient (its statistics depend on how the batch is split).
        self.norm = nn.BatchNorm1d(in_features) if norm else nn.Identity()

    def forward(self, batched_inputs: list[dict]):
        device = self.linear.weight.device
        inputs = torch.stack([item["x"] for item in batched_inputs]).to(device)
        if self.training and self.noise:
            inputs = inputs + self.noise * torch.randn_like(inputs)
        preds = self.linear(self.norm(inputs)).squeeze(-1)
        if not self.training:
            return [{"pred": pred} for pred in preds]
        targets = torch.stack([item["y"] for item in batched_inputs]).to(device)
        return {"loss_mse": nn.functional.mse_loss(preds, targets)}


class TinyEvaluator(DatasetEvaluator):
    """Mean squared error of the predictions over the test set; with several processes the
    main process gathers every process's images (as COCOEvaluator), the others return {}."""

    def reset(self) -> None:
        self._squared_errors: list[float] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for item, output in zip(inputs, outputs, strict=True):
            self._squared_errors.append(float((output["pred"].cpu() - item["y"]) ** 2))

    def evaluate(self) -> dict:
        gathered = comm.gather(self._squared_errors, dst=0)
        if not comm.is_main_process():
            return {}
        errors = [error for errors in gathered for error in errors]
        return {"tiny": {"mse": sum(errors) / len(errors), "count": float(len(errors))}}
