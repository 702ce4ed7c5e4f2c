"""One pass over a COCO instances json that finds, before any training, what real exports get
wrong and what detectron2 / pycocotools would otherwise mishandle silently or far too late:

refused (``ValueError`` naming the file and the offending ids):
  - images that are not dicts or lack a usable ``id``, ``file_name``, ``height`` or ``width``;
  - duplicate image ids (pycocotools keeps one image and gives it the other's boxes);
  - image files missing under ``image_root`` (otherwise found at the first batch, or after all
    of training at the final evaluation);
  - categories without an int ``id`` and a ``name``, or with duplicate ids;
  - annotations that are not dicts, or whose ``category_id`` is not among ``categories``.

dropped from the registered data, with a warning that counts them and names the first few:
  - annotations whose ``bbox`` is missing, null, not 4 finite numbers, or has width or
    height <= 0 (detectron2 would flip a negative width into a different box, and crash a
    worker on null);
  - annotations whose ``image_id`` is not an image of the file (ignored by detectron2's
    loader and by COCOeval alike; warned because it usually means a mismatched export);
  - annotations whose box lies entirely outside its image (the mapper clips it to nothing, so
    it is never trained on, while COCOeval would count it as a missed object forever).

repaired in the registered copy, with a warning:
  - annotation ids that are not unique positive ints (an id of 0 makes COCOeval count the
    detection matched to it as a false positive: its ``dtm`` array stores the matched ground
    truth id and reads 0 as "unmatched"; duplicates trip detectron2's loader): all ids are
    renumbered 1..n in file order;
  - a missing or non-numeric ``area`` (COCOeval reads it for every ground truth and raises
    ``KeyError`` without it): filled from the mask, or from the box when there is none;
  - boxes that extend more than ``BOX_OUTSIDE_TOLERANCE`` (1) px past their image (drawn over
    the border in a labeling tool): clipped to the image, as the mapper clips them for
    training, so that evaluation scores the same box (the unclipped one lowers the IoU of a
    perfect detection). Their ``area`` is kept.

only warned:
  - an ``area`` that does not fit the box: <= 0, larger than the box, or (without a mask)
    far from width * height. COCO's small / medium / large breakdown reads ``area``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .annotation_geometry import (
    BOX_OUTSIDE_TOLERANCE,
    box_size,
    clip_box_to_image,
    is_number,
    mask_area,
)

__all__ = ["CocoCheckResult", "check_coco_instances"]

_MAX_EXAMPLES = 5
# Tolerances for ``area`` against the box: a mask's pixel area never exceeds its tight box, a
# polygon's exact area never exceeds its box, and exports round both to a pixel or so.
_AREA_RELATIVE_SLACK = 0.05
_AREA_ABSOLUTE_SLACK = 1.0


class _Findings:
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
        return f"{self.count}: " + "; ".join(self.examples) + more


@dataclass
class CocoCheckResult:
    """What ``check_coco_instances`` found.

    Attributes:
        content: the json content to register: the input itself when nothing had to change,
            else a copy with ``annotations`` cleaned (dropped ones removed, ids renumbered,
            missing areas filled) and every other key unchanged.
        changed: whether ``content`` differs from the input (so a copy must be written for
            detectron2's loader and COCOEvaluator to read).
        warnings: one message per kind of problem that was dropped, repaired or only warned.
    """

    content: dict[str, Any]
    changed: bool
    warnings: list[str] = field(default_factory=list)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where_box(annotation: dict, box: Any, image: dict) -> str:
    """How a message names an annotation whose box does not fit its image."""
    size = f"{_short(image.get('width'))}x{_short(image.get('height'))}"
    return f"{_where(annotation)}: bbox={_short(box)}, image {size}"


def _where(annotation: dict) -> str:
    """How a message names an annotation (built only for the ones reported)."""
    return f"id={_short(annotation.get('id'))} (image_id={_short(annotation.get('image_id'))})"


def _check_categories(categories: list, errors: list[str]) -> set[int]:
    ids: set[int] = set()
    bad, duplicates = _Findings(), _Findings()
    for index, category in enumerate(categories):
        if not isinstance(category, dict):
            bad.add(f"categories[{index}] is {type(category).__name__}")
            continue
        category_id, name = category.get("id"), category.get("name")
        if type(category_id) is not int or not isinstance(name, str):
            bad.add(f"categories[{index}]: id={_short(category_id)}, name={_short(name)}")
            continue
        if category_id in ids:
            duplicates.add(f"id={category_id} ({name!r})")
        ids.add(category_id)
    if bad:
        errors.append(f"categories without an int 'id' and a str 'name' {bad.describe()}")
    if duplicates:
        errors.append(f"duplicate category ids {duplicates.describe()}")
    return ids


def _check_images(images: list, image_root: str, errors: list[str]) -> dict[Any, dict]:
    """Map image id -> image dict; report bad entries, duplicate ids and missing files."""
    by_id: dict[Any, dict] = {}
    bad, duplicates, missing = _Findings(), _Findings(), _Findings()
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            bad.add(f"images[{index}] is {type(image).__name__}")
            continue
        image_id, file_name = image.get("id"), image.get("file_name")
        height, width = image.get("height"), image.get("width")
        if type(image_id) not in (int, str) or not isinstance(file_name, str) or not file_name:
            bad.add(f"images[{index}]: id={_short(image_id)}, file_name={_short(file_name)}")
            continue
        if not (is_number(height) and is_number(width) and height > 0 and width > 0):
            bad.add(
                f"id={image_id!r} ({file_name}): height={_short(height)}, width={_short(width)}"
            )
        if image_id in by_id:
            duplicates.add(f"id={image_id!r} ({by_id[image_id]['file_name']} and {file_name})")
            continue
        by_id[image_id] = image
        if not os.path.isfile(os.path.join(image_root, file_name)):
            missing.add(file_name)
    if bad:
        errors.append(
            "images without an int or str 'id', a 'file_name' and positive 'height' and "
            f"'width' {bad.describe()}"
        )
    if duplicates:
        errors.append(
            "duplicate image ids (one image would silently get the other's boxes) "
            f"{duplicates.describe()}"
        )
    if missing:
        errors.append(f"image files missing under {image_root} {missing.describe()}")
    return by_id


def check_coco_instances(
    content: dict[str, Any], json_file: str, image_root: str
) -> CocoCheckResult:
    """Check a parsed COCO instances json in one pass and return what to register.

    ``content`` must already have ``images``, ``annotations`` and ``categories`` lists; it is
    not modified. See the module docstring for what is refused, dropped, repaired or warned.

    Raises:
        ValueError: listing every refused problem with its count and first few ids.
    """
    errors: list[str] = []
    category_ids = _check_categories(content["categories"], errors)
    images = _check_images(content["images"], image_root, errors)

    not_dicts, unknown_category, orphans, bad_boxes = (_Findings() for _ in range(4))
    bad_ids, duplicate_ids, filled_areas, odd_areas = (_Findings() for _ in range(4))
    outside, clipped_boxes = _Findings(), _Findings()
    kept: list[dict] = []
    filled: dict[int, float] = {}  # position in ``kept`` -> area to fill in
    clipped: dict[int, list] = {}  # position in ``kept`` -> the box clipped to its image
    seen_ids: set[int] = set()
    for index, annotation in enumerate(content["annotations"]):
        if not isinstance(annotation, dict):
            not_dicts.add(f"annotations[{index}] is {type(annotation).__name__}")
            continue
        annotation_id = annotation.get("id")
        try:
            image = images.get(annotation.get("image_id"))
        except TypeError:  # an unhashable image_id
            image = None
        if image is None:
            orphans.add(_where(annotation))
            continue
        category_id = annotation.get("category_id")
        if type(category_id) is not int or category_id not in category_ids:
            unknown_category.add(f"{_where(annotation)}: category_id={_short(category_id)}")
            continue
        box = annotation.get("bbox")
        size = box_size(box)
        if size is None:
            bad_boxes.add(f"{_where(annotation)}: bbox={_short(box)}")
            continue
        inside = clip_box_to_image(box, image)
        if inside is None:
            outside.add(_where_box(annotation, box, image))
            continue
        if inside is not box:
            clipped[len(kept)] = inside
            clipped_boxes.add(_where_box(annotation, box, image))

        if type(annotation_id) is not int or annotation_id <= 0:
            bad_ids.add(_where(annotation))
        elif annotation_id in seen_ids:
            duplicate_ids.add(_where(annotation))
        else:
            seen_ids.add(annotation_id)

        box_area = size[0] * size[1]
        area, segmentation = annotation.get("area"), annotation.get("segmentation")
        if not is_number(area):
            fill = None
            if segmentation:
                fill = mask_area(segmentation, image.get("height"), image.get("width"))
            if fill is None:  # the box's area (the clipped box's, when it was clipped)
                fill = inside[2] * inside[3]
            filled[len(kept)] = fill
            filled_areas.add(f"{_where(annotation)}: area={_short(area)}")
        elif (
            area <= 0
            or area > box_area * (1 + _AREA_RELATIVE_SLACK) + _AREA_ABSOLUTE_SLACK
            or (
                not segmentation
                and area < box_area * (1 - _AREA_RELATIVE_SLACK) - _AREA_ABSOLUTE_SLACK
            )
        ):
            box_text = f"box {size[0]:g}x{size[1]:g} ({'mask' if segmentation else 'no mask'})"
            odd_areas.add(f"{_where(annotation)}: area={area:g}, {box_text}")
        kept.append(annotation)

    if not_dicts:
        errors.append(f"annotations that are not dicts {not_dicts.describe()}")
    if unknown_category:
        known = sorted(category_ids)
        if len(known) > 20:
            known = f"{len(known)} ids from {known[0]} to {known[-1]}"
        errors.append(
            f"annotations whose category_id is not in 'categories' ({known}) "
            f"{unknown_category.describe()}"
        )
    if errors:
        raise ValueError(
            f"{json_file} is not usable as a COCO instances dataset:\n  - " + "\n  - ".join(errors)
        )

    warnings = []
    if bad_boxes:
        warnings.append(
            "dropped annotations whose bbox is missing, null, not 4 finite numbers, or has "
            "width or height <= 0 (they are neither trained on nor evaluated) "
            + bad_boxes.describe()
        )
    if orphans:
        warnings.append(
            f"ignored annotations whose image_id is not an image of the file {orphans.describe()}"
        )
    if outside:
        warnings.append(
            "dropped annotations whose box lies entirely outside its image (never trained on; "
            f"evaluation would count them as missed) {outside.describe()}"
        )
    if clipped_boxes:
        warnings.append(
            f"clipped to their image the boxes that extend more than {BOX_OUTSIDE_TOLERANCE:g} "
            "px past it (training clips them too; evaluation now scores the same box) "
            + clipped_boxes.describe()
        )
    renumber = bool(bad_ids or duplicate_ids)
    if renumber:
        problems = []
        if bad_ids:
            problems.append(f"ids that are not positive ints {bad_ids.describe()}")
        if duplicate_ids:
            problems.append(f"duplicate ids {duplicate_ids.describe()}")
        warnings.append(
            "renumbered annotation ids 1..n in file order (COCOeval counts a detection matched "
            "to a ground truth of id 0 as a false positive; detectron2 refuses duplicate ids): "
            + "; ".join(problems)
        )
    if filled_areas:
        warnings.append(
            "filled a missing or non-numeric 'area' (COCOeval needs it) from the mask, or the "
            f"box without a mask, for annotations {filled_areas.describe()}"
        )
    if odd_areas:
        warnings.append(
            "annotations whose 'area' does not fit their box (COCO's small/medium/large "
            "breakdown reads 'area'; expected 0 < area <= box area, and area ~ box area "
            f"without a mask) {odd_areas.describe()}"
        )

    # Orphans alone need no copy: detectron2's loader and COCOeval both ignore them already.
    changed = renumber or bool(filled) or bool(bad_boxes) or bool(outside) or bool(clipped)
    if not changed:
        return CocoCheckResult(content=content, changed=False, warnings=warnings)
    annotations = []
    for position, annotation in enumerate(kept):
        if renumber or position in filled or position in clipped:
            annotation = dict(annotation)
            if renumber:
                annotation["id"] = position + 1
            if position in filled:
                annotation["area"] = filled[position]
            if position in clipped:
                annotation["bbox"] = clipped[position]
        annotations.append(annotation)
    return CocoCheckResult(
        content={**content, "annotations": annotations}, changed=True, warnings=warnings
    )
