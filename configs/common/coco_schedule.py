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
``from configs.common.coco_schedule import default_X_scheduler`` (``tools/train_net.py`` puts
the repository root on ``sys.path``).
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def default_X_scheduler(epochs, decay_epochs, warmup_epochs=0, base_steps=7500):
    """Multiplier 1.0 until ``decay_epochs``, then 0.1 until ``epochs``.

    Args:
        epochs: length of the schedule, in epochs of ``base_steps`` iterations.
        decay_epochs: epoch at which the learning rate drops to 0.1x.
        warmup_epochs: linear warmup from 0.001x over this many epochs (may be fractional).
        base_steps: iterations per epoch (7500 = 120k images at batch 16).
    """
    if not 0 < decay_epochs < epochs:
        raise ValueError(
            f"default_X_scheduler: expected 0 < decay_epochs < epochs, "
            f"got decay_epochs={decay_epochs}, epochs={epochs}"
        )
    total_steps = epochs * base_steps
    decay_steps = decay_epochs * base_steps
    warmup_steps = warmup_epochs * base_steps
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1],
            milestones=[decay_steps, total_steps],
        ),
        warmup_length=warmup_steps / total_steps,
        warmup_method="linear",
        warmup_factor=0.001,
    )


# detrex's name for the same schedule.
default_coco_scheduler = default_X_scheduler

# Deformable-DETR / DINO family (batch 16).
lr_multiplier_12ep = default_X_scheduler(12, 11)
lr_multiplier_24ep = default_X_scheduler(24, 20)
lr_multiplier_36ep = default_X_scheduler(36, 30)
lr_multiplier_50ep = default_X_scheduler(50, 40)

# DETR: the paper trains 300 epochs with a drop at 200, or 500 with a drop at 400, at a total
# batch size of 64; use base_steps=1875 with batch 64 to keep the same number of images.
lr_multiplier_300ep = default_X_scheduler(300, 200)
lr_multiplier_500ep = default_X_scheduler(500, 400)
