"""Self-supervised backbone pretraining by DINO self-distillation (Caron et al., 2021): multi-crop
views, the projection head, the loss, the student / momentum-teacher pair and schedules; the
pretraining trainer on detectron2's machinery, the image datasets, the k-NN probe and the export
of a detector-loadable ``backbone.*`` checkpoint (``tools/pretrain_backbone.py``)."""

from .data import PretrainImageDataset, build_pretrain_loader, collate_crops
from .export import backbone_checkpoint, backbone_load_report, save_backbone_checkpoint
from .head import DINOHead
from .knn import KNNProbe, knn_accuracy, object_crops
from .loss import DINOLoss
from .model import BackboneEmbedder, SelfDistillation
from .multicrop import MultiCropAugmentation
from .options import PretrainOptions
from .schedules import cosine_schedule
from .trainer import DINOPretrainer, build_pretrain_model

__all__ = [
    "BackboneEmbedder",
    "DINOHead",
    "DINOLoss",
    "DINOPretrainer",
    "KNNProbe",
    "MultiCropAugmentation",
    "PretrainImageDataset",
    "PretrainOptions",
    "SelfDistillation",
    "backbone_checkpoint",
    "backbone_load_report",
    "build_pretrain_loader",
    "build_pretrain_model",
    "collate_crops",
    "cosine_schedule",
    "knn_accuracy",
    "object_crops",
    "save_backbone_checkpoint",
]
