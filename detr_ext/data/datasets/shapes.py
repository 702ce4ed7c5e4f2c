"""The bundled "shapes" detection dataset: filled circles, squares and triangles on noisy,
textured backgrounds, generated deterministically and written in COCO format.

It is small enough to generate in seconds and train a detector on a CPU, yet it keeps what makes
detection hard: objects from ~12 px to ~60% of the image, overlaps, colour clutter, and category
ids that are neither zero-based nor contiguous (so the id -> contiguous-index mapping is always
exercised). Every annotation also names its object's colour (``"color"``, one of
:data:`SHAPES_COLORS`), which the grounding variant (``shapes_grounding``) turns into phrases
such as "red circle". Its ``segmentation`` is exact: COCO polygons of the visible part of the
region PIL painted for the object (:mod:`.shapes_geometry`; several pieces when the object is
cut or pierced by those drawn over it), and ``area`` and ``bbox`` are the visible pixels'
count and tight box. Layout under ``root``::

    annotations/instances_{split}.json   COCO json (images, annotations, categories)
    annotations/manifest_{split}.json    generation parameters; present => split is complete
    {split}/000000.jpg ...               images

``generate_shapes_dataset`` writes one split (skipping the work when the manifest matches);
``register_shapes`` registers ``shapes_train`` / ``shapes_val`` with detectron2, generating the
files only when a dataset is first loaded.
"""

from __future__ import annotations

import colorsys
import math
import os
import re
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry.base import BaseGeometry

from ...utils.file_io import atomic_write_json
from ._generation import exclusive_lock, manifest_matches, registration_splits
from .shapes_geometry import coco_polygons, painted_polygon, visible_regions

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_COLORS",
    "SHAPES_DATASET_NAMES",
    "default_shapes_root",
    "generate_shapes_dataset",
    "hue_color_name",
    "register_shapes",
]

# Ids deliberately start above 0 and have gaps: models must go through the metadata mapping.
SHAPES_CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 3, "name": "circle", "supercategory": "shape"},
    {"id": 7, "name": "square", "supercategory": "shape"},
    {"id": 11, "name": "triangle", "supercategory": "shape"},
)
SHAPES_DATASET_NAMES = ("shapes_train", "shapes_val")
# Names of the hue an object is drawn with, stored as each annotation's "color": 60 degree hue
# bins centred on 0, 60, ..., 300 degrees (red at 330-30, yellow at 30-90, ...).
SHAPES_COLORS = ("red", "yellow", "green", "cyan", "blue", "purple")

# Bump when the drawing or the annotations change, so stale datasets on disk are regenerated.
# 2: annotations carry "color" (the pixels are the same as in 1).
# 3: "segmentation" is exact polygons of the visible regions instead of an RLE of the visible
#    pixels (the pixels, areas and boxes are the same as in 2).
_GENERATOR_VERSION = 3
_MIN_OBJECT_SIZE = 12
_MAX_OBJECT_FRACTION = 0.6
_MAX_OBJECTS = 6
_MIN_VISIBLE_FRACTION = 0.7
_PLACEMENT_ATTEMPTS = 30
_JPEG_QUALITY = 90
_IMAGE_NAME = re.compile(r"^\d{6}\.jpg$")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_shapes_root() -> str:
    """``$DETR_EXT_DATASETS/shapes``, with ``DETR_EXT_DATASETS`` defaulting to ``datasets``."""
    return os.path.join(os.environ.get("DETR_EXT_DATASETS", "datasets"), "shapes")


# ----------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient between two muted colours plus coarse blotches: float [H, W, 3]."""
    gray = rng.uniform(50, 205, size=(2, 1))
    colors = np.clip(gray + rng.uniform(-35, 35, size=(2, 3)), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(width, dtype=np.float32) * math.cos(angle)
    ys = np.arange(height, dtype=np.float32)[:, None] * math.sin(angle)
    ramp = xs + ys
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    ramp = ramp[..., None]
    low, high = colors.astype(np.float32)
    image = low + (high - low) * ramp

    # Low-frequency texture: a coarse random grid upsampled bilinearly.
    grid_h, grid_w = rng.integers(3, 10, size=2)
    coarse = rng.normal(128, rng.uniform(8, 28), size=(grid_h, grid_w, 3))
    coarse = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    texture = np.asarray(coarse.resize((width, height), Image.BILINEAR), dtype=np.float32)
    image += texture
    image -= 128.0
    return image


def hue_color_name(hue: float) -> str:
    """The :data:`SHAPES_COLORS` name of a hue in [0, 1] (fraction of a turn): the bin of
    60 degrees centred on 0, 60, ..., 300 degrees that holds it."""
    if not 0.0 <= hue <= 1.0:
        raise ValueError(f"hue_color_name: expected a hue in [0, 1], got {hue!r}")
    bin_width = 1.0 / len(SHAPES_COLORS)
    return SHAPES_COLORS[int((hue + bin_width / 2) // bin_width) % len(SHAPES_COLORS)]


def _object_color(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """An object's fill colour, RGB float [3] in [0, 255], and the name of its hue."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255.0, hue_color_name(hue)


def _outline(name: str, size: float, rng: np.random.Generator) -> np.ndarray | None:
    """Polygon vertices around the origin, [V, 2] as (x, y); None for a circle of diameter
    ``size``. Squares have side ``size`` and triangles side ``size``, both randomly rotated."""
    if name == "circle":
        return None
    if name == "square":
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * size / 2
    else:
        circumradius = size / math.sqrt(3)
        angles = np.deg2rad([90.0, 210.0, 330.0])
        corners = circumradius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    theta = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return corners @ rotation.T


def _shape_mask(
    outline: np.ndarray | None, size: float, center: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Rasterize one shape placed at ``center``: bool [H, W]."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if outline is None:
        radius = size / 2
        x, y = center
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1)
    else:
        draw.polygon([tuple(p) for p in (outline + center)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _place_objects(
    rng: np.random.Generator, height: int, width: int
) -> list[tuple[int, np.ndarray, np.ndarray, str, BaseGeometry]]:
    """Choose and place objects, largest first, so that every object keeps at least
    ``_MIN_VISIBLE_FRACTION`` of its pixels visible. Returns (category index, visible mask
    [H, W], colour RGB [3], colour name, visible region) in drawing order; later objects are
    drawn on top. The visible region is the shapely geometry of the visible part of the
    object's painted polygon (COCO pixel coordinates, :mod:`.shapes_geometry`)."""
    max_size = _MAX_OBJECT_FRACTION * min(height, width)
    num_objects = int(rng.integers(1, _MAX_OBJECTS + 1))
    # Log-uniform sizes give as many small objects as large ones.
    sizes = np.exp(rng.uniform(math.log(_MIN_OBJECT_SIZE), math.log(max_size), num_objects))
    placed: list[tuple[int, np.ndarray, np.ndarray, str]] = []
    visible: list[np.ndarray] = []
    regions: list[BaseGeometry] = []
    for size in sorted(sizes, reverse=True):
        category = int(rng.integers(len(SHAPES_CATEGORIES)))
        outline = _outline(SHAPES_CATEGORIES[category]["name"], size, rng)
        if outline is None:
            low, high = np.full(2, size / 2), np.array([width, height]) - size / 2
        else:
            low, high = -outline.min(axis=0), np.array([width, height]) - outline.max(axis=0)
        color, color_name = _object_color(rng)
        for _ in range(_PLACEMENT_ATTEMPTS):
            center = rng.uniform(low, np.maximum(low, high))
            mask = _shape_mask(outline, size, center, height, width)
            remaining = [v & ~mask for v in visible]
            if all(
                r.sum() >= _MIN_VISIBLE_FRACTION * full.sum()
                for r, (_, full, _, _) in zip(remaining, placed, strict=True)
            ):
                visible = [*remaining, mask]
                placed.append((category, mask, color, color_name))
                regions.append(painted_polygon(outline, size, center, height, width))
                break
    return [
        (c, v, rgb, name, region)
        for (c, _, rgb, name), v, region in zip(
            placed, visible, visible_regions(regions), strict=True
        )
    ]


def _render_image(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, str, BaseGeometry]]]:
    """One image uint8 [H, W, 3] and its objects as (category index, visible mask [H, W],
    colour name, visible region), in drawing order."""
    image = _background(rng, height, width)
    objects = _place_objects(rng, height, width)
    for _, mask, rgb, _, _ in objects:
        image[mask] = rgb
    noise = rng.standard_normal(size=image.shape, dtype=np.float32)
    noise *= rng.uniform(3, 12)
    image += noise
    pixels = np.clip(image, 0, 255, out=image).astype(np.uint8)
    return pixels, [(c, m, name, region) for c, m, _, name, region in objects]


def _annotation(
    mask: np.ndarray,
    region: BaseGeometry,
    category_index: int,
    color_name: str,
    image_id: int,
    annotation_id: int,
) -> dict[str, Any]:
    """COCO annotation of a visible object: tight [x, y, w, h] box and pixel count of its
    visible ``mask`` [H, W], polygons of its visible ``region``, and the name of the object's
    colour (an extra key that COCO tools ignore)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    polygons = coco_polygons(region)
    if not polygons:
        raise RuntimeError(
            f"shapes: annotation {annotation_id} of image {image_id} has {int(mask.sum())} "
            f"visible pixels but an empty visible region {region.wkt}"
        )
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": SHAPES_CATEGORIES[category_index]["id"],
        "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
        "area": int(mask.sum()),
        "segmentation": polygons,
        "iscrowd": 0,
        "color": color_name,
    }


# -------------------------------------------------------------------------- generation
def _validate_generation_args(split: str, num_images: int, min_size: int, max_size: int) -> None:
    if not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise ValueError(f"shapes: split must be a plain name like 'train', got {split!r}")
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"shapes: num_images must be a positive int, got {num_images!r}")
    if not 64 <= min_size <= max_size:
        raise ValueError(
            f"shapes: expected 64 <= min_size <= max_size, got min_size={min_size}, "
            f"max_size={max_size}"
        )


def _is_complete(manifest_path: str, json_path: str, image_root: str, manifest: dict) -> bool:
    if not (os.path.isfile(json_path) and manifest_matches(manifest_path, manifest)):
        return False
    expected = {f"{i:06d}.jpg" for i in range(manifest["num_images"])}
    return os.path.isdir(image_root) and expected <= set(os.listdir(image_root))


def generate_shapes_dataset(
    root: str | os.PathLike,
    split: str,
    num_images: int,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 384,
) -> str:
    """Write ``num_images`` shapes images of ``split`` under ``root`` and their COCO json.

    Deterministic: the same (split, num_images, seed, sizes) gives byte-identical files, and each
    image depends only on (seed, split, index). Idempotent: when the manifest of a previous run
    matches these parameters and its files are present, nothing is written. Image sides are drawn
    uniformly from [min_size, max_size].

    Returns:
        the path of ``annotations/instances_{split}.json``.
    """
    _validate_generation_args(split, num_images, min_size, max_size)
    root = os.fspath(root)
    image_root = os.path.join(root, split)
    annotation_dir = os.path.join(root, "annotations")
    json_path = os.path.join(annotation_dir, f"instances_{split}.json")
    manifest_path = os.path.join(annotation_dir, f"manifest_{split}.json")
    manifest = {
        "generator_version": _GENERATOR_VERSION,
        "split": split,
        "num_images": num_images,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
    }
    os.makedirs(annotation_dir, exist_ok=True)
    os.makedirs(image_root, exist_ok=True)
    with exclusive_lock(os.path.join(annotation_dir, f".lock_{split}")):
        if _is_complete(manifest_path, json_path, image_root, manifest):
            return json_path
        # Invalidate first, so an interrupted run can never look complete.
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        for name in os.listdir(image_root):
            if _IMAGE_NAME.match(name):
                os.remove(os.path.join(image_root, name))

        split_code = zlib.crc32(split.encode())
        images, annotations = [], []
        for index in range(num_images):
            rng = np.random.default_rng([seed, split_code, index])
            height, width = (int(s) for s in rng.integers(min_size, max_size + 1, size=2))
            pixels, objects = _render_image(rng, height, width)
            file_name = f"{index:06d}.jpg"
            Image.fromarray(pixels).save(os.path.join(image_root, file_name), quality=_JPEG_QUALITY)
            image_id = index + 1
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            for category_index, mask, color_name, region in objects:
                annotation_id = len(annotations) + 1
                annotations.append(
                    _annotation(mask, region, category_index, color_name, image_id, annotation_id)
                )
        atomic_write_json(
            json_path,
            {
                "info": {"description": f"detr_ext shapes ({split})", "version": "1"},
                "images": images,
                "annotations": annotations,
                "categories": [dict(c) for c in SHAPES_CATEGORIES],
            },
        )
        atomic_write_json(manifest_path, manifest)
    return json_path


# ------------------------------------------------------------------------ registration
def register_shapes(
    root: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    *,
    replace: bool = False,
) -> tuple[str, str]:
    """Register ``shapes_train`` (``num_train`` images) and ``shapes_val`` (``num_val``) with
    detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

    Cheap: nothing is generated here. The registered loader generates the split on first use
    (``DatasetCatalog.get``), then reads it with ``load_coco_json``, which maps the category ids
    3/7/11 to contiguous indices 0/1/2 (also set here as ``thing_dataset_id_to_contiguous_id``).

    Args:
        root: dataset directory; default ``$DETR_EXT_DATASETS/shapes`` (``datasets/shapes``).
        num_train, num_val: number of images per split.
        seed: generation seed; train and val differ for the same seed.
        replace: if a name is already registered with other parameters, replace it instead of
            raising. Registering again with the same parameters is always a no-op.

    Returns:
        the registered names, ``("shapes_train", "shapes_val")``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root, splits = registration_splits(
        "register_shapes", root, default_shapes_root(), num_train, num_val
    )

    for name, (split, num_images) in zip(SHAPES_DATASET_NAMES, splits.items(), strict=True):
        params = {"root": root, "split": split, "num_images": num_images, "seed": seed}
        if name in DatasetCatalog.list():
            existing = MetadataCatalog.get(name).get("shapes_params")
            if existing == params:
                continue
            if not replace:
                raise ValueError(
                    f"register_shapes: dataset {name!r} is already registered with "
                    f"{existing}, got {params}; pass replace=True to re-register it"
                )
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        json_file = os.path.join(root, "annotations", f"instances_{split}.json")
        image_root = os.path.join(root, split)

        # Default arguments bind this iteration's values (a plain closure would see the last).
        def load(name=name, split=split, num_images=num_images) -> list[dict]:
            json_file = generate_shapes_dataset(root, split, num_images, seed)
            return load_coco_json(json_file, os.path.join(root, split), dataset_name=name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            thing_classes=[c["name"] for c in SHAPES_CATEGORIES],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(SHAPES_CATEGORIES)},
            shapes_params=params,
        )
    return SHAPES_DATASET_NAMES
