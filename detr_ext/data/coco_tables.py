"""The image and category tables of a COCO instances json: ids, names, files, sizes.

Helpers of :func:`detr_ext.data.coco_validation.check_coco_instances`, which checks the
annotations against what these return.
"""

from __future__ import annotations

import os
from typing import Any

from .annotation_geometry import is_number

__all__ = ["Findings", "check_categories", "check_images", "id_key", "is_coco_id", "short"]

_MAX_EXAMPLES = 5


class Findings:
    """A count of one kind of problem and its first few examples."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(example)

    def __bool__(self) -> bool:
        return self.count > 0

    def describe(self) -> str:
        more = (
            f", ... ({self.count - len(self.examples)} more)"
            if self.count > len(self.examples)
            else ""
        )
        # "(count): examples", after the phrase naming the problem.
        return f"({self.count}): " + "; ".join(self.examples) + more


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_coco_id(value: Any) -> bool:
    """Whether ``value`` is a usable image or category id: a non-negative int (not a bool)."""
    return type(value) is int and value >= 0


def id_key(value: Any) -> tuple[type, Any] | None:
    """``value`` keyed with its type (so that ``True`` is not ``1``); None when unhashable."""
    try:
        hash(value)
    except TypeError:
        return None
    return type(value), value


def check_categories(categories: list, errors: list[str]) -> tuple[set[int], set[tuple]]:
    """The ids of the usable categories, and the ``id_key`` of every id that was refused (so
    that annotations of a refused category are not reported a second time)."""
    ids: set[int] = set()
    refused: set[tuple] = set()
    bad, bad_ids, duplicates = Findings(), Findings(), Findings()
    for index, category in enumerate(categories):
        if not isinstance(category, dict):
            bad.add(f"categories[{index}] is {type(category).__name__}")
            continue
        category_id, name = category.get("id"), category.get("name")
        if not is_coco_id(category_id):
            bad_ids.add(f"categories[{index}]: id={short(category_id)} (name={short(name)})")
            key = id_key(category_id)
            if key is not None:
                refused.add(key)
            continue
        if not isinstance(name, str):
            bad.add(f"categories[{index}]: id={category_id}, name={short(name)}")
            refused.add(id_key(category_id))
            continue
        if category_id in ids:
            duplicates.add(f"id={category_id} ({name!r})")
        ids.add(category_id)
    if bad_ids:
        errors.append(
            "categories without a non-negative integer 'id' (expected by the COCO format and "
            "the evaluation backends: hotcoco refuses any other id, at the evaluation after "
            "training; any such ids work, detectron2 maps them to contiguous indices). "
            "Renumber the categories, e.g. 1..n, and set every "
            f"annotation's 'category_id' to match {bad_ids.describe()}"
        )
    if bad:
        errors.append(f"categories that are not dicts with a str 'name' {bad.describe()}")
    if duplicates:
        errors.append(f"duplicate category ids {duplicates.describe()}")
    return ids, refused


def check_images(
    images: list, image_root: str, errors: list[str], require_files: bool = True
) -> dict[int, dict]:
    """Map image id -> image dict; report bad entries, duplicate ids and (``require_files``)
    missing files."""
    by_id: dict[int, dict] = {}
    bad_ids, bad, duplicates, missing = Findings(), Findings(), Findings(), Findings()
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            bad.add(f"images[{index}] is {type(image).__name__}")
            continue
        image_id, file_name = image.get("id"), image.get("file_name")
        height, width = image.get("height"), image.get("width")
        if not is_coco_id(image_id):
            bad_ids.add(f"images[{index}]: id={short(image_id)} (file_name={short(file_name)})")
            continue
        if not isinstance(file_name, str) or not file_name:
            bad.add(f"images[{index}]: id={image_id}, file_name={short(file_name)}")
            continue
        if not (is_number(height) and is_number(width) and height > 0 and width > 0):
            bad.add(f"id={image_id!r} ({file_name}): height={short(height)}, width={short(width)}")
        if image_id in by_id:
            duplicates.add(f"id={image_id!r} ({by_id[image_id]['file_name']} and {file_name})")
            continue
        by_id[image_id] = image
        if require_files and not os.path.isfile(os.path.join(image_root, file_name)):
            missing.add(file_name)
    if bad_ids:
        errors.append(
            "images without a non-negative integer 'id' (expected by the COCO format and the "
            "evaluation backends: hotcoco refuses any other id, at the evaluation after "
            "training). Renumber the images, e.g. 1..n, and set every "
            f"annotation's 'image_id' to its image's new id {bad_ids.describe()}"
        )
    if bad:
        errors.append(
            "images without a 'file_name' and positive 'height' and 'width' " + bad.describe()
        )
    if duplicates:
        errors.append(
            "duplicate image ids (one image would silently get the other's boxes) "
            f"{duplicates.describe()}"
        )
    if missing:
        errors.append(f"image files missing under {image_root} {missing.describe()}")
    return by_id
