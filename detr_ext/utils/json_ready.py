"""Values made writable as strict JSON: non-finite floats (COCO's NaN AP of a category without
objects) become ``null`` instead of the ``NaN`` that ``json.dump`` writes and JSON readers
reject."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["json_ready"]


def json_ready(value: Any) -> Any:
    """``value`` with non-finite floats (COCO's NaN for empty categories) as ``None``."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
