"""Reading image files with errors that name the file: a truncated or corrupt image met in a
data-loader worker, at evaluation or in the demo otherwise surfaces as a bare PIL ``OSError``
("image file is truncated") with no hint of which of 100k files is broken."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = [
    "HighBitDepthError",
    "ImageReadError",
    "exif_orientation",
    "read_image_file",
    "to_8_bit",
]


class ImageReadError(OSError):
    """An image file could not be read or decoded; the message names the file, the image id
    when known, and the underlying cause (also chained as ``__cause__``)."""


class HighBitDepthError(ImageReadError):
    """A 32-bit integer or floating-point image whose values are not 16-bit intensities."""


# PIL modes of 16-bit (and 32-bit integer / float) single-channel images. PIL's own
# ``convert("RGB")`` / ``convert("L")`` clips their values at 255 instead of scaling them, so a
# 16-bit PNG (thermal, medical, microscopy, depth) became nearly all white, silently.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


EXIF_ORIENTATION_TAG = 274
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def exif_orientation(file_name: str | os.PathLike) -> int | None:
    """The EXIF orientation (1-8) recorded in an image file, or None (no EXIF, no tag, or a
    file PIL cannot open); reads the header only."""
    try:
        with PathManager.open(os.fspath(file_name), "rb") as file:
            value = Image.open(file).getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # not a question this function answers: read_image_file reports it
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def read_image_file(
    file_name: str | os.PathLike,
    format: str | None = None,
    *,
    image_id: Any = None,
    apply_exif_orientation: bool = True,
) -> np.ndarray:
    """Read an image file as detectron2's ``read_image`` does (EXIF orientation applied),
    except that a 16-bit single-channel image (PIL modes ``I;16*``, or ``I`` / ``F`` with values
    in 0-65535) is scaled to 8 bit (``value * 255 / 65535``) instead of clipped at 255.

    Args:
        file_name: path of the image file.
        format: channel order / PIL mode of the result, e.g. ``"RGB"`` or ``"BGR"``; ``None``
            keeps the file's own mode.
        image_id: the dataset's id of the image, quoted in the error message when given.
        apply_exif_orientation: rotate / flip the pixels as the file's EXIF orientation says
            (what viewers show, detectron2's default); False keeps the stored pixels.

    Returns:
        the image, uint8 [H, W, C] (or [H, W] for single-channel modes without ``format``).

    Raises:
        ImageReadError: the file is missing, unreadable, truncated or not an image. The whole
            file is decoded here, so a truncated file fails now rather than later.
        HighBitDepthError: (an ``ImageReadError``) a 32-bit integer or float image whose values
            are not 16-bit intensities (negative, above 65535, NaN or infinite).
    """
    path = os.fspath(file_name)
    try:
        with PathManager.open(path, "rb") as file:
            image = Image.open(file)
            if apply_exif_orientation:  # what detectron2's read_image does
                image = utils._apply_exif_orientation(image)
            if image.mode in HIGH_BIT_DEPTH_MODES:
                image = to_8_bit(image)
            return utils.convert_PIL_to_numpy(image, format)
    except Exception as error:  # any failure to decode this one file: say which file it was
        where = f"image file {path!r}" + ("" if image_id is None else f" (image_id={image_id!r})")
        if isinstance(error, HighBitDepthError):
            raise HighBitDepthError(f"{where}: {error}") from error
        raise ImageReadError(
            f"could not read {where}: {type(error).__name__}: {error}. Expected a readable, "
            "complete image file; re-export or remove this image"
        ) from error


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit image (``I;16*``, or ``I`` / ``F`` holding values in [0, 65535]) as an 8-bit
    ``L`` image, ``value * 255 / 65535`` rounded: the full 16-bit range maps onto 0-255, the
    same for every image (no per-image stretching). Other 32-bit images are refused."""
    values = np.asarray(image)
    if image.mode in ("I", "F"):
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 65535):
            raise HighBitDepthError(
                f"could not read a {image.mode}-mode image with values from {low:g} to "
                f"{high:g}: expected 8-bit or 16-bit intensities (0-65535); convert it to an "
                "8-bit image first"
            )
    scaled = np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8: mode "L"
