"""A synthetic COCO-val-sized detection set (ground truth and results), made deterministically
from a seed, for benchmarking COCO evaluation backends (``tools/benchmark_coco_eval.py``).

The generator's choices, modelled on COCO val 2017 (5,000 images, 36,781 objects):

- **Images**: 45% 640x480 (width x height), 20% 480x640, 10% 640x427, 25% with a long side of
  640 and a short side uniform in [300, 640], either orientation. Image ids are distinct,
  sorted and non-contiguous (drawn from 1..600,000), as COCO's are.
- **Categories**: COCO's 80 ids (1..90 with COCO's gaps), named ``category_<id>``.
- **Objects per image**: 1% of the images (at least one) have none; the others draw a
  Poisson count whose mean makes the whole set average ``objects_per_image`` (7.3).
  Categories are uniform.
- **Shapes**: each object is a star-shaped polygon around its centre (6 to 12 vertices at
  jittered angles, radii 0.75..1 of the extent, aspect ratio log-uniform in [1/3, 3]),
  coordinates rounded to 0.01 pixel and kept inside the image. Its ``area`` is the polygon's
  area (shoelace formula on the stored coordinates) and ``bbox`` its tight box. The target
  area is drawn per COCO area range with COCO's split, small 41% / medium 34% / large 24%
  (log-uniform in [16, 32^2), [32^2, 96^2), [96^2, half the image)); a large object that
  does not fit its image is shrunk, so the realized split is measured, not assumed
  (:func:`describe`).
- **Crowd**: 1% of the objects (at least one), chosen at random, are crowd regions
  (``iscrowd=1``) stored as COCO stores them: uncompressed RLE (``counts`` a list) of the
  rasterized polygon, ``area`` the mask's pixel count.
- **Annotation ids** run from 1 (id 0 is a case where pycocotools is known to be wrong).
- **Detections**: exactly ``dets_per_image`` per image. Per object: 90% get a close copy
  (centre and size jittered by 5% of its size, score U(0.2, 1)), 30% a loose copy (25%,
  score U(0.05, 0.9)), 10% a copy with a wrong class (10%, score U(0, 0.8)); the rest of the
  image's budget is background false positives (new polygons, random class and area range,
  score U(0, 0.6)). If the copies exceed the budget, a random subset is kept. A copy's
  polygon is the object's polygon moved and scaled with its box, clipped to the image.
- **Result format**, as detectron2's ``instances_to_coco_json`` writes it: ``bbox`` the
  polygon's tight XYWH box, ``segmentation`` the compressed RLE of the rasterized polygon
  (pycocotools' ``frPyObjects``) with ``counts`` a str.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_util

# COCO's 80 category ids: 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83.
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
# COCOeval's area ranges (pixels^2); "large" is capped per image at LARGE_MAX_FRACTION.
AREA_RANGES = {"small": (16.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, None)}
AREA_SPLIT = (0.41, 0.34, 0.24)  # COCO val 2017's small / medium / large fractions
LARGE_MAX_FRACTION = 0.5
MIN_VERTICES, MAX_VERTICES = 6, 12
EMPTY_IMAGE_FRACTION = 0.01
CROWD_FRACTION = 0.01


@dataclass
class SyntheticCocoSet:
    """A COCO ground-truth dict (``images``, ``annotations``, ``categories``) and detection
    results for it (COCO result dicts with ``bbox`` and ``segmentation``)."""

    gt: dict
    results: list[dict]


def _image_sizes(rng: np.random.Generator, num_images: int) -> np.ndarray:
    """``[N, 2]`` (width, height) of COCO-like images."""
    kind = rng.random(num_images)
    short = rng.integers(300, 641, size=num_images)
    sizes = np.where(
        (rng.random(num_images) < 0.5)[:, None],
        np.stack([np.full(num_images, 640), short], 1),
        np.stack([short, np.full(num_images, 640)], 1),
    )
    sizes[kind < 0.75] = (640, 427)
    sizes[kind < 0.65] = (480, 640)
    sizes[kind < 0.45] = (640, 480)
    return sizes


def _shoelace(points: np.ndarray, num_vertices: np.ndarray) -> np.ndarray:
    """Areas of ``points: [M, K, 2]`` polygons whose first ``num_vertices: [M]`` vertices
    count (the rest is padding)."""
    index = np.arange(points.shape[1])[None, :]
    following = np.where(index + 1 < num_vertices[:, None], index + 1, 0)
    x, y = points[..., 0], points[..., 1]
    next_x = np.take_along_axis(x, following, 1)
    next_y = np.take_along_axis(y, following, 1)
    cross = np.where(index < num_vertices[:, None], x * next_y - next_x * y, 0.0)
    return np.abs(cross.sum(1)) / 2


def _target_areas(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """``[count]`` polygon areas, log-uniform within an area range drawn with COCO's split."""
    split = np.asarray(AREA_SPLIT) / sum(AREA_SPLIT)
    ranges = rng.choice(len(AREA_RANGES), size=count, p=split)
    areas = np.empty(count)
    for index, (low, high) in enumerate(AREA_RANGES.values()):
        chosen = ranges == index
        high = LARGE_MAX_FRACTION * width * height if high is None else high
        areas[chosen] = np.exp(rng.uniform(math.log(low), math.log(high), size=chosen.sum()))
    return areas


def _polygons(
    rng: np.random.Generator, areas: np.ndarray, width: int, height: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Random star-shaped polygons of about ``areas: [M]`` inside a ``width x height`` image.

    Returns the polygons (``[k, 2]`` arrays of (x, y), k in [6, 12]) and their areas ``[M]``
    on the rounded coordinates.
    """
    count = len(areas)
    num_vertices = rng.integers(MIN_VERTICES, MAX_VERTICES + 1, size=count)
    step = 2 * np.pi / num_vertices[:, None]
    slots = np.arange(MAX_VERTICES)[None, :]
    angles = (slots + rng.uniform(-0.35, 0.35, (count, MAX_VERTICES))) * step
    angles += rng.uniform(0, 2 * np.pi, (count, 1))
    radii = rng.uniform(0.75, 1.0, (count, MAX_VERTICES))
    valid = slots < num_vertices[:, None]
    unit = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], -1)
    # Padding repeats vertex 0 so that min/max over all slots see only real vertices.
    unit = np.where(valid[..., None], unit, unit[:, :1])

    aspect = np.exp(rng.uniform(math.log(1 / 3), math.log(3), count))  # width / height
    scale_y = np.sqrt(areas / (_shoelace(unit, num_vertices) * aspect))
    scale = np.stack([aspect * scale_y, scale_y], -1)  # [M, 2]
    low, high = unit.min(1), unit.max(1)  # [M, 2]
    extent = (high - low) * scale
    # Objects larger than the image are shrunk (keeping their aspect) to 98% of it.
    shrink = np.minimum(1.0, 0.98 * np.array([width, height]) / extent).min(1, keepdims=True)
    scale, extent = scale * shrink, extent * shrink
    offset = rng.uniform(0, 1, (count, 2)) * (np.array([width, height]) - extent) - low * scale
    points = unit * scale[:, None, :] + offset[:, None, :]
    points = np.round(np.clip(points, 0, [width, height]), 2)
    polygons = [points[i, : num_vertices[i]] for i in range(count)]
    return polygons, _shoelace(points, num_vertices)


def _moved(
    polygon: np.ndarray, rng: np.random.Generator, jitter: float, width: int, height: int
) -> np.ndarray:
    """``polygon`` with its box's centre and size jittered by ``jitter`` of its size, clipped
    to the image."""
    low, high = polygon.min(0), polygon.max(0)
    size, centre = np.maximum(high - low, 1.0), (low + high) / 2
    new_centre = np.clip(centre + rng.normal(0, jitter, 2) * size, 0, [width, height])
    new_scale = np.exp(rng.normal(0, jitter, 2))
    moved = (polygon - centre) * new_scale + new_centre
    return np.round(np.clip(moved, 0, [width, height]), 2)


def _tight_box(polygon: np.ndarray) -> list[float]:
    low, high = polygon.min(0), polygon.max(0)
    return [round(float(v), 2) for v in (*low, *(high - low))]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """``mask: [H, W]`` (0/1) as COCO's uncompressed RLE: column-major run lengths starting
    with a run of zeros, ``{"counts": [int, ...], "size": [H, W]}``."""
    flat = mask.flatten(order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": list(mask.shape)}


def _crowd_segmentation(polygon: np.ndarray, width: int, height: int) -> tuple[dict, float]:
    rle = mask_util.frPyObjects([polygon.ravel().tolist()], height, width)[0]
    return uncompressed_rle(mask_util.decode(rle)), float(mask_util.area(rle))


def generate_coco_set(
    num_images: int = 5000,
    dets_per_image: int = 100,
    seed: int = 0,
    objects_per_image: float = 7.3,
) -> SyntheticCocoSet:
    """A COCO-val-like ground truth and ``dets_per_image`` results per image (see the module
    docstring for every choice); the same arguments give the same set."""
    if num_images < 1 or dets_per_image < 1 or objects_per_image <= 0:
        raise ValueError(
            "generate_coco_set needs num_images >= 1, dets_per_image >= 1 and "
            f"objects_per_image > 0, got {num_images}, {dets_per_image}, {objects_per_image}"
        )
    rng = np.random.default_rng(seed)
    sizes = _image_sizes(rng, num_images)
    image_ids = np.sort(rng.choice(np.arange(1, 600_001), size=num_images, replace=False))
    num_empty = max(1, round(EMPTY_IMAGE_FRACTION * num_images))
    counts = rng.poisson(
        objects_per_image * num_images / max(num_images - num_empty, 1), num_images
    )
    counts[rng.choice(num_images, size=num_empty, replace=False)] = 0
    crowd = np.zeros(int(counts.sum()), dtype=bool)
    crowd[
        rng.choice(crowd.size, size=max(1, round(CROWD_FRACTION * crowd.size)), replace=False)
    ] = True
    categories = np.asarray(COCO_CATEGORY_IDS)

    images, annotations, results = [], [], []
    for image_id, (width, height), count in zip(image_ids.tolist(), sizes.tolist(), counts):
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}
        )
        polygons, areas = _polygons(rng, _target_areas(rng, count, width, height), width, height)
        classes = rng.choice(categories, size=count)
        for polygon, area, category_id in zip(polygons, areas, classes.tolist()):
            ann_id = len(annotations) + 1
            annotation = {
                "id": ann_id, "image_id": image_id, "category_id": category_id,
                "bbox": _tight_box(polygon), "area": float(area), "iscrowd": 0,
                "segmentation": [polygon.ravel().tolist()],
            }  # fmt: skip
            if crowd[ann_id - 1]:
                annotation["segmentation"], annotation["area"] = _crowd_segmentation(
                    polygon, width, height
                )
                annotation["iscrowd"] = 1
            annotations.append(annotation)
        results += _image_results(
            rng, image_id, polygons, classes, dets_per_image, width, height, categories
        )
    gt = {
        "info": {"description": f"synthetic COCO-val-like set, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c, "name": f"category_{c}", "supercategory": "synthetic"}
            for c in COCO_CATEGORY_IDS
        ],
    }
    return SyntheticCocoSet(gt, results)


def _image_results(
    rng: np.random.Generator,
    image_id: int,
    polygons: list[np.ndarray],
    classes: np.ndarray,
    budget: int,
    width: int,
    height: int,
    categories: np.ndarray,
) -> list[dict]:
    """``budget`` detections of one image: copies of its objects and background."""
    detections = []  # (polygon, category_id, score)
    for polygon, category_id in zip(polygons, classes.tolist()):
        if rng.random() < 0.9:
            moved = _moved(polygon, rng, 0.05, width, height)
            detections.append((moved, category_id, rng.uniform(0.2, 1.0)))
        if rng.random() < 0.3:
            moved = _moved(polygon, rng, 0.25, width, height)
            detections.append((moved, category_id, rng.uniform(0.05, 0.9)))
        if rng.random() < 0.1:
            wrong = int(rng.choice(categories[categories != category_id]))
            moved = _moved(polygon, rng, 0.1, width, height)
            detections.append((moved, wrong, rng.uniform(0.0, 0.8)))
    if len(detections) > budget:
        keep = rng.choice(len(detections), size=budget, replace=False)
        detections = [detections[i] for i in sorted(keep)]
    num_background = budget - len(detections)
    background, _ = _polygons(rng, _target_areas(rng, num_background, width, height), width, height)
    background_classes = rng.choice(categories, size=num_background).tolist()
    background_scores = rng.uniform(0.0, 0.6, num_background).tolist()
    detections += list(zip(background, background_classes, background_scores))

    rles = mask_util.frPyObjects(
        [polygon.ravel().tolist() for polygon, _, _ in detections], height, width
    )
    results = []
    for (polygon, category_id, score), rle in zip(detections, rles):
        results.append(
            {
                "image_id": image_id,
                "category_id": int(category_id),
                "bbox": _tight_box(polygon),
                "score": round(float(score), 5),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("utf-8")},
            }
        )
    return results


def describe(gt: dict) -> dict:
    """Counts of a COCO ground truth: images, objects, images without objects, crowd regions,
    categories, and the fraction of objects per COCO area range (by ``area``)."""
    annotations = gt["annotations"]
    areas = np.array([a["area"] for a in annotations], dtype=np.float64)
    with_objects = {a["image_id"] for a in annotations}
    bounds = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, np.inf)}
    return {
        "images": len(gt["images"]),
        "objects": len(annotations),
        "objects_per_image": len(annotations) / max(len(gt["images"]), 1),
        "images_without_objects": sum(1 for i in gt["images"] if i["id"] not in with_objects),
        "crowd": sum(a["iscrowd"] for a in annotations),
        "categories": len(gt["categories"]),
        "area_fractions": {
            name: float(((areas >= low) & (areas < high)).mean()) if len(areas) else 0.0
            for name, (low, high) in bounds.items()
        },
    }
