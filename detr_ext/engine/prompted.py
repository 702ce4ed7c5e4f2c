"""Text-prompted detectors (Grounding DINO) and the category names of their datasets.

Such a model detects the phrases of its default prompt, ``"name_0 . name_1 ."`` of
``model.category_names``, on every image without a ``"prompt"`` of its own, and its class k is
phrase k. On a dataset with categories (``thing_classes``), class k is scored and named as the
dataset's k-th category, so the two lists must be the same:

- in training, the names must be the training set's (:func:`check_training_category_names`);
  a training set made of prompted records (no ``thing_classes``, e.g. ``shapes_grounding``)
  labels each box with a phrase of its own prompt and is not compared;
- in evaluation, the model detects the test set's own names (:func:`evaluation_category_names`):
  a text-prompted model may be evaluated on other categories than it was trained on, which
  is what it is for.

A model is text-prompted when it has ``category_names`` and ``set_category_names``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from detectron2.data import MetadataCatalog
from omegaconf import DictConfig
from torch import nn

from ..modeling.language.prompts import phrase_key
from .checks import CategoryMismatchError, config_dataset_names
from .ema import unwrap_model

__all__ = [
    "category_names_for_evaluation",
    "check_training_category_names",
    "evaluation_category_names",
    "text_prompted_model",
]

logger = logging.getLogger(__name__)


def text_prompted_model(model: nn.Module | None) -> nn.Module | None:
    """The text-prompted detector inside ``model`` (unwrapping DDP), or None."""
    model = None if model is None else unwrap_model(model)
    if not (hasattr(model, "set_category_names") and hasattr(model, "category_names")):
        return None
    return model


def _folded(names: Sequence[str]) -> list[str]:
    # Case and spacing do not change which category a name is.
    return [phrase_key(str(name)) for name in names]


def _thing_classes(name: str) -> list[str] | None:
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    return None if not classes else [str(c) for c in classes]


def _differences(model_names: Sequence[str], dataset_names: Sequence[str]) -> str:
    pairs = [
        f"class {index}: {a!r} vs {b!r}"
        for index, (a, b) in enumerate(zip(model_names, dataset_names, strict=False))
        if phrase_key(str(a)) != phrase_key(str(b))
    ]
    if len(model_names) != len(dataset_names):
        pairs.append(f"{len(model_names)} names vs {len(dataset_names)} categories")
    return "; ".join(pairs[:5]) + (f" (+{len(pairs) - 5} more)" if len(pairs) > 5 else "")


def check_training_category_names(cfg: DictConfig, model: nn.Module | None) -> None:
    """Raise if a text-prompted model's ``category_names`` are not its training set's
    categories, in order (compared without case and spacing). Run after the train loader is
    built (the datasets are then loaded); other models are not checked.

    Raises:
        CategoryMismatchError: naming ``model.category_names``, the dataset and the classes
            that differ.
    """
    prompted = text_prompted_model(model)
    if prompted is None:
        return
    for name in config_dataset_names(cfg, ["train"]):
        classes = _thing_classes(name)
        if classes is None or _folded(classes) == _folded(prompted.category_names):
            continue
        raise CategoryMismatchError(
            f"model.category_names {list(prompted.category_names)[:10]} are not the categories "
            f"of the training set {name!r} ({_differences(prompted.category_names, classes)}); "
            "images without a prompt are trained with the prompt of model.category_names and "
            "box k labelled with its dataset's k-th category, so the model would learn "
            "to call objects by other names. Expected model.category_names = the dataset's "
            f"thing_classes, e.g. model.category_names = "
            f"L(dataset_category_names)(dataset_name={name!r})"
        )


def category_names_for_evaluation(cfg: DictConfig) -> list[str] | None:
    """The categories (``thing_classes``) of ``cfg.dataloader.test``'s datasets, which a
    text-prompted model detects there; None when they have none (prompted grounding data).

    Raises:
        CategoryMismatchError: the test loader mixes datasets with different categories (one
            prompt cannot give each its own class numbering).
    """
    names = config_dataset_names(cfg, ["test"])
    classes = {tuple(c) for c in map(_thing_classes, names) if c is not None}
    if len(classes) > 1:
        raise CategoryMismatchError(
            f"the test datasets {names} have different categories; a text-prompted model "
            "evaluates each with its own names, so expected one test dataset (or datasets with "
            "the same categories) in dataloader.test.dataset.names"
        )
    return list(classes.pop()) if classes else None


@contextlib.contextmanager
def evaluation_category_names(cfg: DictConfig, model: nn.Module) -> Iterator[None]:
    """While evaluating ``cfg.dataloader.test``: a text-prompted model detects the test set's
    own categories (:func:`category_names_for_evaluation`), whatever it was trained with, so
    that class k is the test set's k-th category; the names are put back afterwards. Nothing
    changes for other models, for test sets without categories, or when the names are already
    the test set's."""
    prompted = text_prompted_model(model)
    test_names = None if prompted is None else category_names_for_evaluation(cfg)
    trained_names = None if prompted is None else list(prompted.category_names)
    if test_names is None or test_names == trained_names:
        yield
        return
    logger.info(
        "Evaluating %s with the category names of the test set as its prompt (%d names; it was "
        "built with %d: %s).",
        type(prompted).__name__,
        len(test_names),
        len(trained_names),
        _differences(trained_names, test_names) or "other spellings",
    )
    prompted.set_category_names(test_names)
    try:
        yield
    finally:
        prompted.set_category_names(trained_names)
