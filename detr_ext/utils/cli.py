"""Argument types shared by the command-line tools."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_at_least"]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` ``type``: an integer ``>= minimum``, else a usage error naming both
    (``--repeat 0`` used to end in a ``StatisticsError`` traceback, a size of 0 in a run on
    empty tensors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse
