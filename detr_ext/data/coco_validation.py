"""One pass over a COCO instances json that finds, before any training, what real exports get
wrong and what detectron2 / pycocotools would otherwise mishandle silently or far too late:

refused (``ValueError`` naming the file and the offending ids):
  - images whose ``id`` is not a non-negative int (a string or negative id passes detectron2's
    loader and training, then hotcoco refuses the file at the final evaluation), or that are
    not dicts or lack a usable ``file_name``, ``height`` or ``width``;
  - duplicate image ids (pycocotools keeps one image and gives it the other's boxes);
  - image files missing under ``image_root`` (otherwise found at the first batch, or after all
    of training at the final evaluation);
  - categories without a non-negative int ``id`` (0 is fine, as for images) and a ``name``, or
    with duplicate ids;
  - annotations that are not dicts, whose ``category_id`` is not among ``categories``, or whose
    ``iscrowd`` is neither 0 nor 1 (a string ``"0"`` reads as a crowd region to detectron2 and
    pycocotools, so the box is never trained on nor scored, and hotcoco refuses it).

dropped from the registered data, with a warning that counts them and names the first few:
  - annotations whose ``bbox`` is missing, null, not 4 finite numbers, or has width or
    height <= 0 (detectron2 would flip a negative width into a different box, and crash a
    worker on null);
  - annotations whose ``image_id`` is not an image of the file (ignored by detectron2's
    loader and by COCOeval alike; warned because it usually means a mismatched export);
  - annotations whose box lies entirely outside its image (the mapper clips it to nothing, so
    it is never trained on, while COCOeval would count it as a missed object forever);
  - exact duplicates: annotations identical to an earlier one in every field but ``id`` (the
    same ``image_id``, ``category_id``, ``bbox``, ``iscrowd``, ``segmentation``, ``area`` ...),
    whatever their ids: a second ground-truth object that no detection can match (a perfect
    detector scored AP 93.4 on a file with such copies). The first is kept. Annotations that
    merely overlap, or share an id but differ in any field, are distinct objects and stay.

repaired in the registered copy, with a warning:
  - annotation ids that are not unique positive ints (an id of 0 makes COCOeval count the
    detection matched to it as a false positive: its ``dtm`` array stores the matched ground
    truth id and reads 0 as "unmatched"; duplicates trip detectron2's loader): all ids are
    renumbered 1..n in file order;
  - a missing or non-numeric ``area`` (COCOeval reads it for every ground truth and raises
    ``KeyError`` without it): filled from the mask, or from the box when there is none;
  - a missing or null ``iscrowd`` (converters often leave it out; pycocotools' COCOeval raises
    ``KeyError`` without it): filled with 0;
  - boxes that extend more than ``BOX_OUTSIDE_TOLERANCE`` (1) px past their image (drawn over
    the border in a labeling tool): clipped to the image, as the mapper clips them for
    training, so that evaluation scores the same box (the unclipped one lowers the IoU of a
    perfect detection). Their ``area`` is kept.

only warned:
  - an ``area`` that does not fit the box: <= 0, larger than the box, or (without a mask)
    far from width * height. COCO's small / medium / large breakdown reads ``area``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .annotation_geometry import (
    BOX_OUTSIDE_TOLERANCE,
    box_size,
    clip_box_to_image,
    is_number,
    mask_area,
)
from .coco_tables import Findings, check_categories, check_images, id_key, short

__all__ = ["CocoCheckResult", "check_coco_instances"]

# Tolerances for ``area`` against the box: a mask's pixel area never exceeds its tight box, a
# polygon's exact area never exceeds its box, and exports round both to a pixel or so.
_AREA_RELATIVE_SLACK = 0.05
_AREA_ABSOLUTE_SLACK = 1.0


@dataclass
class CocoCheckResult:
    """What ``check_coco_instances`` found.

    Attributes:
        content: the json content to register: the input itself when nothing had to change,
            else a copy with ``annotations`` cleaned (dropped ones removed, ids renumbered,
            missing areas and iscrowd filled, boxes clipped) and every other key unchanged.
        changed: whether ``content`` differs from the input (so a copy must be written for
            detectron2's loader and COCOEvaluator to read).
        warnings: one message per kind of problem that was dropped, repaired or only warned.
    """

    content: dict[str, Any]
    changed: bool
    warnings: list[str] = field(default_factory=list)


def _where_box(annotation: dict, box: Any, image: dict) -> str:
    """How a message names an annotation whose box does not fit its image."""
    size = f"{short(image.get('width'))}x{short(image.get('height'))}"
    return f"{_where(annotation)}: bbox={short(box)}, image {size}"


def _where(annotation: dict) -> str:
    """How a message names an annotation (built only for the ones reported)."""
    return f"id={short(annotation.get('id'))} (image_id={short(annotation.get('image_id'))})"


def _same_but_id(first: dict, other: dict) -> bool:
    """Whether two annotations are the same record in every field but ``id``."""
    return first.keys() - {"id"} == other.keys() - {"id"} and all(
        first[key] == other[key] for key in first if key != "id"
    )


def check_coco_instances(
    content: dict[str, Any], json_file: str, image_root: str, require_image_files: bool = True
) -> CocoCheckResult:
    """Check a parsed COCO instances json in one pass and return what to register.

    ``content`` must already have ``images``, ``annotations`` and ``categories`` lists; it is
    not modified. See the module docstring for what is refused, dropped, repaired or warned.
    ``require_image_files=False`` leaves out the check that every image file exists (for a
    tool that reports missing files as image problems).

    Raises:
        ValueError: listing every refused problem with its count and first few ids.
    """
    errors: list[str] = []
    category_ids, refused_categories = check_categories(content["categories"], errors)
    images = check_images(content["images"], image_root, errors, require_image_files)

    not_dicts, unknown_category, bad_crowds, orphans = (Findings() for _ in range(4))
    bad_boxes, outside, clipped_boxes, duplicates = (Findings() for _ in range(4))
    bad_ids, duplicate_ids, filled_areas, odd_areas = (Findings() for _ in range(4))
    filled_crowds = Findings()
    kept: list[dict] = []
    filled: dict[int, float] = {}  # position in ``kept`` -> area to fill in
    clipped: dict[int, list] = {}  # position in ``kept`` -> the box clipped to its image
    crowd_filled: set[int] = set()  # positions in ``kept`` whose missing iscrowd becomes 0
    # hash of (image_id, bbox) -> the first kept annotation, and the others kept under the
    # same hash (annotations that differ in another field)
    first_of: dict[int, dict] = {}
    more_of: dict[int, list[dict]] = {}
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
            if id_key(category_id) not in refused_categories:  # else reported with it
                unknown_category.add(f"{_where(annotation)}: category_id={short(category_id)}")
            continue
        iscrowd = annotation.get("iscrowd")  # None is filled with 0 below
        if iscrowd is not None and iscrowd not in (0, 1):  # json's "0", [0], {} equal neither
            bad_crowds.add(f"{_where(annotation)}: iscrowd={short(iscrowd)}")
            continue
        box = annotation.get("bbox")
        size = box_size(box)
        if size is None:
            bad_boxes.add(f"{_where(annotation)}: bbox={short(box)}")
            continue
        inside = clip_box_to_image(box, image)
        if inside is None:
            outside.add(_where_box(annotation, box, image))
            continue

        # An exact copy is one more ground-truth object that no detection can match twice.
        # Boxes rarely repeat in an image, so whole records (masks included) are compared only
        # when they do. The key is an int: a tuple or list kept per annotation made the garbage
        # collector walk the whole parsed json again and again (2-3x slower on 300k boxes).
        key = hash((image["id"], *box))
        first = first_of.setdefault(key, annotation)
        if first is not annotation:
            candidates = (first, *more_of.get(key, ()))
            original = next((a for a in candidates if _same_but_id(a, annotation)), None)
            if original is not None:
                duplicates.add(
                    f"image_id={image['id']}: id={short(annotation_id)} repeats "
                    f"id={short(original.get('id'))}"
                )
                continue
            more_of.setdefault(key, []).append(annotation)

        if inside is not box:
            clipped[len(kept)] = inside
            clipped_boxes.add(_where_box(annotation, box, image))
        if iscrowd is None:  # pycocotools' COCOeval reads it for every ground truth
            crowd_filled.add(len(kept))
            filled_crowds.add(_where(annotation))

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
            filled_areas.add(f"{_where(annotation)}: area={short(area)}")
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
    if bad_crowds:
        errors.append(
            "annotations whose 'iscrowd' is not 0 or 1 (false or true; detectron2 trains only on "
            "boxes whose iscrowd == 0, pycocotools reads a string as a crowd region and hotcoco "
            f"refuses it at the evaluation after training) {bad_crowds.describe()}"
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
    if duplicates:
        warnings.append(
            "dropped exact duplicate annotations, keeping the first of each (identical to an "
            "earlier one in image_id, category_id, bbox, iscrowd, segmentation and every other "
            "field but 'id': each copy is one more ground-truth object, which lowers the AP of "
            "even a perfect detector) " + duplicates.describe()
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
    if filled_crowds:
        warnings.append(
            "filled a missing or null 'iscrowd' with 0 (not a crowd region; pycocotools' "
            f"COCOeval needs it) for annotations {filled_crowds.describe()}"
        )
    if odd_areas:
        warnings.append(
            "annotations whose 'area' does not fit their box (COCO's small/medium/large "
            "breakdown reads 'area'; expected 0 < area <= box area, and area ~ box area "
            f"without a mask) {odd_areas.describe()}"
        )

    # Orphans alone need no copy: detectron2's loader and COCOeval both ignore them already.
    dropped = bool(bad_boxes or outside or duplicates)
    changed = renumber or dropped or bool(filled or clipped or crowd_filled)
    if not changed:
        return CocoCheckResult(content=content, changed=False, warnings=warnings)
    annotations = []
    for position, annotation in enumerate(kept):
        if renumber or position in filled or position in clipped or position in crowd_filled:
            annotation = dict(annotation)
            if renumber:
                annotation["id"] = position + 1
            if position in filled:
                annotation["area"] = filled[position]
            if position in clipped:
                annotation["bbox"] = clipped[position]
            if position in crowd_filled:
                annotation["iscrowd"] = 0
        annotations.append(annotation)
    return CocoCheckResult(
        content={**content, "annotations": annotations}, changed=True, warnings=warnings
    )
