"""The channel order the data gives a model must be the one the model normalizes for.

A mapper reads images in its ``img_format`` (``dataloader.<split>.mapper.img_format``); the
model subtracts ``pixel_mean`` / divides by ``pixel_std`` given in its ``input_format`` order,
and an export records ``model.input_format`` as the order its users must feed. The two keys are
set apart in a config, so changing one (``dataloader.train.mapper.img_format=BGR``) trained
and evaluated the model on swapped channels, normalized in the other order, without a word.
:func:`check_input_format` refuses such a config before anything is built.
"""

from __future__ import annotations

from omegaconf import DictConfig

from .predictor import lazy_argument, mapper_image_options

__all__ = ["InputFormatError", "check_input_format"]


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
