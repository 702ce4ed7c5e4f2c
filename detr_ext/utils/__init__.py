"""Small helpers every layer of detr_ext may use: they import nothing of detr_ext above them.
Importing the package loads the standard library only; its modules are imported one by one
(``run_info``, ``json_ready`` and ``file_io`` need the standard library alone, so
``detr_ext.ops`` may use them; ``flop_count`` needs fvcore and detectron2)."""

from .file_io import atomic_write, atomic_write_json

__all__ = ["atomic_write", "atomic_write_json"]
