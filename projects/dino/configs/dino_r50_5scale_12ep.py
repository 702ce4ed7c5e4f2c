"""DINO R50 5-scale on COCO, 12 epochs: the 4-scale model plus the stride-4 res2 level.

Zhang et al. (ICLR 2023), Table 1, report 49.4 box AP on COCO val2017 for this model.
"""

from detectron2.layers import ShapeSpec

from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.out_features = ("res2", "res3", "res4", "res5")
model.neck.input_shapes = {
    "res2": ShapeSpec(channels=256, stride=4),
    "res3": ShapeSpec(channels=512, stride=8),
    "res4": ShapeSpec(channels=1024, stride=16),
    "res5": ShapeSpec(channels=2048, stride=32),
}
model.neck.in_features = ["res2", "res3", "res4", "res5"]
model.neck.num_outs = 5
model.transformer.num_feature_levels = 5

train.output_dir = "./output/dino_r50_5scale_12ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
