"""The input a backbone's pretrained weights expect, against the detector's normalization.

A detector normalizes images with its own ``pixel_mean`` / ``pixel_std`` in its
``input_format`` channel order; weights trained with other statistics or on RGB images still
run, just on inputs unlike the ones they learned from (a CLIP- or Inception-normalized timm
model under ImageNet statistics), so this is said in the log when the detector is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

__all__ = ["warn_on_backbone_normalization"]

logger = logging.getLogger(__name__)


def warn_on_backbone_normalization(
    name: str,
    backbone: nn.Module,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    input_format: str,
) -> None:
    """Log a WARNING when the backbone's pretrained weights expect other input than the config
    gives: other normalization statistics (relative difference above 1e-3) or BGR channels.

    A backbone (or a module inside it, e.g. ``TimmBackbone``) declares what its weights expect
    with an ``expected_pixel_statistics`` attribute: ``(mean, std)`` in RGB order on the 0-255
    scale, or ``None`` when it has no pretrained weights."""
    modules = backbone.modules() if isinstance(backbone, nn.Module) else ()
    expected = next(
        (s for m in modules if (s := getattr(m, "expected_pixel_statistics", None)) is not None),
        None,
    )
    if expected is None:
        return
    mean, std = (list(values) for values in expected)
    if input_format == "BGR":  # compare channel by channel in the order the images come in
        mean, std = mean[::-1], std[::-1]
    problems = []
    if input_format != "RGB":
        problems.append(
            f"the backbone's pretrained weights expect RGB images but model.input_format is "
            f"{input_format!r} (set model.input_format='RGB' and the dataloader's "
            "mapper.img_format='RGB')"
        )

    def differ(config: Sequence[float], wanted: list[float]) -> bool:
        return len(config) != len(wanted) or any(
            abs(c - w) > 1e-3 * max(abs(c), abs(w)) for c, w in zip(config, wanted)
        )

    if differ(pixel_mean, mean) or differ(pixel_std, std):
        problems.append(
            f"model.pixel_mean={[round(float(v), 3) for v in pixel_mean]} and "
            f"model.pixel_std={[round(float(v), 3) for v in pixel_std]} differ from the "
            f"statistics the backbone's pretrained weights were trained with: "
            f"pixel_mean={[round(v, 3) for v in mean]}, pixel_std={[round(v, 3) for v in std]} "
            f"({input_format} order, 0-255 scale); set model.pixel_mean / model.pixel_std to "
            "these unless the difference is intended"
        )
    if problems:
        logger.warning("%s: %s", name, "; ".join(problems))
