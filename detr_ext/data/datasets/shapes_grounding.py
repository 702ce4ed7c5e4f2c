"""The shapes dataset as text-prompted ("grounding") detection data: every image comes with a
prompt such as ``"blue square . red circle . green triangle ."`` and its boxes are labelled with
the index of their phrase in that prompt.

It reads the same images and COCO json as ``shapes_train`` / ``shapes_val`` (generated on first
load exactly as :func:`~detr_ext.data.datasets.register_shapes` does, so both registrations share
the files when they use the same root and sizes) and turns each image into records:

- a colour record (both splits), ``image_id`` = the image's COCO id: the prompt lists the
  distinct ``"<colour> <shape>"`` phrases present in the image plus ``num_negative_phrases``
  absent ones, in a shuffled order; each annotation's ``category_id`` is the index of its phrase.
  Negatives and order are drawn from (seed, split, image id), so every load gives the same data.
- with ``include_category_prompts`` (train only), a category record, ``image_id`` =
  :data:`CATEGORY_RECORD_ID_OFFSET` + the COCO id: the prompt ``"circle . square . triangle ."``
  and ``category_id`` the contiguous class index, as in ``shapes_train``. It keeps the model
  able to detect by category name, the prompt that the COCO evaluation on ``shapes_val`` uses.

Annotations keep ``bbox`` (XYWH_ABS), ``bbox_mode``, ``iscrowd``, ``segmentation`` as
``load_coco_json`` gives them, plus the object's ``"color"``.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import numpy as np

from ...modeling.language.prompts import build_prompt
from ._generation import registration_splits
from .shapes import (
    SHAPES_CATEGORIES,
    SHAPES_COLORS,
    default_shapes_root,
    generate_shapes_dataset,
)

__all__ = [
    "CATEGORY_RECORD_ID_OFFSET",
    "SHAPES_GROUNDING_DATASET_NAMES",
    "build_shapes_grounding_records",
    "register_shapes_grounding",
]

SHAPES_GROUNDING_DATASET_NAMES = ("shapes_grounding_train", "shapes_grounding_val")
# image_id of an image's category record = this + the image's COCO id (COCO ids of the shapes
# splits are 1..num_images): unique, and the original id stays readable in it.
CATEGORY_RECORD_ID_OFFSET = 1_000_000_000
# Separates the prompt draws from the generator's, which are seeded with [seed, split, index].
_PROMPT_STREAM = zlib.crc32(b"shapes_grounding prompt")
_SHAPE_NAMES = tuple(c["name"] for c in SHAPES_CATEGORIES)
_CONTIGUOUS_ID = {c["id"]: i for i, c in enumerate(SHAPES_CATEGORIES)}


def _colour_record(
    record: dict[str, Any], rng: np.random.Generator, num_negative_phrases: int
) -> dict[str, Any]:
    """The colour-prompted copy of one ``load_coco_json`` record (category ids 3/7/11)."""
    image_id = record["image_id"]
    shape_of = {c["id"]: c["name"] for c in SHAPES_CATEGORIES}
    for annotation in record["annotations"]:
        if annotation.get("color") not in SHAPES_COLORS:
            raise ValueError(
                f"shapes_grounding: an annotation of image {image_id} has color "
                f"{annotation.get('color')!r}, expected one of {SHAPES_COLORS}; the shapes json "
                "comes from an older generator, delete it to regenerate"
            )
    phrase_of = [f"{a['color']} {shape_of[a['category_id']]}" for a in record["annotations"]]
    present = sorted(set(phrase_of))
    absent = [f"{c} {s}" for c in SHAPES_COLORS for s in _SHAPE_NAMES if f"{c} {s}" not in present]
    num_negatives = min(num_negative_phrases, len(absent))
    negatives = [absent[i] for i in rng.choice(len(absent), size=num_negatives, replace=False)]
    phrases = [(present + negatives)[i] for i in rng.permutation(len(present) + num_negatives)]
    index_of = {phrase: i for i, phrase in enumerate(phrases)}
    annotations = [
        {**annotation, "category_id": index_of[phrase]}
        for annotation, phrase in zip(record["annotations"], phrase_of, strict=True)
    ]
    return {**record, "prompt": build_prompt(phrases)[0], "annotations": annotations}


def _category_record(record: dict[str, Any]) -> dict[str, Any]:
    """The category-name-prompted copy of one ``load_coco_json`` record (ids 3/7/11)."""
    annotations = [
        {**annotation, "category_id": _CONTIGUOUS_ID[annotation["category_id"]]}
        for annotation in record["annotations"]
    ]
    return {
        **record,
        "image_id": CATEGORY_RECORD_ID_OFFSET + record["image_id"],
        "prompt": build_prompt(_SHAPE_NAMES)[0],
        "annotations": annotations,
    }


def build_shapes_grounding_records(
    records: list[dict[str, Any]],
    split: str,
    seed: int = 0,
    num_negative_phrases: int = 2,
    include_category_prompts: bool = False,
) -> list[dict[str, Any]]:
    """Grounding records from shapes records as ``load_coco_json(json, image_root)`` gives them
    without a dataset name (dataset category ids 3/7/11, annotations with ``"color"``).

    Returns:
        one colour record per input record, in order, followed (with
        ``include_category_prompts``) by one category record per input record.
    """
    if not isinstance(num_negative_phrases, int) or num_negative_phrases < 0:
        raise ValueError(
            "shapes_grounding: num_negative_phrases must be an int >= 0, got "
            f"{num_negative_phrases!r}"
        )
    split_code = zlib.crc32(split.encode())
    colour_records = []
    for record in records:
        image_id = record["image_id"]
        if not isinstance(image_id, int) or not 0 <= image_id < CATEGORY_RECORD_ID_OFFSET:
            raise ValueError(
                f"shapes_grounding: expected integer image ids in [0, "
                f"{CATEGORY_RECORD_ID_OFFSET}), got {image_id!r}"
            )
        rng = np.random.default_rng([seed, split_code, image_id, _PROMPT_STREAM])
        colour_records.append(_colour_record(record, rng, num_negative_phrases))
    if not include_category_prompts:
        return colour_records
    return colour_records + [_category_record(record) for record in records]


def register_shapes_grounding(
    root: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    num_negative_phrases: int = 2,
    include_category_prompts: bool = True,
    *,
    replace: bool = False,
) -> tuple[str, str]:
    """Register ``shapes_grounding_train`` and ``shapes_grounding_val`` with detectron2.

    Cheap: the loader generates the shapes split on first use (the same files as
    ``register_shapes`` with the same ``root``, sizes and ``seed``), then builds the records
    described in this module's docstring. Category records are added to the train split only.

    Args:
        root: dataset directory; default ``$DETR_EXT_DATASETS/shapes``, shared with ``shapes_*``.
        num_train, num_val, seed: as in ``register_shapes``; use the same values for both
            registrations of one root, or each load regenerates the other's files.
        num_negative_phrases: absent ``"<colour> <shape>"`` phrases added to each colour prompt
            (fewer when an image leaves fewer absent).
        include_category_prompts: add a category record per training image.
        replace: if a name is already registered with other parameters, replace it instead of
            raising. Registering again with the same parameters is always a no-op.

    Returns:
        the registered names, ``("shapes_grounding_train", "shapes_grounding_val")``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root, splits = registration_splits(
        "register_shapes_grounding", root, default_shapes_root(), num_train, num_val
    )
    if not isinstance(num_negative_phrases, int) or num_negative_phrases < 0:
        raise ValueError(
            "register_shapes_grounding: num_negative_phrases must be an int >= 0, got "
            f"{num_negative_phrases!r}"
        )

    for name, (split, num_images) in zip(
        SHAPES_GROUNDING_DATASET_NAMES, splits.items(), strict=True
    ):
        with_categories = include_category_prompts and split == "train"
        params = {
            "root": root,
            "split": split,
            "num_images": num_images,
            "seed": seed,
            "num_negative_phrases": num_negative_phrases,
            "include_category_prompts": with_categories,
        }
        if name in DatasetCatalog.list():
            existing = MetadataCatalog.get(name).get("shapes_grounding_params")
            if existing == params:
                continue
            if not replace:
                raise ValueError(
                    f"register_shapes_grounding: dataset {name!r} is already registered with "
                    f"{existing}, got {params}; pass replace=True to re-register it"
                )
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        # Default arguments bind this iteration's values (a plain closure would see the last).
        def load(split=split, num_images=num_images, with_categories=with_categories):
            json_file = generate_shapes_dataset(root, split, num_images, seed)
            # No dataset_name: this dataset's category ids are phrase indices, so its metadata
            # must not carry the 3/7/11 -> 0/1/2 map that load_coco_json would set.
            records = load_coco_json(
                json_file, os.path.join(root, split), extra_annotation_keys=["color"]
            )
            return build_shapes_grounding_records(
                records, split, seed, num_negative_phrases, with_categories
            )

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            # No json_file: the shapes json has the 3/7/11 categories, not this dataset's
            # phrase labels, so COCO tools must not be pointed at it.
            image_root=os.path.join(root, split),
            evaluator_type="grounding",
            # No thing_classes: labels are phrase indices of each record's own prompt, not
            # shape names (detectron2's get_detection_dataset_dicts would also reject
            # category_id >= len(thing_classes)).
            shapes_grounding_params=params,
        )
    return SHAPES_GROUNDING_DATASET_NAMES
