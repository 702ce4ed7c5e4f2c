"""DETR-R50-DC5 on COCO, 300 epochs: res5 dilated (stride 16 instead of 32), which doubles the
feature map's height and width (4x the encoder tokens) and helps small objects.

detectron2 dilates every block of res5 (torchvision dilates all but the first); the parameters
are the same, so checkpoints convert either way. Everything else as ``detr_r50_300ep.py``.
"""

from detectron2.config import LazyCall as L

from detr_ext.modeling.backbones import build_resnet_backbone

# Re-exported: a LazyConfig file's config is its top-level names.
from .detr_r50_300ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone = L(build_resnet_backbone)(
    depth=50,
    out_features=["res5"],
    norm="FrozenBN",
    freeze_at=1,
    res5_dilation=2,
    stride_in_1x1=False,
)
train.output_dir = "./output/detr_r50_dc5_300ep"
dataloader.evaluator.output_dir = train.output_dir
