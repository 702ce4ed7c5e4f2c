"""Checks that a config's model fits its data, run before training / evaluation starts.

A model with fewer classes than the dataset has categories cannot learn the extra ones:
DETR would silently train the last category as "no object", while the sigmoid-based
detectors (Deformable DETR, DINO) fail deep inside their criterion with a bare IndexError.
:func:`check_num_classes` turns both into one early error that names the config key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["NumClassesError", "check_num_classes", "config_dataset_names", "dataset_num_classes"]

logger = logging.getLogger(__name__)


class NumClassesError(ValueError):
    """``model.num_classes`` is smaller than a dataset's number of categories."""


# The loaders whose datasets a run uses, as config keys.
SPLIT_KEYS = {"train": "dataloader.train.dataset.names", "test": "dataloader.test.dataset.names"}


def config_dataset_names(cfg: DictConfig, splits: Iterable[str] = ("train", "test")) -> list[str]:
    """The dataset names of ``cfg.dataloader.<split>.dataset.names`` for each split, in order
    and without repeats. ``names`` may be a string or a list; a split whose loader does not
    have this key contributes nothing."""
    names: list[str] = []
    for split in splits:
        if split not in SPLIT_KEYS:
            raise ValueError(
                f"config_dataset_names: expected splits in {list(SPLIT_KEYS)}, got {split!r}"
            )
        value = OmegaConf.select(cfg, SPLIT_KEYS[split], default=None)
        if value is None:
            continue
        for name in [value] if isinstance(value, str) else list(value):
            if name not in names:
                names.append(str(name))
    return names


def dataset_num_classes(name: str) -> int | None:
    """``len(MetadataCatalog.get(name).thing_classes)``, or None when unknown; for a panoptic
    dataset in detectron2's unified numbering (``stuff_dataset_id_to_contiguous_id`` covers
    things and stuff, as ``register_coco_panoptic`` registers them), the number of those ids.

    Datasets registered with ``register_coco_instances`` only get ``thing_classes`` when they
    are loaded; such a dataset is loaded here (once per process: detectron2 keeps the
    metadata). Returns None for a dataset that is not registered (its loader reports that).
    """
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes", None) is None and name in DatasetCatalog.list():
        logger.info("Loading dataset %r to learn its number of categories.", name)
        DatasetCatalog.get(name)
        metadata = MetadataCatalog.get(name)
    unified = metadata.get("stuff_dataset_id_to_contiguous_id", None)
    things = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if unified and things and set(things.items()) <= set(unified.items()):
        return len(unified)
    classes = metadata.get("thing_classes", None)
    return None if classes is None else len(classes)


def _model_num_classes(model: nn.Module) -> int | None:
    # DDP and similar wrappers keep the detector in `.module`.
    while not hasattr(model, "num_classes") and isinstance(
        getattr(model, "module", None), nn.Module
    ):
        model = model.module
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def check_num_classes(
    cfg: DictConfig,
    model: nn.Module | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> None:
    """Raise if the model has fewer classes than a dataset of ``cfg`` has categories.

    Args:
        cfg: a LazyConfig with ``dataloader.<split>.dataset.names`` (a name or a list).
        model: the built model; its ``num_classes`` attribute is compared (every detr_ext
            meta-architecture has one). Without a model, or for a model without
            ``num_classes``, ``cfg.model.num_classes`` is used if the config has it; with
            neither, nothing is checked.
        splits: which loaders' datasets to check, ``"train"`` and / or ``"test"``.

    A model with more classes than a dataset is allowed (e.g. COCO's 91-slot convention, or
    a model meant for several datasets) and only logged.

    Raises:
        NumClassesError: (a ``ValueError``) naming ``model.num_classes``, its value, the
            dataset and its category count.
    """
    num_classes = _model_num_classes(model) if model is not None else None
    if num_classes is None:
        value = OmegaConf.select(cfg, "model.num_classes", default=None)
        num_classes = value if isinstance(value, int) else None
    if num_classes is None:
        logger.debug("check_num_classes: the model has no num_classes; nothing to check.")
        return
    for name in config_dataset_names(cfg, splits):
        categories = dataset_num_classes(name)
        if categories is None:
            continue
        if num_classes < categories:
            raise NumClassesError(
                f"model.num_classes={num_classes} is smaller than the {categories} categories "
                f"of dataset {name!r}; expected model.num_classes >= {categories} (set "
                f"model.num_classes={categories} in the config or on the command line)"
            )
        if num_classes > categories:
            logger.info(
                "model.num_classes=%d is larger than the %d categories of dataset %r; the "
                "extra classes are never trained.",
                num_classes,
                categories,
                name,
            )
