"""Meta-architecture bases: detectron2's model I/O contract for DETR-family detectors, and the
shared networks of the detectors (DETR's, Deformable DETR's, DINO's).

None of these classes is registered with detectron2's ``META_ARCH_REGISTRY``: a project
registers its own subclass, so that tools list every detector under the project that owns it.
"""

from .base import DetectorBase
from .deformable_base import DeformableDetectorBase
from .deformable_detr_base import DeformableDETRDetectorBase
from .detr_base import DETRDetectorBase
from .dino_base import DINODetectorBase

__all__ = [
    "DETRDetectorBase",
    "DINODetectorBase",
    "DeformableDETRDetectorBase",
    "DeformableDetectorBase",
    "DetectorBase",
]
