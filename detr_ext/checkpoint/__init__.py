"""Checkpoint conversion: rename other codebases' state_dicts into detr_ext parameter names.

Projects register their :class:`Converter` objects (``projects/<name>/checkpoint.py``);
``tools/convert_checkpoint.py`` applies one by name and verifies the result against a model
built from a config.
"""

from .convert import (
    ConversionReport,
    Converter,
    convert_state_dict,
    get_converter,
    list_converters,
    register_converter,
    rename_key,
)

__all__ = [
    "ConversionReport",
    "Converter",
    "convert_state_dict",
    "get_converter",
    "list_converters",
    "register_converter",
    "rename_key",
]
