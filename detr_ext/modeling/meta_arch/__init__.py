"""Meta-architecture bases: detectron2's model I/O contract for DETR-family detectors, and the
shared networks of the detectors (DETR's, DETR's with its segmentation head, Deformable
DETR's, DINO's), and the panoptic merging of per-query masks.

None of these classes is registered with detectron2's ``META_ARCH_REGISTRY``: a project
registers its own subclass, so that tools list every detector under the project that owns it.
"""

from .base import DetectorBase
from .deformable_base import DeformableDetectorBase
from .deformable_detr_base import DeformableDETRDetectorBase
from .detr_base import DETRDetectorBase, DETRNetworkOutputs
from .detr_segm_base import DETRSegmDetectorBase
from .dino_base import DINODetectorBase
from .output_checks import NonFiniteOutputError
from .panoptic_inference import combine_panoptic

__all__ = [
    "DETRDetectorBase",
    "DETRNetworkOutputs",
    "DETRSegmDetectorBase",
    "DINODetectorBase",
    "DeformableDETRDetectorBase",
    "DeformableDetectorBase",
    "DetectorBase",
    "NonFiniteOutputError",
    "combine_panoptic",
]
