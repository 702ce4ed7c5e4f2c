"""The COCO training recipe of DETR on ResNet-50 (Carion et al., 2020), as configured in detrex
(``projects/detr/configs/detr_r50_300ep.py``), for DETR's box and panoptic configs.

- ``dataloader``: COCO 2017 with DETR's multi-scale + crop augmentation
  (``common/data/coco_detr.py``), 64 images per batch, 16 workers, images without objects kept.
- ``optimizer``: AdamW, lr 1e-4, weight decay 1e-4 (none on norms), the backbone at a tenth of
  the learning rate.
- ``lr_multiplier``: 300 epochs with the drop at epoch 200 (``common/coco_schedule.py``).
- ``train``: the ImageNet R-50 weights of torchvision, 300 epochs of 1848 iterations,
  gradient clipping at L2 norm 0.1, evaluation and a checkpoint every 10 epochs, CUDA.

Not ``common/coco_deformable_recipe.py``: the optimizer and the clipping have the same values
(detrex's deformable detectors kept DETR's), but the batch, the epoch, the schedule and the
data (DETR trains on images without objects too) are DETR's own.

A project config takes it whole and sets its output folder; a longer schedule sets both the
multiplier and ``train.max_iter``::

    _recipe = get_config("common/coco_detr_recipe.py")
    dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
    lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_500ep
    train.max_iter = 500 * 1848
    train.output_dir = "./output/my_detr_r50_500ep"
"""

from detr_ext.config import get_config

# One epoch is 1848 iterations at batch 64 (COCO train2017, 118k images), as in detrex.
ITERS_PER_EPOCH = 1848

dataloader = get_config("common/data/coco_detr.py").dataloader
dataloader.train.total_batch_size = 64
dataloader.train.num_workers = 16
# Images without objects are trained on too (negatives), as facebookresearch/detr does (its
# loader keeps every image; its detectron2 config sets FILTER_EMPTY_ANNOTATIONS: False).
dataloader.train.dataset.filter_empty = False

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1

# Relative to train.max_iter: 1.0, then 0.1 for the last third.
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_300ep

train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.max_iter = 300 * ITERS_PER_EPOCH
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.checkpointer.period = 10 * ITERS_PER_EPOCH
train.eval_period = 10 * ITERS_PER_EPOCH
train.device = "cuda"

__all__ = ["dataloader", "lr_multiplier", "optimizer", "train"]
