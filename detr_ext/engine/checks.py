"""Checks that a config's model fits its data, run before training / evaluation starts.

A model with fewer classes than the dataset has categories cannot learn the extra ones:
DETR would silently train the last category as "no object", while the sigmoid-based
detectors (Deformable DETR, DINO) fail deep inside their criterion with a bare IndexError.
:func:`check_num_classes` turns both into one early error that names the config key.

A model's class k is the k-th category of its training set, and evaluation maps it back with
the test set's numbering. When the two jsons list different categories (a category without
objects left out of the validation json, another order of ids), every prediction past the
difference is scored as another category, and nothing fails.
:func:`check_category_consistency` refuses that before training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = [
    "CategoryMismatchError",
    "NumClassesError",
    "check_category_consistency",
    "check_num_classes",
    "config_dataset_names",
    "dataset_num_classes",
]

logger = logging.getLogger(__name__)


class NumClassesError(ValueError):
    """``model.num_classes`` is smaller than a dataset's number of categories."""


class CategoryMismatchError(ValueError):
    """A closed-set model's training and test datasets number their categories differently."""


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


def _category_numbering(name: str) -> dict[int, tuple[int, str]] | None:
    """Dataset category id -> (contiguous class index, name) of a loaded dataset, or None when
    its metadata has no such mapping (a dataset registered without category ids)."""
    metadata = MetadataCatalog.get(name)
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    classes = metadata.get("thing_classes", None)
    if mapping is None or classes is None:
        return None
    return {
        int(dataset_id): (int(index), str(classes[index]) if index < len(classes) else "?")
        for dataset_id, index in mapping.items()
    }


def _describe_difference(
    reference: dict[int, tuple[int, str]], other: dict[int, tuple[int, str]]
) -> str:
    only_reference = sorted(set(reference) - set(other))
    only_other = sorted(set(other) - set(reference))
    parts = []
    if only_reference:
        parts.append(f"category ids only in the first: {only_reference[:10]}")
    if only_other:
        parts.append(f"category ids only in the second: {only_other[:10]}")
    moved = [
        f"id {i} ({reference[i][1]!r}) is class {reference[i][0]} vs {other[i][0]}"
        for i in sorted(set(reference) & set(other))
        if reference[i][0] != other[i][0]
    ]
    if moved:
        parts.append(
            "; ".join(moved[:5]) + (f" (+{len(moved) - 5} more)" if len(moved) > 5 else "")
        )
    return "; ".join(parts)


def check_category_consistency(cfg: DictConfig, model: nn.Module | None = None) -> None:
    """Raise if the train and test datasets of ``cfg`` number their categories differently.

    Compares each dataset's category id -> contiguous class index mapping
    (``thing_dataset_id_to_contiguous_id``) with the first training dataset's. Run after the
    train loader is built (the datasets are then loaded). Models without ``num_classes`` are
    not checked; ``do_train`` does not call it for text-prompted models such as Grounding DINO,
    which are evaluated with the test set's own names (``detr_ext.engine.prompted``). A
    category with the same id and index but another name only gets a warning (evaluation
    matches ids; the demo shows the test set's names).

    Raises:
        CategoryMismatchError: (a ``ValueError``) naming both datasets and the categories
            that differ.
    """
    num_classes = _model_num_classes(model) if model is not None else None
    if num_classes is None and OmegaConf.select(cfg, "model.num_classes", default=None) is None:
        return
    names = config_dataset_names(cfg)
    train_names = config_dataset_names(cfg, ["train"])
    if not train_names:
        return
    reference_name = train_names[0]
    reference = _category_numbering(reference_name)
    if reference is None:
        return
    for name in names:
        if name == reference_name:
            continue
        numbering = _category_numbering(name)
        if numbering is None:
            continue
        if {i: index for i, (index, _) in numbering.items()} != {
            i: index for i, (index, _) in reference.items()
        }:
            raise CategoryMismatchError(
                f"datasets {reference_name!r} and {name!r} number their categories "
                f"differently ({_describe_difference(reference, numbering)}), so the model's "
                f"classes, learned with the numbering of {reference_name!r}, would be scored "
                f"and named as other categories of {name!r}; expected the same 'categories' "
                "list (the same ids, categories without objects included) in both jsons"
            )
        renamed = [
            f"id {i}: {reference[i][1]!r} vs {numbering[i][1]!r}"
            for i in sorted(reference)
            if reference[i][1] != numbering[i][1]
        ]
        if renamed:
            logger.warning(
                "Datasets %r and %r give categories other names (%s); evaluation matches ids, "
                "the demo shows the names of %r.",
                reference_name,
                name,
                "; ".join(renamed[:5]),
                name,
            )
