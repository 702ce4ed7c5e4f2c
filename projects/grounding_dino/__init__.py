"""Grounding DINO (Liu et al., 2023): text-prompted detection with GLIP's vision-language
fusion on DINO.

Importing this package registers the ``GroundingDINO`` meta-architecture with detectron2's
``META_ARCH_REGISTRY`` and the ``grounding_dino.idea`` checkpoint converter.
"""

from . import checkpoint
from .modeling import GroundingDINO

__all__ = ["GroundingDINO", "checkpoint"]
