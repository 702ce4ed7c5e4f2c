"""DINO 4-scale with a timm ConvNeXt-T backbone on COCO, 12 epochs.

The backbone comes from timm (``detr_ext.modeling.backbones.TimmBackbone``): feature levels
1, 2, 3 of ConvNeXt-T (strides 8, 16, 32; 192, 384, 768 channels) feed the same neck and
transformer as the ResNet-50 model. ``pretrained=False`` keeps the config usable offline; to
start from ImageNet weights, either set ``pretrained=True`` (timm downloads or reads its cache)
or point ``checkpoint_path`` at a local timm ``convnext_tiny`` checkpoint, e.g. on the
command line of ``tools/train_net.py``::

    model.backbone.checkpoint_path=/data/weights/convnext_tiny.pth
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
