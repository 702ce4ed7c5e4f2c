"""``common/coco_deformable_recipe.py`` trained twice as long: 24 epochs (180k iterations at
batch 16) with the drop at epoch 20, as detrex's 24-epoch configs of DINO and Align-DETR.

Data, optimizer and every other training option are the 12-epoch recipe's. A project config
takes it whole and sets its output folder::

    _recipe = get_config("common/coco_deformable_recipe_24ep.py")
    dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
    lr_multiplier = _recipe.lr_multiplier
    train.output_dir = "./output/my_project_r50_24ep"
"""

from detr_ext.config import get_config

_recipe = get_config("common/coco_deformable_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_24ep
train.max_iter = 24 * 7500

__all__ = ["dataloader", "lr_multiplier", "optimizer", "train"]
