"""Images for self-supervised pretraining: a folder of image files or the images of registered
detectron2 datasets (labels ignored), each read as RGB and turned into a multi-crop list, and a
collate that batches the crops position by position."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.image_io import read_image_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "PretrainImageDataset",
    "build_pretrain_loader",
    "collate_crops",
    "dataset_image_files",
    "folder_image_files",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def folder_image_files(root: str | os.PathLike) -> list[str]:
    """Paths of the image files under ``root`` (recursive, extensions in
    :data:`IMAGE_EXTENSIONS`, any case), sorted.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: ``root`` holds no image file.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--images: expected a directory of images, got {root!r}")
    files = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not files:
        raise ValueError(
            f"--images: no image file ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}"
        )
    return sorted(files)


def dataset_image_files(names: str | Iterable[str]) -> list[str]:
    """The distinct ``file_name`` of the registered detectron2 datasets ``names``, in order
    (annotations are ignored).

    Raises:
        KeyError: a name is not registered (detectron2's message lists the registered ones).
        ValueError: the datasets hold no image.
    """
    from detectron2.data import DatasetCatalog

    names = [names] if isinstance(names, str) else list(names)
    files: dict[str, None] = {}
    for name in names:
        for record in DatasetCatalog.get(name):
            if "file_name" not in record:
                raise ValueError(
                    f"dataset {name!r}: expected records with 'file_name', got {record}"
                )
            files.setdefault(record["file_name"], None)
    if not files:
        raise ValueError(f"datasets {names}: expected at least one image, got none")
    return list(files)


class PretrainImageDataset(Dataset):
    """Image files read as uint8 ``[H, W, 3]`` and passed through ``transform`` (e.g. a
    ``MultiCropAugmentation``, which returns a list of crops ``[3, s, s]``).

    Args:
        file_names: the image files.
        transform: ``fn(image uint8 [H, W, 3]) -> list[Tensor]``.
        image_format: channel order given to ``transform``: ``"RGB"`` or ``"BGR"`` (the
            detector's ``input_format``, so that the backbone learns on what it will see).
    """

    def __init__(
        self,
        file_names: Sequence[str],
        transform: Callable[[object], list[torch.Tensor]],
        image_format: str = "RGB",
    ) -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")
        if len(file_names) == 0:
            raise ValueError("PretrainImageDataset: expected at least one image file, got none")
        self.file_names = list(file_names)
        self.transform = transform
        self.image_format = image_format

    def __len__(self) -> int:
        return len(self.file_names)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        # ImageReadError names the file that cannot be decoded.
        image = read_image_file(self.file_names[index], format=self.image_format)
        return self.transform(image)


def collate_crops(batch: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Stack each crop position over the batch: ``B`` lists of ``V`` crops ``[3, s_v, s_v]``
    -> ``V`` tensors ``[B, 3, s_v, s_v]`` (the 2 global views first, then the local ones)."""
    if len(batch) == 0:
        raise ValueError("collate_crops: expected a non-empty batch, got none")
    num_views = {len(crops) for crops in batch}
    if len(num_views) != 1:
        raise ValueError(
            f"collate_crops: expected the same number of crops per image, got {num_views}"
        )
    return [torch.stack(list(view)) for view in zip(*batch, strict=True)]


def build_pretrain_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """An endless loader of shuffled batches (detectron2's ``TrainingSampler`` stream, from a
    :class:`~detr_ext.data.samplers.ResumableTrainingSampler`, ``loader.sampler``, so that a
    resumed run can continue it), each a list of ``[batch_size, 3, s, s]`` crop tensors
    (:func:`collate_crops`). ``generator`` seeds the worker processes (torch's global generator
    when ``None``); a generator of its own keeps that draw out of the main process's crops."""
    from ..data.samplers import ResumableTrainingSampler

    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableTrainingSampler(len(dataset), shuffle=True, seed=seed),
        num_workers=num_workers,
        collate_fn=collate_crops,
        drop_last=True,
        generator=generator,
    )
