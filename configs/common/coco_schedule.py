"""Learning-rate multipliers for COCO training: step decay with optional linear warmup.

Convention (detectron2 / detrex): one "epoch" is ``base_steps = 7500`` iterations at a total
batch size of 16, i.e. 120k images, close to COCO train2017's 118k. So 12 epochs are 90000
iterations (detectron2's "1x"). For another batch size B, keep the number of images seen by
using ``base_steps = 7500 * 16 // B`` (e.g. 1875 at batch 64) and setting ``train.max_iter``
to match. The multiplier is a function of the fraction of training done (detectron2's
``LRScheduler`` hook evaluates it at ``iter / train.max_iter``), so a shorter ``max_iter``
shrinks the whole schedule proportionally.

A project config takes a ready schedule with
``get_config("common/coco_schedule.py").lr_multiplier_12ep``, or builds its own with
``from detr_ext.config import default_X_scheduler`` (detrex's name for it,
``default_coco_scheduler``, is there too).
"""

from detr_ext.config import default_coco_scheduler, default_X_scheduler  # noqa: F401

# Deformable-DETR / DINO family (batch 16).
lr_multiplier_12ep = default_X_scheduler(12, 11)
lr_multiplier_24ep = default_X_scheduler(24, 20)
lr_multiplier_36ep = default_X_scheduler(36, 30)
lr_multiplier_50ep = default_X_scheduler(50, 40)

# DETR: the paper trains 300 epochs with a drop at 200, or 500 with a drop at 400, at a total
# batch size of 64; use base_steps=1875 with batch 64 to keep the same number of images.
lr_multiplier_300ep = default_X_scheduler(300, 200)
lr_multiplier_500ep = default_X_scheduler(500, 400)
