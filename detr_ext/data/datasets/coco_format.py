"""Register a user's own COCO-format detection dataset, with early, readable validation."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from ...utils.file_io import atomic_write_json
from ..coco_validation import check_coco_instances

__all__ = [
    "coco_format_cache_directory",
    "image_files_not_required",
    "register_coco_format_dataset",
    "registration_warnings",
]

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = ("images", "annotations", "categories")
# Part of the cached copy's name: bump when the cleaning changes, so old copies are not reused.
_CLEANING_VERSION = 2
# The warnings of each registration in this process. A config registers its datasets when it
# is loaded, before a tool's logging writes to the run's log.txt; setup() logs them again.
_WARNINGS: dict[str, list[str]] = {}
# Set by image_files_not_required(): registrations inside it keep missing image files.
_IMAGE_FILES_REQUIRED = contextvars.ContextVar("detr_ext_image_files_required", default=True)


@contextlib.contextmanager
def image_files_not_required() -> Iterator[None]:
    """Within this block, ``register_coco_format_dataset`` registers a json whose image files
    are missing under ``image_root`` instead of refusing it, as ``require_image_files=False``
    does. For a tool that loads a config (which registers its datasets) to list the missing
    files with the other image problems (``tools/check_dataset.py --config-file``)."""
    token = _IMAGE_FILES_REQUIRED.set(False)
    try:
        yield
    finally:
        _IMAGE_FILES_REQUIRED.reset(token)


def registration_warnings() -> dict[str, list[str]]:
    """``{dataset name: [warning, ...]}`` of the registrations in this process that warned
    (cleaned annotations, filled fields, the cleaned copy), in order."""
    return {name: list(messages) for name, messages in _WARNINGS.items() if messages}


def coco_format_cache_directory() -> str:
    """Where cleaned copies of registered jsons are written: ``$DETR_EXT_CACHE/datasets``, with
    ``DETR_EXT_CACHE`` defaulting to ``$XDG_CACHE_HOME/detr_ext`` (``~/.cache/detr_ext``)."""
    root = os.environ.get("DETR_EXT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "detr_ext"
    )
    return os.path.join(root, "datasets")


def _file_signature(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _write_cleaned_copy(name: str, source_digest: str, content: dict[str, Any]) -> str:
    """Write ``content`` to ``<cache>/<name>-<digest>.json`` unless it is already there.

    The name depends only on the source file's bytes and the cleaning version, so a source that
    did not change reuses its copy. Written to a temporary file and renamed, so concurrent
    registrations (distributed ranks) and interrupted ones never leave a partial file."""
    directory = coco_format_cache_directory()
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    path = os.path.join(directory, f"{safe_name}-{source_digest[:16]}.json")
    if os.path.isfile(path):
        return path
    os.makedirs(directory, exist_ok=True)
    atomic_write_json(path, content, separators=(",", ":"))
    return path


def register_coco_format_dataset(
    name: str,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    *,
    require_image_files: bool = True,
) -> None:
    """Register ``name`` for a COCO instances json and its image folder.

    A layer over detectron2's ``register_coco_instances`` that fails at registration, not deep
    inside a data loader or after training, when the files or the json are unusable. The json
    is read once here and checked in one pass (``detr_ext.data.coco_validation``):

    - refused with a ``ValueError`` naming the file and the offending ids / file names:
      image or category ids that are not non-negative ints (strings, negative numbers),
      duplicate image ids, image files missing under ``image_root``, annotations whose
      ``category_id`` is not in ``categories`` or whose ``iscrowd`` is not 0 / 1, malformed
      images or categories;
    - dropped with a warning counting and naming them: annotations whose ``bbox`` is missing,
      null, not 4 finite numbers or has width / height <= 0 (never reinterpreted), boxes
      entirely outside their image, exact duplicate annotations (the first is kept);
    - repaired with a warning: annotation ids that are not unique positive ints (pycocotools
      reads id 0 as "unmatched", which lowers AP) are renumbered 1..n; a missing ``area`` is
      filled from the mask or box, a missing ``iscrowd`` with 0; boxes past the image border
      are clipped;
    - warned: ``area`` inconsistent with the box, annotations of unknown images.

    When anything was dropped or repaired, the cleaned json is written to
    ``coco_format_cache_directory()`` (reused while the source file is unchanged) and registered
    as ``json_file``, so detectron2's loader and ``COCOEvaluator`` both read the cleaned data;
    ``source_json_file`` keeps the original path. ``load_coco_json`` maps category ids to
    contiguous indices and fills ``thing_classes`` when the dataset is loaded; the evaluator
    type is ``"coco"``.

    Args:
        name: dataset name for ``DatasetCatalog`` (e.g. ``"my_parts_train"``); registering the
            same name with the same files again is a no-op (the json is checked again if it
            changed on disk since).
        json_file: COCO json with ``images``, ``annotations`` and ``categories`` lists.
        image_root: directory that ``images[i]["file_name"]`` is relative to.
        metadata: extra ``MetadataCatalog`` fields (e.g. ``thing_colors``).
        require_image_files: refuse image files missing under ``image_root`` (the default);
            False registers them anyway, for ``tools/check_dataset.py`` to report them
            (as does registering inside ``image_files_not_required()``).

    Raises:
        FileNotFoundError: ``json_file`` is not a file or ``image_root`` is not a directory.
        ValueError: ``name`` is already registered for other files, or the json is not usable
            COCO instances (see above).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if not isinstance(name, str) or not name:
        raise ValueError(f"register_coco_format_dataset: expected a non-empty name, got {name!r}")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    replace = False
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name)
        source = registered.get("source_json_file", registered.get("json_file"))
        if (source, registered.get("image_root")) != (json_file, image_root):
            raise ValueError(
                f"register_coco_format_dataset: dataset {name!r} is already registered for "
                f"json_file={source!r}, image_root={registered.get('image_root')!r}; got "
                f"{json_file!r}, {image_root!r}. Choose another name or DatasetCatalog.remove() "
                "it first"
            )
        signature = registered.get("source_json_signature")
        if signature is None or signature == _file_signature(json_file):
            return  # the same registration again (a config loaded twice): nothing to do
        replace = True  # the same files, but the json changed on disk: check it again
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

    signature = _file_signature(json_file)
    with open(json_file, "rb") as f:
        raw = f.read()
    try:
        content = json.loads(raw)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8/16/32
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
    try:
        checked = check_coco_instances(
            content, json_file, image_root, require_image_files and _IMAGE_FILES_REQUIRED.get()
        )
    except ValueError as error:
        raise ValueError(f"register_coco_format_dataset({name!r}): {error}") from None
    messages = [f"{json_file}: {warning}" for warning in checked.warnings]

    registered_json = json_file
    if checked.changed:
        digest = hashlib.sha256(raw)
        digest.update(f"detr_ext-coco-cleaning-v{_CLEANING_VERSION}".encode())
        registered_json = _write_cleaned_copy(name, digest.hexdigest(), checked.content)
        messages.append(
            f"registered the cleaned copy {registered_json} of {json_file} (training and "
            "COCOEvaluator read the copy; metadata.source_json_file is the original)"
        )
    del raw, content, checked
    _WARNINGS[name] = messages
    for message in messages:
        logger.warning(f"register_coco_format_dataset({name!r}): {message}")

    if replace:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, dict(metadata or {}), registered_json, image_root)
    MetadataCatalog.get(name).set(source_json_file=json_file, source_json_signature=signature)
