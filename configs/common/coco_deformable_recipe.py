"""The COCO training recipe of the deformable-attention detectors on ResNet-50 (detrex's
Deformable DETR, DINO and Align-DETR configs, and this repository's Grounding DINO).

- ``dataloader``: COCO 2017 with DETR's multi-scale + crop augmentation
  (``common/data/coco_detr.py``), 16 images per batch, 16 workers.
- ``optimizer``: AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 1e-4 (none on norms), the
  backbone at a tenth of the learning rate.
- ``lr_multiplier``: 12 epochs with the drop at epoch 11 (``common/coco_schedule.py``).
- ``train``: the ImageNet R-50 weights of torchvision, 12 epochs of 7500 iterations (90k),
  gradient clipping at L2 norm 0.1, evaluation and a checkpoint every 5000 iterations, CUDA.

A project config takes it whole and sets what is its own (``train.output_dir`` always; the
schedule where it is longer: ``common/coco_deformable_recipe_24ep.py`` is this recipe for 24
epochs)::

    _recipe = get_config("common/coco_deformable_recipe.py")
    dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
    lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
    train.max_iter = 50 * 7500
    train.output_dir = "./output/my_project_r50_50ep"
"""

from detr_ext.config import get_config

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep
train = get_config("common/train.py").train

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.max_iter = 12 * 7500
train.eval_period = 5000
train.log_period = 20
train.checkpointer.period = 5000
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.device = "cuda"

optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1

dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 16

__all__ = ["dataloader", "lr_multiplier", "optimizer", "train"]
