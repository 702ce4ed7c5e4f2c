"""Small helpers every layer of detr_ext may use (no torch, detectron2 or model imports)."""

from .file_io import atomic_write, atomic_write_json

__all__ = ["atomic_write", "atomic_write_json"]
