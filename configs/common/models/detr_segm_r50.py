"""DETR-R50 with DETR's panoptic mask head (``DETRsegm`` of facebookresearch/detr) over COCO
panoptic's 133 classes (80 things, 53 stuff, detectron2's unified contiguous order).

``common/models/detr_r50.py`` plus: the backbone also returns ``res2``-``res4`` for the mask
head's FPN-like upsampling, ``bbox_attention`` (each query's 8-head attention map over the
encoder memory) and ``mask_head`` (``MaskHeadSmallConv``: 256 + 8 input channels, adapters
for the 1024 / 512 / 256 channels of res4 / res3 / res2), and a criterion that adds DETR's
sigmoid focal and dice mask losses (weights 1 and 1) on point-sampled masks. Panoptic
inference is on (things and stuff, DETR's 0.85 score threshold).

``_target_`` is the unregistered :class:`~detr_ext.modeling.DETRSegmDetectorBase`; a
project's model config sets its registered class (``projects/detr``: ``DETRSegm``).
"""

from detectron2.config import LazyCall as L
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from detr_ext.config import get_config
from detr_ext.layers import MaskHeadSmallConv, MHAttentionMap
from detr_ext.modeling import DETRSegmDetectorBase, SegmCriterion

model = get_config("common/models/detr_r50.py").model
model._target_ = DETRSegmDetectorBase
model.backbone.out_features = ["res2", "res3", "res4", "res5"]
model.num_classes = len(COCO_CATEGORIES)
model.bbox_attention = L(MHAttentionMap)(
    query_dim="${..embed_dim}", hidden_dim="${..embed_dim}", num_heads=8, dropout=0.0
)
model.mask_head = L(MaskHeadSmallConv)(dim=256 + 8, fpn_dims=[1024, 512, 256], context_dim=256)
model.mask_in_features = ["res4", "res3", "res2"]
model.criterion._target_ = SegmCriterion
model.criterion.losses = ["class", "boxes", "masks"]
model.criterion.weight_dict.update({"loss_mask": 1.0, "loss_dice": 1.0})
model.panoptic_on = True
model.is_thing = [bool(c["isthing"]) for c in COCO_CATEGORIES]
