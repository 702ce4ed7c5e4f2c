"""DINO 4-scale with a timm ConvNeXt-T backbone on COCO, 12 epochs.

The backbone comes from timm (``detr_ext.modeling.backbones.TimmBackbone``): feature levels
1, 2, 3 of ConvNeXt-T (strides 8, 16, 32; 192, 384, 768 channels) feed the same neck and
transformer as the ResNet-50 model; each level ``i`` is named ``p{i}`` whatever the order of
``out_indices``. ``pretrained=False`` keeps the config usable offline; to start from ImageNet
weights, either set ``pretrained=True`` (timm downloads or reads its cache) or point
``checkpoint_path`` at a local timm ``convnext_tiny`` checkpoint, e.g. on the command line of
``tools/train_net.py``::

    model.backbone.checkpoint_path=/data/weights/convnext_tiny.pth

The file holds the state dict of timm's ``convnext_tiny`` (``stages.0...``) or of this
backbone (``backbone.timm_model.stages_0...``), bare or under ``state_dict`` / ``model`` /
``state_dict_ema``; a missing, misshapen or foreign key (e.g. a ``convnext_small`` file) stops
the build with a ValueError listing them. With weights loaded, the detector logs a warning
when ``model.pixel_mean`` / ``model.pixel_std`` (ImageNet's, RGB, as these weights expect)
differ from the statistics of the timm weights, e.g. after switching ``model_name``. Swin and
ViT models work too (channels-first maps, any image size); Swin needs image sides divisible
by its patch size 4, e.g. ``model.size_divisibility=32``.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from detr_ext.modeling.backbones import TimmBackbone

from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = L(TimmBackbone)(
    model_name="convnext_tiny",
    features_only=True,
    pretrained=False,
    checkpoint_path="",  # a local timm checkpoint of the full model, loaded when set
    out_indices=(1, 2, 3),
)
model.neck.input_shapes = {
    "p1": ShapeSpec(channels=192, stride=8),
    "p2": ShapeSpec(channels=384, stride=16),
    "p3": ShapeSpec(channels=768, stride=32),
}
model.neck.in_features = ["p1", "p2", "p3"]

# The backbone's weights come from timm, not from a detectron2 ResNet checkpoint.
train.init_checkpoint = ""
train.output_dir = "./output/dino_timm_convnext_tiny_4scale_12ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
