"""Detector projects built on detr_ext, one package per detector."""
