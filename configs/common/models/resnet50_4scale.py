"""The image side shared by the deformable-attention models on ResNet-50 with 4 feature levels
(detrex's ``deformable_detr_r50`` and ``dino_r50_4scale``): the torchvision-style ResNet-50,
the sine position embedding, the neck that maps res3-res5 to 256 channels and adds a fourth,
stride-64 level, and the ImageNet input statistics (``pixels``).

A model config takes the parts it needs::

    _r50 = get_config("common/models/resnet50_4scale.py")
    model = L(MyDetector)(
        backbone=_r50.backbone,
        position_embedding=_r50.position_embedding,
        neck=_r50.neck,
        **_r50.pixels,
        ...
    )
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from torch import nn

from detr_ext.layers import PositionEmbeddingSine
from detr_ext.modeling.backbones import build_resnet_backbone
from detr_ext.modeling.necks import ChannelMapper

# torchvision-style ResNet-50 (stride in the 3x3 conv), frozen BN, stem frozen.
backbone = L(build_resnet_backbone)(
    depth=50,
    out_features=("res3", "res4", "res5"),
    norm="FrozenBN",
    freeze_at=1,
    stride_in_1x1=False,
)

position_embedding = L(PositionEmbeddingSine)(
    num_pos_feats=128, temperature=10000, normalize=True, offset=-0.5
)

neck = L(ChannelMapper)(
    input_shapes={
        "res3": ShapeSpec(channels=512, stride=8),
        "res4": ShapeSpec(channels=1024, stride=16),
        "res5": ShapeSpec(channels=2048, stride=32),
    },
    in_features=["res3", "res4", "res5"],
    out_channels=256,
    kernel_size=1,
    norm_layer=L(nn.GroupNorm)(num_groups=32, num_channels="${..out_channels}"),
    # res3, res4, res5 and a stride-2 3x3 conv on res5.
    num_outs=4,
)

# The detector's input normalization: ImageNet statistics, RGB input in [0, 255] (the
# torchvision R-50 weights were trained so).
pixels = dict(
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    input_format="RGB",
)
