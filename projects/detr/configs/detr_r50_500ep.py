"""DETR-R50 on COCO: 500 epochs, learning rate drop at epoch 400 (the paper's long schedule).

Everything else as ``detr_r50_300ep.py``.
"""

# Re-exported: a LazyConfig file's config is its top-level names.
from .detr_r50_300ep import ITERS_PER_EPOCH, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

EPOCHS, DECAY_EPOCHS = 500, 400

lr_multiplier.scheduler.milestones = [DECAY_EPOCHS * ITERS_PER_EPOCH, EPOCHS * ITERS_PER_EPOCH]
train.max_iter = EPOCHS * ITERS_PER_EPOCH
train.output_dir = "./output/detr_r50_500ep"
