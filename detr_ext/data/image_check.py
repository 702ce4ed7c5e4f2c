"""Check every image file of a dataset before training: readable to the end, and of the size
the annotations were drawn for.

Training meets a broken image only when the data stream reaches it: a truncated file or a
phone photo whose EXIF rotation does not fit its labels stops a run hours in, and since
``--resume`` continues the stream, the resumed run meets the same image again.
:func:`check_image_files` finds all of them in one pass (``tools/check_dataset.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from detectron2.utils.file_io import PathManager
from PIL import Image

from .image_io import (
    EXIF_ORIENTATION_TAG,
    HIGH_BIT_DEPTH_MODES,
    TRANSPOSING_ORIENTATIONS,
    to_8_bit,
)

__all__ = ["PROBLEM_KINDS", "ImageProblem", "check_image_files"]

PROBLEM_KINDS = ("missing", "unreadable", "exif_orientation", "size_mismatch")
"""``missing``: no file at ``file_name``. ``unreadable``: truncated, corrupt or not an image, or a
32-bit / float image whose values are not 16-bit intensities (decoded checks only).
``exif_orientation``: the annotations fit the stored pixels, but the EXIF orientation (applied
by default) turns the image by 90 degrees. ``size_mismatch``: the file's size is neither the
annotated one nor its turn."""


@dataclass(frozen=True)
class ImageProblem:
    """One image that training would fail on."""

    image_id: Any
    file_name: str
    kind: str  # one of PROBLEM_KINDS
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_one(record: dict, decode: bool, apply_exif_orientation: bool) -> ImageProblem | None:
    file_name = os.fspath(record["file_name"])
    image_id = record.get("image_id")

    def problem(kind: str, detail: str) -> ImageProblem:
        return ImageProblem(image_id, file_name, kind, detail)

    try:
        with PathManager.open(file_name, "rb") as file:
            image = Image.open(file)
            stored = image.size  # (width, height) of the pixels as stored
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
            if decode:
                image.load()  # decodes to the end: a truncated file fails here
                if image.mode in HIGH_BIT_DEPTH_MODES:
                    to_8_bit(image)  # what the readers do: 32-bit values out of range fail
    except FileNotFoundError:
        return problem(
            "missing",
            "no such file: restore it, or remove the image and its annotations from the json",
        )
    except Exception as error:
        return problem("unreadable", f"{type(error).__name__}: {error}")
    turned = apply_exif_orientation and orientation in TRANSPOSING_ORIENTATIONS
    shown = (stored[1], stored[0]) if turned else stored
    if "width" not in record or "height" not in record:
        return None  # nothing to compare with
    annotated = (int(record["width"]), int(record["height"]))
    if shown == annotated:
        return None
    if turned and stored == annotated:
        return problem(
            "exif_orientation",
            f"the annotations are for the stored {stored[0]}x{stored[1]} pixels, but EXIF "
            f"orientation {orientation} turns the image to {shown[0]}x{shown[1]}; train with "
            "the mapper's apply_exif_orientation=False, or re-export the image upright",
        )
    return problem(
        "size_mismatch",
        f"annotated as {annotated[0]}x{annotated[1]} (width x height), the file is "
        f"{shown[0]}x{shown[1]}" + (f" after EXIF orientation {orientation}" if turned else ""),
    )


def check_image_files(
    records: Iterable[dict],
    *,
    decode: bool = True,
    apply_exif_orientation: bool = True,
    workers: int = 8,
) -> list[ImageProblem]:
    """Open every record's ``file_name``; report those training would fail on.

    Args:
        records: detectron2 dataset dicts (``file_name``; ``image_id``, ``width``,
            ``height`` when known), e.g. ``DatasetCatalog.get(name)``.
        decode: decode each image to its end (finds truncated files; slower) rather than read
            its header only.
        apply_exif_orientation: the mapper's option of the same name (default True, as
            detectron2 reads images).
        workers: threads reading files.

    Returns:
        the problems, in the records' order (empty when every image is fine).
    """
    records = list(records)
    if workers < 1:
        raise ValueError(f"check_image_files: expected workers >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Sequence[ImageProblem | None] = list(
            pool.map(lambda record: _check_one(record, decode, apply_exif_orientation), records)
        )
    return [result for result in results if result is not None]
