"""detr_ext: DETR-family detectors for detectron2 with a compiled multi-scale deformable
attention operator. Subpackages: ``ops`` (the operator), ``layers`` (nn building blocks)."""

__version__ = "0.1.0"
