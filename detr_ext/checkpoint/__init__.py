"""Checkpoints: conversion of other codebases' state_dicts into detr_ext parameter names, and
strict loading of trained weights for inference / evaluation.

Projects register their :class:`Converter` objects (``projects/<name>/checkpoint.py``);
``tools/convert_checkpoint.py`` applies one by name and verifies the result against a model
built from a config. :func:`load_model_weights` loads weights to use a model (evaluation, the
demo) and fails, rather than leaving random tensors, when the checkpoint does not fit.
"""

from .convert import (
    DROP_NORM_COUNTERS,
    ConversionReport,
    Converter,
    convert_state_dict,
    find_converters,
    get_converter,
    list_converters,
    register_converter,
    rename_key,
)
from .loading import (
    CheckpointMismatchError,
    ShapeCheckingCheckpointer,
    UnreadableCheckpointError,
    load_model_weights,
)

__all__ = [
    "CheckpointMismatchError",
    "ConversionReport",
    "Converter",
    "DROP_NORM_COUNTERS",
    "convert_state_dict",
    "find_converters",
    "get_converter",
    "list_converters",
    "load_model_weights",
    "register_converter",
    "rename_key",
    "ShapeCheckingCheckpointer",
    "UnreadableCheckpointError",
]
