"""Backbones: detectron2's ResNet (through a plain-argument builder) and timm models."""

from .resnet import build_resnet_backbone
from .timm_backbone import TimmBackbone

__all__ = ["TimmBackbone", "build_resnet_backbone"]
