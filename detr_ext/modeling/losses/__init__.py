"""Loss functions shared by the DETR-family criteria."""

from .focal_loss import sigmoid_focal_loss
from .ia_bce_loss import alignment_quality, ia_bce_loss, local_rank, prime_sample_weights
from .mask_losses import (
    dice_loss,
    point_sample,
    sample_points_by_uncertainty,
    sigmoid_focal_mask_loss,
)
from .precision import autocast_disabled, full_precision

__all__ = [
    "alignment_quality",
    "autocast_disabled",
    "dice_loss",
    "full_precision",
    "ia_bce_loss",
    "local_rank",
    "point_sample",
    "prime_sample_weights",
    "sample_points_by_uncertainty",
    "sigmoid_focal_loss",
    "sigmoid_focal_mask_loss",
]
