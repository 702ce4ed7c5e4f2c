"""The k-NN probe: object crops of a labelled detection dataset, embedded by the pretrained
backbone and classified by their nearest neighbours (DINO's ``eval_knn``). Labels are used only
here, never by pretraining, so the accuracy measures how much the features learned alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_io import read_image_file

__all__ = [
    "IMAGENET_PIXEL_MEAN",
    "IMAGENET_PIXEL_STD",
    "KNNProbe",
    "knn_accuracy",
    "object_crops",
    "probe_split",
]

# The detectors' normalization (RGB, 0-255 scale), so that the probe sees what they see.
IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)


def object_crops(
    dataset_dicts: Sequence[dict],
    size: int = 64,
    pixel_mean: Sequence[float] = IMAGENET_PIXEL_MEAN,
    pixel_std: Sequence[float] = IMAGENET_PIXEL_STD,
    image_format: str = "RGB",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop every ground-truth box of ``dataset_dicts`` (detectron2 records with ``file_name``
    and ``annotations`` holding ``bbox`` / ``bbox_mode`` / ``category_id``), resized to
    ``size x size`` and normalized with ``(x - pixel_mean) / pixel_std`` (0-255 scale, channels
    in ``image_format`` order, ``"RGB"`` or ``"BGR"``).

    Returns:
        images ``[N, 3, size, size]`` float32 and labels ``[N]`` int64 (the ``category_id``s),
        in dataset order. Boxes smaller than a pixel are skipped.
    """
    from detectron2.structures import BoxMode

    if size < 1:
        raise ValueError(f"object_crops: expected a positive size, got {size}")
    crops: list[torch.Tensor] = []
    labels: list[int] = []
    for record in dataset_dicts:
        annotations = record.get("annotations", [])
        if not annotations:
            continue
        image = read_image_file(
            record["file_name"], format=image_format, image_id=record.get("image_id")
        )
        height, width = image.shape[:2]
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
        for annotation in annotations:
            box = BoxMode.convert(
                list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS
            )
            x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
            x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            crop = pixels[None, :, y0:y1, x0:x1]
            crops.append(
                F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
            )
            labels.append(int(annotation["category_id"]))
    if not crops:
        raise ValueError("object_crops: expected records with at least one box, got none")
    mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (torch.stack(crops) - mean) / std, torch.tensor(labels, dtype=torch.int64)


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted k-NN classification accuracy (DINO's ``eval_knn``).

    Features are L2-normalized; each test sample votes over its ``k`` most cosine-similar
    training samples, each neighbour weighing ``exp(similarity / temperature)`` for its label;
    the prediction is the label with the largest summed weight.

    Args:
        train_feats: ``[N, C]``; train_labels: ``[N]`` integer labels.
        test_feats: ``[M, C]``; test_labels: ``[M]``.
        k: number of neighbours (at most ``N`` are used).

    Returns:
        the fraction of test samples classified correctly, in [0, 1].
    """
    if train_feats.dim() != 2 or test_feats.dim() != 2:
        raise ValueError(
            f"knn_accuracy: expected features [N, C] and [M, C], got {tuple(train_feats.shape)} "
            f"and {tuple(test_feats.shape)}"
        )
    if train_feats.shape[0] != train_labels.shape[0] or test_feats.shape[0] != test_labels.shape[0]:
        raise ValueError(
            "knn_accuracy: expected one label per feature row, got "
            f"{train_feats.shape[0]} vs {train_labels.shape[0]} (train) and "
            f"{test_feats.shape[0]} vs {test_labels.shape[0]} (test)"
        )
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError("knn_accuracy: expected non-empty train and test sets")
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    train_labels = train_labels.long()
    num_classes = int(torch.cat([train_labels, test_labels.long()]).max()) + 1
    similarity = test @ train.T  # [M, N]
    top_similarity, top_index = similarity.topk(min(k, train.shape[0]), dim=1)  # [M, k]
    weights = (top_similarity / temperature).exp()
    votes = torch.zeros(test.shape[0], num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, train_labels[top_index], weights)
    predictions = votes.argmax(dim=1)
    return float((predictions == test_labels.long()).float().mean())


def probe_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic probe-train / probe-test halves: within each label, samples alternate
    (1st, 3rd, ... to train; 2nd, 4th, ... to test), so both halves hold every label.

    Returns:
        the sorted indices of the train half and of the test half.
    """
    train, test = [], []
    for label in labels.unique().tolist():
        indices = (labels == label).nonzero().flatten()
        train.append(indices[0::2])
        test.append(indices[1::2])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class KNNProbe:
    """k-NN accuracy of an embedder's pooled features on fixed, labelled object crops.

    Args:
        images: ``[N, 3, s, s]`` normalized crops; labels: ``[N]`` (see :func:`object_crops`).
        k, temperature: as in :func:`knn_accuracy`.
        batch_size: crops embedded per forward pass.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 64,
    ) -> None:
        self.images, self.labels = images, labels
        self.train_index, self.test_index = probe_split(labels)
        if len(self.train_index) == 0 or len(self.test_index) == 0:
            raise ValueError(
                f"KNNProbe: expected at least 2 crops of some label to split, got "
                f"{len(labels)} crops"
            )
        self.k, self.temperature, self.batch_size = k, temperature, batch_size

    @classmethod
    def from_dataset(
        cls,
        name: str,
        size: int = 64,
        pixel_mean: Sequence[float] = IMAGENET_PIXEL_MEAN,
        pixel_std: Sequence[float] = IMAGENET_PIXEL_STD,
        image_format: str = "RGB",
        **kwargs,
    ) -> KNNProbe:
        """The probe on the object crops of the registered detectron2 dataset ``name``
        (normalization as in :func:`object_crops`; ``kwargs`` as in the constructor)."""
        from detectron2.data import DatasetCatalog

        crops = object_crops(DatasetCatalog.get(name), size, pixel_mean, pixel_std, image_format)
        return cls(*crops, **kwargs)

    @torch.no_grad()
    def embed(self, embedder: nn.Module) -> torch.Tensor:
        """``embedder.features`` of all crops ``[N, C]``, in eval mode (restored after)."""
        was_training = embedder.training
        embedder.eval()
        try:
            device = next(embedder.parameters()).device
            return torch.cat(
                [
                    embedder.features(batch.to(device)).float().cpu()
                    for batch in self.images.split(self.batch_size)
                ]
            )
        finally:
            embedder.train(was_training)

    def __call__(self, embedder: nn.Module) -> float:
        """k-NN accuracy of ``embedder`` (with ``features(images [B,3,s,s]) -> [B, C]``)."""
        features = self.embed(embedder)
        return knn_accuracy(
            features[self.train_index],
            self.labels[self.train_index],
            features[self.test_index],
            self.labels[self.test_index],
            k=self.k,
            temperature=self.temperature,
        )
