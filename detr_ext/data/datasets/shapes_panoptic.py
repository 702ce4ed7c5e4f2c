"""The bundled shapes images as a COCO panoptic segmentation dataset: the three shapes are
"things" (ids 3, 7, 11) and every pixel no object covers is the "stuff" ``background`` (id 20).

Built from the instances json of :mod:`.shapes` (same images, same image ids). Layout under
``root``, next to the shapes files::

    annotations/panoptic_{split}.json            COCO panoptic json
    annotations/manifest_panoptic_{split}.json   present and matching => split is complete
    panoptic_{split}/000000.png ...              segment ids as RGB: R + 256 G + 256^2 B

In image ``k`` the things' segment ids are ``1 .. K`` in drawing order (the order of the image's
instance annotations) and the background's is ``K + 1``. Segments come from rasterizing the
instance polygons with pycocotools in drawing order, a later object taking the pixels it
shares with an earlier one, so that segments never overlap; their ``area`` / ``bbox`` are those
pixels' count and tight box (a few pixels off the instance annotation's, which count the
rendered pixels).

``register_shapes_panoptic`` registers ``shapes_panoptic_train`` / ``shapes_panoptic_val`` like
detectron2's ``register_coco_panoptic`` ("standard" version: one contiguous id space, things
then stuff), generating both the shapes split and its panoptic files on first load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ...utils.file_io import atomic_write, atomic_write_json
from ...utils.panoptic_ids import id2rgb
from ._generation import exclusive_lock, manifest_matches, registration_splits
from .shapes import SHAPES_CATEGORIES, default_shapes_root, generate_shapes_dataset

__all__ = [
    "SHAPES_PANOPTIC_CATEGORIES",
    "SHAPES_PANOPTIC_DATASET_NAMES",
    "generate_shapes_panoptic",
    "register_shapes_panoptic",
]

BACKGROUND_CATEGORY_ID = 20
# Things: the shapes' categories; stuff: the background. Colours for detectron2's Visualizer.
_THING_COLORS = ([220, 20, 60], [0, 130, 200], [60, 180, 75])
SHAPES_PANOPTIC_CATEGORIES: tuple[dict[str, Any], ...] = (
    *(
        {**category, "isthing": 1, "color": color}
        for category, color in zip(SHAPES_CATEGORIES, _THING_COLORS, strict=True)
    ),
    {
        "id": BACKGROUND_CATEGORY_ID,
        "name": "background",
        "supercategory": "background",
        "isthing": 0,
        "color": [128, 128, 128],
    },
)
SHAPES_PANOPTIC_DATASET_NAMES = ("shapes_panoptic_train", "shapes_panoptic_val")

# Bump when the panoptic files change, so stale ones on disk are regenerated.
_PANOPTIC_VERSION = 1
_PNG_NAME = re.compile(r"^\d{6}\.png$")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _segment_map(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Segment ids int32 [H, W]: annotation ``k`` (drawing order) paints id ``k + 1`` over the
    earlier ones, the pixels no polygon covers get ``len(annotations) + 1``."""
    segment_ids = np.full((height, width), len(annotations) + 1, dtype=np.int32)
    for index, annotation in enumerate(annotations):
        segmentation = annotation["segmentation"]
        if not isinstance(segmentation, list):
            raise ValueError(
                f"shapes_panoptic: annotation {annotation['id']} has an RLE segmentation; "
                "expected polygons (a shapes dataset of generator version >= 3)"
            )
        rles = mask_util.frPyObjects(segmentation, height, width)
        mask = mask_util.decode(mask_util.merge(rles)).astype(bool)
        segment_ids[mask] = index + 1
    return segment_ids


def _segment_info(mask: np.ndarray, segment_id: int, category_id: int) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": segment_id,
        "category_id": category_id,
        "iscrowd": 0,
        "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
        "area": int(mask.sum()),
    }


def _write_png(path: str, segment_ids: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(id2rgb(segment_ids)).save(buffer, format="PNG")
    atomic_write(path, lambda file: file.write(buffer.getvalue()))


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def generate_shapes_panoptic(root: str | os.PathLike, split: str) -> str:
    """Write the panoptic files of a shapes ``split`` from its instances json.

    ``annotations/instances_{split}.json`` must exist (:func:`.generate_shapes_dataset` first).
    Idempotent: when the manifest of a previous run matches this instances json and all PNGs
    are present, nothing is written; after any change of the instances json the split is
    regenerated.

    Returns:
        the path of ``annotations/panoptic_{split}.json``.

    Raises:
        ValueError: ``split`` is not a plain name.
        FileNotFoundError: no instances json for ``split``.
    """
    if not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise ValueError(f"shapes_panoptic: split must be a plain name like 'train', got {split!r}")
    root = os.fspath(root)
    annotation_dir = os.path.join(root, "annotations")
    instances_json = os.path.join(annotation_dir, f"instances_{split}.json")
    if not os.path.isfile(instances_json):
        raise FileNotFoundError(
            f"generate_shapes_panoptic: expected the instances json {instances_json!r} of split "
            f"{split!r}; generate it first with generate_shapes_dataset"
        )
    panoptic_json = os.path.join(annotation_dir, f"panoptic_{split}.json")
    panoptic_root = os.path.join(root, f"panoptic_{split}")
    manifest_path = os.path.join(annotation_dir, f"manifest_panoptic_{split}.json")
    os.makedirs(panoptic_root, exist_ok=True)
    with exclusive_lock(os.path.join(annotation_dir, f".lock_panoptic_{split}")):
        manifest = {
            "panoptic_version": _PANOPTIC_VERSION,
            "split": split,
            "instances_sha256": _file_sha256(instances_json),
        }
        with open(instances_json) as f:
            instances = json.load(f)
        expected = {f"{i:06d}.png" for i in range(len(instances["images"]))}
        if (
            os.path.isfile(panoptic_json)
            and manifest_matches(manifest_path, manifest)
            and expected <= set(os.listdir(panoptic_root))
        ):
            return panoptic_json
        # Invalidate first, so an interrupted run can never look complete.
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        for name in os.listdir(panoptic_root):
            if _PNG_NAME.match(name):
                os.remove(os.path.join(panoptic_root, name))

        by_image: dict[int, list[dict]] = {image["id"]: [] for image in instances["images"]}
        for annotation in sorted(instances["annotations"], key=lambda a: a["id"]):
            by_image[annotation["image_id"]].append(annotation)
        panoptic_annotations = []
        for image in instances["images"]:
            annotations = by_image[image["id"]]
            segment_ids = _segment_map(annotations, image["height"], image["width"])
            category_ids = [a["category_id"] for a in annotations] + [BACKGROUND_CATEGORY_ID]
            segments_info = []
            for index, category_id in enumerate(category_ids):
                mask = segment_ids == index + 1
                if mask.any():
                    segments_info.append(_segment_info(mask, index + 1, category_id))
            file_name = os.path.splitext(image["file_name"])[0] + ".png"
            _write_png(os.path.join(panoptic_root, file_name), segment_ids)
            panoptic_annotations.append(
                {"image_id": image["id"], "file_name": file_name, "segments_info": segments_info}
            )
        atomic_write_json(
            panoptic_json,
            {
                "info": {"description": f"detr_ext shapes panoptic ({split})", "version": "1"},
                "images": instances["images"],
                "annotations": panoptic_annotations,
                "categories": [dict(c) for c in SHAPES_PANOPTIC_CATEGORIES],
            },
        )
        atomic_write_json(manifest_path, manifest)
    return panoptic_json


def _panoptic_metadata() -> dict[str, Any]:
    """detectron2's "standard" panoptic metadata: one contiguous id space, things first.

    ``thing_classes`` lists the things only (as ``thing_dataset_id_to_contiguous_id`` does),
    so that ``COCOEvaluator`` can score the things' boxes and masks on the same dataset name
    (its per-category table needs one name per instance category)."""
    things = [c for c in SHAPES_PANOPTIC_CATEGORIES if c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_classes": [c["name"] for c in SHAPES_PANOPTIC_CATEGORIES],
        "stuff_colors": [c["color"] for c in SHAPES_PANOPTIC_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(SHAPES_PANOPTIC_CATEGORIES)
        },
    }


def register_shapes_panoptic(
    root: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    *,
    replace: bool = False,
) -> tuple[str, str]:
    """Register ``shapes_panoptic_train`` / ``shapes_panoptic_val`` with detectron2.

    Cheap: nothing is generated here. The registered loader generates the shapes split (the
    same files as :func:`.register_shapes` with these arguments) and its panoptic files on first
    use, then reads them with detectron2's ``load_coco_panoptic_json``: dicts with
    ``file_name`` (the .jpg), ``image_id``, ``height``, ``width``, ``pan_seg_file_name`` and
    ``segments_info`` whose ``category_id`` is contiguous (circle 0, square 1, triangle 2,
    background 3) with ``isthing``.

    Metadata as detectron2's ``register_coco_panoptic``: ``stuff_classes`` (all 4 names),
    ``thing_classes`` (the 3 things), their colours, ``thing_dataset_id_to_contiguous_id``
    ``{3: 0, 7: 1, 11: 2}``, ``stuff_dataset_id_to_contiguous_id`` ``{3: 0, 7: 1, 11: 2,
    20: 3}``, ``panoptic_root``, ``panoptic_json``, ``image_root``, ``json_file`` (the instances
    json, for ``COCOEvaluator``), ``evaluator_type="coco_panoptic_seg"``, ``ignore_label=255``,
    ``label_divisor=1000``.

    Args:
        root: dataset directory; default ``$DETR_EXT_DATASETS/shapes`` (shared with
            ``shapes_train`` / ``shapes_val``).
        num_train, num_val, seed: as in :func:`.register_shapes`.
        replace: re-register a name already registered with other parameters instead of
            raising. Registering again with the same parameters is always a no-op.

    Returns:
        the registered names, ``("shapes_panoptic_train", "shapes_panoptic_val")``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    root, splits = registration_splits(
        "register_shapes_panoptic", root, default_shapes_root(), num_train, num_val
    )
    metadata = _panoptic_metadata()

    for name, (split, num_images) in zip(
        SHAPES_PANOPTIC_DATASET_NAMES, splits.items(), strict=True
    ):
        params = {"root": root, "split": split, "num_images": num_images, "seed": seed}
        if name in DatasetCatalog.list():
            existing = MetadataCatalog.get(name).get("shapes_params")
            if existing == params:
                continue
            if not replace:
                raise ValueError(
                    f"register_shapes_panoptic: dataset {name!r} is already registered with "
                    f"{existing}, got {params}; pass replace=True to re-register it"
                )
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        image_root = os.path.join(root, split)
        panoptic_root = os.path.join(root, f"panoptic_{split}")

        # Default arguments bind this iteration's values (a plain closure would see the last).
        def load(split=split, num_images=num_images, image_root=image_root) -> list[dict]:
            generate_shapes_dataset(root, split, num_images, seed)
            panoptic_json = generate_shapes_panoptic(root, split)
            panoptic_root = os.path.join(root, f"panoptic_{split}")
            dicts = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
            with open(panoptic_json) as f:
                sizes = {i["id"]: (i["height"], i["width"]) for i in json.load(f)["images"]}
            for record in dicts:
                record["height"], record["width"] = sizes[record["image_id"]]
            return dicts

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            panoptic_root=panoptic_root,
            image_root=image_root,
            panoptic_json=os.path.join(root, "annotations", f"panoptic_{split}.json"),
            json_file=os.path.join(root, "annotations", f"instances_{split}.json"),
            evaluator_type="coco_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            shapes_params=params,
            **metadata,
        )
    return SHAPES_PANOPTIC_DATASET_NAMES
