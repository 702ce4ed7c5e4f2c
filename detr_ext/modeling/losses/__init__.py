"""Loss functions shared by the DETR-family criteria."""

from .focal_loss import sigmoid_focal_loss
from .ia_bce_loss import alignment_quality, ia_bce_loss, local_rank, prime_sample_weights
from .precision import autocast_disabled, full_precision

__all__ = [
    "alignment_quality",
    "autocast_disabled",
    "full_precision",
    "ia_bce_loss",
    "local_rank",
    "prime_sample_weights",
    "sigmoid_focal_loss",
]
