"""Shared recipe: the small shapes DETR of ``common/detr_shapes.py`` with DETR's segmentation
head (``DETRsegm``), trained jointly from scratch on a CPU for boxes and instance masks.

``common/detr_shapes.py`` (ResNet-18 with GroupNorm, a 128-wide transformer with 2 + 2
layers, 30 queries, 3 classes, images of 224-320 px, 300 iterations of batch 4) plus:

- the backbone also returns res2-res4 (64 / 128 / 256 channels) for the mask head;
- ``bbox_attention``: each query's 8-head attention map over the encoder memory;
- ``mask_head``: ``MaskHeadSmallConv`` with 128 + 8 input channels, inner widths from
  ``context_dim=128`` (64 / 32 / 16 / 8) and adapters for res4 / res3 / res2, giving mask
  logits at stride 4;
- :class:`~detr_ext.modeling.SegmCriterion`: DETR's losses plus the sigmoid focal and dice
  mask losses (weights 1 and 1) on ``112 * 112 / 4`` points per mask (the images are ~16x
  smaller than COCO's);
- data ``common/data/shapes_segm.py`` (masks from the exact polygons; box and mask AP) with
  the augmentation of ``common/detr_shapes.py``.

``model._target_`` is the unregistered :class:`~detr_ext.modeling.DETRSegmDetectorBase`; a
project's shapes config sets its registered class (``projects/detr/configs/detr_segm_shapes.py``).
"""

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.layers import MaskHeadSmallConv, MHAttentionMap
from detr_ext.modeling import DETRSegmDetectorBase, SegmCriterion

_shapes = get_config("common/detr_shapes.py")
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

_EMBED_DIM = model.embed_dim
_MASK_HEADS = 8

model._target_ = DETRSegmDetectorBase
model.backbone.out_features = ["res2", "res3", "res4", "res5"]
model.mask_in_features = ["res4", "res3", "res2"]
model.bbox_attention = L(MHAttentionMap)(
    query_dim="${..embed_dim}", hidden_dim="${..embed_dim}", num_heads=_MASK_HEADS, dropout=0.0
)
model.mask_head = L(MaskHeadSmallConv)(
    dim=_EMBED_DIM + _MASK_HEADS, fpn_dims=[256, 128, 64], context_dim=128
)
model.criterion._target_ = SegmCriterion
model.criterion.losses = ["class", "boxes", "masks"]
model.criterion.weight_dict.update({"loss_mask": 1.0, "loss_dice": 1.0})
model.criterion.num_points = 112 * 112 // 4


def with_detr_shapes_loading(dataloader):
    """``dataloader`` (a shapes data config: ``common/data/shapes_*.py``) with the augmentation,
    workers and batch size of ``common/detr_shapes.py``; ``common/detr_panoptic_shapes.py``
    imports it for the panoptic data."""
    for split in ("train", "test"):
        mapper, recipe = dataloader[split].mapper, _shapes.dataloader[split].mapper
        mapper.augmentation = recipe.augmentation
        mapper.augmentation_with_crop = recipe.augmentation_with_crop
        dataloader[split].num_workers = _shapes.dataloader[split].num_workers
    dataloader.train.total_batch_size = _shapes.dataloader.train.total_batch_size
    return dataloader


dataloader = with_detr_shapes_loading(get_config("common/data/shapes_segm.py").dataloader)
