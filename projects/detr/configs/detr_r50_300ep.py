"""DETR-R50 on COCO: 300 epochs at a total batch size of 64, learning rate drop at epoch 200.

The recipe of Carion et al. (2020) as configured in detrex (``configs/common/coco_detr_recipe.py``):
AdamW with lr 1e-4 (1e-5 for the backbone) and weight decay 1e-4, gradient clipping at norm
0.1, an ImageNet-pretrained ResNet-50 (torchvision weights), DETR's multi-scale + random-crop
augmentation, images without objects kept, 1848 iterations per epoch.
"""

from detr_ext.config import get_config

# Re-exported: a LazyConfig file's config is its top-level names.
from .models.detr_r50 import model  # noqa: F401

_recipe = get_config("common/coco_detr_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = _recipe.lr_multiplier
train.output_dir = "./output/detr_r50_300ep"
