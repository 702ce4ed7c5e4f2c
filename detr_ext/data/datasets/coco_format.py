"""Register a user's own COCO-format detection dataset, with early, readable validation."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["register_coco_format_dataset"]

_REQUIRED_KEYS = ("images", "annotations", "categories")


def register_coco_format_dataset(
    name: str,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Register ``name`` for a COCO instances json and its image folder.

    A thin layer over detectron2's ``register_coco_instances`` that fails at registration, not
    deep inside a data loader, when the files are missing or the json is not COCO instances. The
    json is parsed once here to check it; ``load_coco_json`` reads it again when the dataset is
    used, maps its category ids to contiguous indices and fills ``thing_classes``. The evaluator
    type is ``"coco"``, so ``COCOEvaluator`` works with it.

    Args:
        name: dataset name for ``DatasetCatalog`` (e.g. ``"my_parts_train"``); registering the
            same name with the same files again is a no-op.
        json_file: COCO json with ``images``, ``annotations`` and ``categories`` lists.
        image_root: directory that ``images[i]["file_name"]`` is relative to.
        metadata: extra ``MetadataCatalog`` fields (e.g. ``thing_colors``).

    Raises:
        FileNotFoundError: ``json_file`` is not a file or ``image_root`` is not a directory.
        ValueError: ``name`` is already registered for other files, or the json is not COCO instances.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if not isinstance(name, str) or not name:
        raise ValueError(f"register_coco_format_dataset: expected a non-empty name, got {name!r}")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        from detectron2.data import MetadataCatalog

        registered = MetadataCatalog.get(name)
        if (registered.get("json_file"), registered.get("image_root")) == (json_file, image_root):
            return  # the same registration again (a config loaded twice): nothing to do
        raise ValueError(
            f"register_coco_format_dataset: dataset {name!r} is already registered for "
            f"json_file={registered.get('json_file')!r}, image_root="
            f"{registered.get('image_root')!r}; got {json_file!r}, {image_root!r}. Choose "
            "another name or DatasetCatalog.remove() it first"
        )
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"register_coco_format_dataset({name!r}): expected a COCO json file, "
            f"got missing path {json_file!r}"
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"register_coco_format_dataset({name!r}): expected an image directory, "
            f"got missing path {image_root!r}"
        )

    with open(json_file) as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"register_coco_format_dataset({name!r}): {json_file} is not valid json: {error}"
            ) from error
    if not isinstance(content, dict):
        raise ValueError(
            f"register_coco_format_dataset({name!r}): expected a json object in {json_file}, "
            f"got {type(content).__name__}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in content]
    if missing:
        raise ValueError(
            f"register_coco_format_dataset({name!r}): expected keys {list(_REQUIRED_KEYS)} in "
            f"{json_file}, missing {missing} (got keys {sorted(content)})"
        )
    not_lists = [key for key in _REQUIRED_KEYS if not isinstance(content[key], list)]
    if not_lists:
        raise ValueError(
            f"register_coco_format_dataset({name!r}): expected lists for {not_lists} in "
            f"{json_file}, got {[type(content[k]).__name__ for k in not_lists]}"
        )
    if not content["categories"]:
        raise ValueError(
            f"register_coco_format_dataset({name!r}): expected at least one category in "
            f"{json_file}, got none"
        )
    register_coco_instances(name, dict(metadata or {}), json_file, image_root)
