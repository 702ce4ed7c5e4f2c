"""Stage 2 of DETR's panoptic recipe: the mask head trained for 25 epochs on COCO panoptic with
the stage-1 detector (``detr_r50_panoptic_box_300ep.py``) frozen.

As facebookresearch/detr (``--masks --frozen_weights box_model.pth --epochs 25 --lr_drop 15``):
``freeze_detector=True`` leaves only ``bbox_attention`` and ``mask_head`` trainable, AdamW at
1e-4, learning rate x0.1 after 15 epochs. ``train.init_checkpoint`` is the stage-1 model;
facebookresearch's released panoptic weights load instead through
``tools/convert_checkpoint.py --from detr.facebookresearch_panoptic``. Evaluation: panoptic
quality (``COCOPanopticEvaluator``, hotcoco) plus box and mask AP of the things.
"""

from detr_ext.config import default_X_scheduler, get_config

from .models.detr_segm_r50 import model

# One epoch = 7500 iterations at batch 16 (configs/common/coco_schedule.py's convention).
ITERS_PER_EPOCH = 7500
EPOCHS, DECAY_EPOCHS = 25, 15

model.freeze_detector = True

dataloader = get_config("common/data/coco_panoptic_detr.py").dataloader
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 8

# The optimizer (AdamW, lr 1e-4, weight decay 1e-4) and the gradient clipping (norm 0.1) of
# DETR's recipe, as the stage-1 detector; no backbone factor: only the mask head trains.
_recipe = get_config("common/coco_detr_recipe.py")
optimizer, train = _recipe.optimizer, _recipe.train
optimizer.params.pop("lr_factor_func")

lr_multiplier = default_X_scheduler(EPOCHS, DECAY_EPOCHS, base_steps=ITERS_PER_EPOCH)

train.init_checkpoint = "./output/detr_r50_panoptic_box_300ep/model_final.pth"
train.output_dir = "./output/detr_segm_r50_panoptic_25ep"
train.max_iter = EPOCHS * ITERS_PER_EPOCH
train.checkpointer.period = ITERS_PER_EPOCH
train.eval_period = 5 * ITERS_PER_EPOCH
