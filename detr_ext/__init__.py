"""detr_ext: DETR-family detectors for detectron2 with a compiled multi-scale deformable
attention operator. Subpackages: ``ops`` (the operator; torch only), ``utils``,
``layers`` (nn building blocks), ``modeling`` (matchers, criterions, losses, backbones, necks,
meta-architecture bases), ``data``, ``checkpoint`` (conversion framework), ``config``,
``evaluation``, ``engine`` (training and evaluation loops), ``export`` and ``pretrain``."""

__version__ = "0.1.0"
