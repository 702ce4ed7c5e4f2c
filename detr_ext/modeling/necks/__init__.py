"""Necks: turn backbone feature maps into the multi-scale inputs of a DETR encoder."""

from .channel_mapper import ChannelMapper, ConvNormAct

__all__ = ["ChannelMapper", "ConvNormAct"]
