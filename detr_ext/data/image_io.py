"""Reading image files with errors that name the file: a truncated or corrupt image met in a
data-loader worker, at evaluation or in the demo otherwise surfaces as a bare PIL ``OSError``
("image file is truncated") with no hint of which of 100k files is broken."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from detectron2.data import detection_utils as utils

__all__ = ["ImageReadError", "read_image_file"]


class ImageReadError(OSError):
    """An image file could not be read or decoded; the message names the file, the image id
    when known, and the underlying cause (also chained as ``__cause__``)."""


def read_image_file(
    file_name: str | os.PathLike, format: str | None = None, *, image_id: Any = None
) -> np.ndarray:
    """Read an image file with detectron2's ``read_image`` (EXIF orientation applied).

    Args:
        file_name: path of the image file.
        format: channel order / PIL mode of the result, e.g. ``"RGB"`` or ``"BGR"``; ``None``
            keeps the file's own mode.
        image_id: the dataset's id of the image, quoted in the error message when given.

    Returns:
        the image, uint8 [H, W, C] (or [H, W] for single-channel modes without ``format``).

    Raises:
        ImageReadError: the file is missing, unreadable, truncated or not an image. The whole
            file is decoded here, so a truncated file fails now rather than later.
    """
    path = os.fspath(file_name)
    try:
        return utils.read_image(path, format=format)
    except Exception as error:  # any failure to decode this one file: say which file it was
        where = f"image file {path!r}" + ("" if image_id is None else f" (image_id={image_id!r})")
        raise ImageReadError(
            f"could not read {where}: {type(error).__name__}: {error}. Expected a readable, "
            "complete image file; re-export or remove this image"
        ) from error
