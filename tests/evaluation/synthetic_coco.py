"""Small synthetic COCO ground truth and results for the evaluation tests: boxes and polygons in
every area range, crowd regions (polygon and RLE), wrong classes, duplicates, background
detections, and masks as detectron2's ``instances_to_coco_json`` writes them (RLE, ``counts``
as str)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

IMAGE_HEIGHT, IMAGE_WIDTH = 240, 320
# Side lengths (pixels) per COCO area range: small < 32^2 <= medium < 96^2 <= large.
SIDES = {"small": (8, 28), "medium": (36, 90), "large": (100, 160)}


@dataclass
class SyntheticCoco:
    """A COCO ground-truth dict and results for it, plus how to evaluate them."""

    gt: dict
    results: list[dict]
    iou_type: str = "bbox"
    img_ids: list[int] | None = None
    max_dets: list[int] | None = None
    notes: dict = field(default_factory=dict)

    def write_gt(self, path: Path) -> str:
        path.write_text(json.dumps(self.gt))
        return str(path)


def _polygon(box: list[float], rng: np.random.Generator) -> list[float]:
    """An octagon inscribed in ``box`` (XYWH) with corners cut at random depths: a mask that
    is not its box, so segm and bbox IoU differ."""
    x, y, w, h = box
    cx, cy = rng.uniform(0.15, 0.35, size=2)
    cut_x, cut_y = cx * w, cy * h
    return [
        x + cut_x, y, x + w - cut_x, y, x + w, y + cut_y, x + w, y + h - cut_y,
        x + w - cut_x, y + h, x + cut_x, y + h, x, y + h - cut_y, x, y + cut_y,
    ]  # fmt: skip


def _mask_area(polygon: list[float]) -> float:
    rle = mask_util.merge(mask_util.frPyObjects([polygon], IMAGE_HEIGHT, IMAGE_WIDTH))
    return float(mask_util.area(rle))


def _rle_result(polygon: list[float]) -> dict:
    """The polygon's mask as detectron2 writes a predicted mask: compressed RLE, str counts."""
    mask = mask_util.decode(mask_util.frPyObjects([polygon], IMAGE_HEIGHT, IMAGE_WIDTH))
    mask = np.asfortranarray(mask.max(axis=2).astype(np.uint8))
    rle = mask_util.encode(mask[:, :, None])[0]
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def _uncompressed_rle(box: list[float]) -> dict:
    """``box``'s mask as uncompressed RLE (``counts`` a list), as COCO stores crowd regions."""
    x, y, w, h = (int(round(v)) for v in box)
    mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0] == 1:  # RLE counts start with a run of zeros
        counts = [0, *counts]
    return {"counts": counts, "size": [IMAGE_HEIGHT, IMAGE_WIDTH]}


def _random_box(rng: np.random.Generator, area: str) -> list[float]:
    low, high = SIDES[area]
    w, h = rng.uniform(low, high, size=2)
    x = rng.uniform(0, IMAGE_WIDTH - w)
    y = rng.uniform(0, IMAGE_HEIGHT - h)
    return [float(x), float(y), float(w), float(h)]


def _jitter(box: list[float], rng: np.random.Generator, scale: float) -> list[float]:
    x, y, w, h = box
    dx, dy = rng.normal(0, scale, size=2) * np.array([w, h])
    dw, dh = np.exp(rng.normal(0, scale, size=2))
    nw, nh = min(w * dw, IMAGE_WIDTH - 1), min(h * dh, IMAGE_HEIGHT - 1)
    nx = float(np.clip(x + dx, 0, IMAGE_WIDTH - nw))
    ny = float(np.clip(y + dy, 0, IMAGE_HEIGHT - nh))
    return [nx, ny, float(nw), float(nh)]


def inside(inner: list[float], outer: list[float]) -> bool:
    """Whether XYWH ``inner`` lies within XYWH ``outer``."""
    return (
        inner[0] >= outer[0]
        and inner[1] >= outer[1]
        and inner[0] + inner[2] <= outer[0] + outer[2]
        and inner[1] + inner[3] <= outer[1] + outer[3]
    )


class Builder:
    """Accumulates images, annotations and results with ids that start at ``first_ann_id``."""

    def __init__(self, cat_ids: list[int], seed: int, first_ann_id: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.cat_ids = list(cat_ids)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.results: list[dict] = []
        self.next_ann_id = first_ann_id

    def image(self) -> int:
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": IMAGE_HEIGHT,
             "width": IMAGE_WIDTH}
        )  # fmt: skip
        return image_id

    def object(
        self,
        image_id: int,
        category_id: int,
        area: str,
        iscrowd: int = 0,
        crowd_rle: bool = False,
        box: list[float] | None = None,
    ) -> dict:
        """An annotation in ``area`` (or with ``box``, XYWH) whose polygon or RLE mask lies in
        its box."""
        box = _random_box(self.rng, area) if box is None else box
        if crowd_rle:
            segmentation = _uncompressed_rle(box)
            mask_area = float(
                mask_util.area(mask_util.frPyObjects(segmentation, *segmentation["size"]))
            )
        else:
            segmentation = [_polygon(box, self.rng)]
            mask_area = _mask_area(segmentation[0])
        ann = {
            "id": self.next_ann_id, "image_id": image_id, "category_id": category_id,
            "bbox": box, "area": mask_area, "iscrowd": iscrowd, "segmentation": segmentation,
        }  # fmt: skip
        self.next_ann_id += 1
        self.annotations.append(ann)
        return ann

    def detection(
        self, image_id: int, category_id: int, box: list[float], score: float | None = None
    ) -> dict:
        result = {
            "image_id": image_id,
            "category_id": category_id,
            "bbox": box,
            "score": float(self.rng.uniform(0.05, 1.0) if score is None else score),
            "segmentation": _rle_result(_polygon(box, self.rng)),
        }
        self.results.append(result)
        return result

    def detect(self, ann: dict, jitter: float = 0.08, category_id: int | None = None) -> dict:
        """A detection near ``ann`` (of ``category_id``, default its own class)."""
        box = _jitter(ann["bbox"], self.rng, jitter)
        category_id = ann["category_id"] if category_id is None else category_id
        return self.detection(ann["image_id"], category_id, box)

    def background(
        self, image_id: int, area: str = "medium", category_id: int | None = None
    ) -> dict:
        if category_id is None:
            category_id = int(self.rng.choice(self.cat_ids))
        return self.detection(image_id, category_id, _random_box(self.rng, area))

    def populated_image(
        self, num_objects: int = 4, detect: bool = True, cat_ids: list[int] | None = None
    ) -> int:
        """An image with objects of random class (of ``cat_ids``, default all) and area and, if
        ``detect``, a mix of good, loose, duplicate, wrongly classified and background
        detections."""
        image_id = self.image()
        for _ in range(num_objects):
            area = str(self.rng.choice(list(SIDES)))
            ann = self.object(image_id, int(self.rng.choice(cat_ids or self.cat_ids)), area)
            if not detect:
                continue
            roll = self.rng.uniform()
            if roll < 0.6:
                self.detect(ann)
            elif roll < 0.75:
                self.detect(ann, jitter=0.3)
            elif roll < 0.85:
                self.detect(ann)
                self.detect(ann, jitter=0.05)  # duplicate
            elif roll < 0.95:
                others = [c for c in self.cat_ids if c != ann["category_id"]]
                self.detect(ann, category_id=int(self.rng.choice(others)))
            # else: missed
        if detect:
            self.background(image_id)
        return image_id

    def gt(self, cat_ids: list[int] | None = None) -> dict:
        cats = [{"id": c, "name": f"class_{c}"} for c in (cat_ids or self.cat_ids)]
        return {"images": self.images, "annotations": self.annotations, "categories": cats}


def _count(items, predicate) -> int:
    return sum(1 for item in items if predicate(item))


def on_crowd(result: dict, annotations: list[dict]) -> bool:
    """Whether ``result`` lies within a crowd region of its image and class."""
    key = (result["image_id"], result["category_id"])
    return any(
        a["iscrowd"]
        and (a["image_id"], a["category_id"]) == key
        and inside(result["bbox"], a["bbox"])
        for a in annotations
    )


def crowd_regions(seed: int = 0) -> SyntheticCoco:
    """Crowd regions (``iscrowd=1``, class 1) with several detections of class 1 inside them,
    on images whose other objects are of classes 2 and 3 (so those detections can only match
    the crowd)."""
    b = Builder([1, 2, 3], seed)
    for _ in range(3):
        b.populated_image()
    for _ in range(3):
        image_id = b.populated_image(num_objects=2, cat_ids=[2, 3])
        crowd = b.object(image_id, 1, "large", iscrowd=1)
        for _ in range(4):
            x, y, w, h = crowd["bbox"]
            sw, sh = b.rng.uniform(0.2, 0.4, size=2) * [w, h]
            box = [x + b.rng.uniform(0, w - sw), y + b.rng.uniform(0, h - sh), sw, sh]
            b.detection(image_id, 1, [float(v) for v in box])
    crowds = [a for a in b.annotations if a["iscrowd"]]
    hits = _count(b.results, lambda r: on_crowd(r, crowds))
    assert len(crowds) == 3 and hits >= 12, (len(crowds), hits)
    return SyntheticCoco(b.gt(), b.results, notes={"detections_on_crowds": hits})


def empty_images(seed: int = 1) -> SyntheticCoco:
    """Images with ground truth but no detections, and images without ground truth but with
    detections (false positives only)."""
    b = Builder([1, 2, 3], seed)
    for _ in range(3):
        b.populated_image()
    for _ in range(2):
        b.populated_image(detect=False)
    for _ in range(2):
        image_id = b.image()
        for _ in range(3):
            b.background(image_id, area=str(b.rng.choice(list(SIDES))))
    gt_images = {a["image_id"] for a in b.annotations}
    dt_images = {r["image_id"] for r in b.results}
    all_images = {i["id"] for i in b.images}
    assert len(gt_images - dt_images) == 2 and len(dt_images - gt_images) == 2
    assert gt_images | dt_images == all_images
    return SyntheticCoco(b.gt(), b.results)


def many_detections(max_dets: list[int] | None = None, seed: int = 2) -> SyntheticCoco:
    """150 detections of one class on some images, more than maxDets=100 (COCO caps the
    detections per image and class): objects found only by detections that score below 100
    others count with maxDets 300, not 100."""
    b = Builder([1, 2], seed)
    for _ in range(2):
        b.populated_image()
    for _ in range(3):
        image_id = b.image()
        for _ in range(2):  # found only at a low score
            ann = b.object(image_id, 1, "large")
            b.detection(image_id, 1, ann["bbox"], score=0.01)
        for _ in range(4):
            b.detect(b.object(image_id, int(b.rng.choice(b.cat_ids)), "medium"))
        while (
            _count(b.results, lambda r, i=image_id: (r["image_id"], r["category_id"]) == (i, 1))
            < 150
        ):
            b.background(image_id, area=str(b.rng.choice(list(SIDES))), category_id=1)
    per_image = np.bincount([r["image_id"] for r in b.results if r["category_id"] == 1])
    assert (per_image == 150).sum() == 3, per_image
    return SyntheticCoco(b.gt(), b.results, max_dets=max_dets)


def area_ranges(seed: int = 3) -> SyntheticCoco:
    """Objects and detections in each of small, medium and large."""
    b = Builder([1, 2, 3], seed)
    for area in SIDES:
        for _ in range(2):
            image_id = b.image()
            for _ in range(3):
                ann = b.object(image_id, int(b.rng.choice(b.cat_ids)), area)
                b.detect(ann, jitter=float(b.rng.uniform(0.02, 0.25)))
            b.background(image_id, area=area)
    gt_areas = [a["area"] for a in b.annotations]
    for low, high in [(0, 32**2), (32**2, 96**2), (96**2, 1e10)]:
        assert _count(gt_areas, lambda a, lo=low, hi=high: lo <= a < hi) >= 4
        assert _count(
            b.results, lambda r, lo=low, hi=high: lo <= r["bbox"][2] * r["bbox"][3] < hi
        ) >= 4  # fmt: skip
    return SyntheticCoco(b.gt(), b.results)


def masks(iou_type: str, seed: int = 4) -> SyntheticCoco:
    """Polygon ground truth, crowd regions given as polygon and as uncompressed RLE, and
    results with an RLE mask (``counts`` a str) and a box each, as detectron2 writes them."""
    b = Builder([1, 2, 3], seed)
    for _ in range(4):
        b.populated_image()
    image_id = b.populated_image(num_objects=2)
    crowd = b.object(image_id, 2, "large", iscrowd=1, crowd_rle=True)
    b.detect(crowd, jitter=0.02)
    image_id = b.populated_image(num_objects=2)
    crowd = b.object(image_id, 3, "large", iscrowd=1)
    b.detect(crowd, jitter=0.02)
    # Detections whose box is medium (34 x 34 > 32^2) and mask small: segm's area ranges must
    # use the mask's area, which needs "bbox" out of the results (as detectron2 does).
    image_id = b.image()
    for i in range(8):
        box = [4.0 + 39 * i, 100.0, 34.0, 34.0]
        b.detection(image_id, 1, box)
        b.object(image_id, 1, "medium", box=box)
    straddling = _count(
        b.results,
        lambda r: r["bbox"][2] * r["bbox"][3] >= 32**2 > mask_util.area(r["segmentation"]),
    )
    assert straddling >= 2, straddling
    segmentations = [a["segmentation"] for a in b.annotations]
    assert _count(segmentations, lambda s: isinstance(s, dict)) == 1
    assert _count(segmentations, lambda s: isinstance(s, list)) == len(segmentations) - 1
    assert all(isinstance(r["segmentation"]["counts"], str) for r in b.results)
    return SyntheticCoco(b.gt(), b.results, iou_type=iou_type)


def sparse_category_ids(seed: int = 5) -> SyntheticCoco:
    """Category ids 3, 7, 11, 90; 11 has no ground truth (but detections), 42 has neither."""
    b = Builder([3, 7, 90], seed)
    for _ in range(5):
        b.populated_image()
    for image_id in (1, 3):
        b.detection(image_id, 11, _random_box(b.rng, "medium"))
    gt = b.gt(cat_ids=[3, 7, 11, 42, 90])
    gt_cats = {a["category_id"] for a in b.annotations}
    assert gt_cats == {3, 7, 90} and _count(b.results, lambda r: r["category_id"] == 11) == 2
    return SyntheticCoco(gt, b.results)


def image_subset(seed: int = 6) -> SyntheticCoco:
    """``img_ids`` names 4 of 8 images; the others hold detections that would change AP."""
    b = Builder([1, 2, 3], seed)
    for _ in range(8):
        b.populated_image()
    for image_id in (2, 4, 6, 8):  # unevaluated images: only background detections
        for _ in range(5):
            b.background(image_id)
    img_ids = [1, 3, 5, 7]
    assert _count(b.results, lambda r: r["image_id"] not in img_ids) >= 20
    assert _count(b.annotations, lambda a: a["image_id"] not in img_ids) >= 8
    return SyntheticCoco(b.gt(), b.results, img_ids=img_ids)


def perfect_detector(
    first_ann_id: int, areas: tuple[str, ...] = tuple(SIDES), seed: int = 7
) -> SyntheticCoco:
    """Results equal to the ground-truth boxes with score 1; annotation ids from
    ``first_ann_id``; objects in ``areas`` only."""
    b = Builder([1, 2], seed, first_ann_id=first_ann_id)
    for _ in range(4):
        image_id = b.image()
        for _ in range(3):
            b.object(image_id, int(b.rng.choice(b.cat_ids)), str(b.rng.choice(list(areas))))
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "score": 1.0}
        for a in b.annotations
    ]  # fmt: skip
    assert min(a["id"] for a in b.annotations) == first_ann_id
    return SyntheticCoco(b.gt(), results)
