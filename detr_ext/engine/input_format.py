"""How a config's mappers read images, and the check that the channel order the data gives a
model is the one the model normalizes for.

:func:`mapper_image_options` gives a mapper's ``(img_format, apply_exif_orientation)`` as the
mapper built from the config gets them (:func:`lazy_argument`), for the ``Predictor``, exports
and the check below.

A mapper reads images in its ``img_format`` (``dataloader.<split>.mapper.img_format``); the
model subtracts ``pixel_mean`` / divides by ``pixel_std`` given in its ``input_format`` order,
and an export records ``model.input_format`` as the order its users must feed. The two keys are
set apart in a config, so changing one (``dataloader.train.mapper.img_format=BGR``) trained
and evaluated the model on swapped channels, normalized in the other order, without a word.
:func:`check_input_format` refuses such a config before anything is built.
"""

from __future__ import annotations

import inspect
from typing import Any

from detectron2.utils.registry import locate
from omegaconf import DictConfig

__all__ = [
    "IMAGE_FORMATS",
    "InputFormatError",
    "check_input_format",
    "config_node",
    "lazy_argument",
    "mapper_image_options",
]

IMAGE_FORMATS = ("RGB", "BGR")


def config_node(cfg: DictConfig, dotted_key: str) -> Any:
    """``cfg.<dotted_key>``, or a ``KeyError`` naming the first missing part."""
    node: Any = cfg
    path = "cfg"
    for part in dotted_key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise KeyError(f"expected the config to define {path}.{part}, it does not")
        node = node[part]
        path = f"{path}.{part}"
    return node


def lazy_argument(mapper: DictConfig, name: str, fallback: Any) -> Any:
    """``mapper.<name>`` as the object built from the LazyCall node ``mapper`` (a mapper, a
    model) gets it: the value set in the config, else the default of its ``_target_``'s
    parameter ``name``, else ``fallback`` (no such parameter, or a target that cannot be
    resolved or inspected)."""
    if name in mapper:
        return mapper[name]
    target = mapper.get("_target_", None)
    try:
        target = locate(target) if isinstance(target, str) else target
        parameter = inspect.signature(target).parameters.get(name)
    except Exception:  # an unresolvable target fails where the loader is built, not here
        return fallback
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def mapper_image_options(
    cfg: DictConfig, default_format: str = "RGB", split: str = "test"
) -> tuple[str, bool]:
    """How the config's test mapper, ``cfg.dataloader.test.mapper`` (``split="train"``: the
    training mapper), reads image files:
    ``(img_format, apply_exif_orientation)``, each as set in the config, else the default of
    the mapper class (:class:`~detr_ext.data.DetrDatasetMapper`: ``"RGB"``, True), else
    ``default_format`` / True. Reading a file with
    ``read_image_file(path, img_format, apply_exif_orientation=...)`` then gives the pixels
    the mapper gives the model in evaluation.

    Raises:
        KeyError: the config has no ``dataloader.<split>.mapper``.
        ValueError: ``img_format`` is not ``"RGB"`` or ``"BGR"``.
    """
    mapper = config_node(cfg, f"dataloader.{split}.mapper")
    img_format = lazy_argument(mapper, "img_format", default_format)
    if img_format not in IMAGE_FORMATS:
        raise ValueError(
            f"expected cfg.dataloader.{split}.mapper.img_format in {IMAGE_FORMATS}, got "
            f"{img_format!r}"
        )
    # bool() as DetrDatasetMapper takes it.
    return str(img_format), bool(lazy_argument(mapper, "apply_exif_orientation", True))


class InputFormatError(ValueError):
    """A mapper's ``img_format`` differs from the model's ``input_format``."""


def check_input_format(cfg: DictConfig, splits: tuple[str, ...] = ("train", "test")) -> None:
    """Raise :class:`InputFormatError` when ``dataloader.<split>.mapper.img_format`` (as the
    mapper gets it: set in the config, else its default) differs from ``model.input_format``
    (likewise), for each split whose loader has a mapper. Models without an ``input_format``
    argument, and configs without ``model`` or mappers, are not checked."""
    if "model" not in cfg:
        return
    model_format = lazy_argument(cfg.model, "input_format", None)
    if model_format is None:
        return
    for split in splits:
        try:
            mapper_format, _ = mapper_image_options(cfg, default_format="RGB", split=split)
        except KeyError:  # no such loader or mapper in this config
            continue
        if mapper_format != model_format:
            raise InputFormatError(
                f"dataloader.{split}.mapper.img_format={mapper_format!r} but "
                f"model.input_format={model_format!r}: the model normalizes with pixel_mean / "
                "pixel_std in model.input_format's channel order and exports record it as the "
                f"order to feed, so the {split} images would have their channels swapped. "
                "Expected the same format in both (change them together, and pixel_mean / "
                "pixel_std to that order)"
            )
