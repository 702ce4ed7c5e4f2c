"""Exact polygon segmentations of the shapes dataset: they rasterize (pycocotools) to the
rendered visible pixels, circles have the right area, holes are split into hole-free pieces,
and the pixels are those of the RLE-era generator."""

import hashlib
import json
import math
import zlib

import numpy as np
import pycocotools.mask as mask_util
import pytest
import shapely
from PIL import Image, ImageDraw
from shapely.geometry import Polygon, box

from detr_ext.data.datasets import generate_shapes_dataset
from detr_ext.data.datasets.shapes import _render_image
from detr_ext.data.datasets.shapes_geometry import (
    ELLIPSE_INSET,
    circle_vertex_count,
    coco_polygons,
    ellipse_polygon,
    painted_polygon,
    split_holes,
    visible_regions,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

NUM_IMAGES = 12


def _rasterize(polygons, height, width):
    """pycocotools' mask of COCO polygons: bool [H, W]."""
    rles = mask_util.frPyObjects(polygons, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _rendered_objects(seed, split, index):
    """The image and objects (category, visible mask, colour name, region) that
    ``generate_shapes_dataset`` draws for image ``index``, rendered again."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    height, width = (int(s) for s in rng.integers(256, 384 + 1, size=2))
    return _render_image(rng, height, width)


@pytest.fixture(scope="module")
def shapes_annotations(tmp_path_factory):
    json_path = generate_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), "train", NUM_IMAGES, seed=0
    )
    with open(json_path) as f:
        return json.load(f)


def test_pixels_are_those_of_the_rle_generator():
    """sha256 of the pixels of train images 0-3 (seed 0), recorded with generator version 2:
    the polygons must not change the drawing or the random draws."""
    digest = hashlib.sha256()
    for index in range(4):
        pixels, _ = _rendered_objects(0, "train", index)
        digest.update(pixels.tobytes())
    assert digest.hexdigest() == (
        "c5736bda23dc2d58112461f2ca0dc8488634920d2540cd3ef8f8835d20980e25"
    )


def test_polygons_rasterize_to_the_visible_pixels(shapes_annotations):
    images = {image["id"]: image for image in shapes_annotations["images"]}
    by_image = {image_id: [] for image_id in images}
    for annotation in shapes_annotations["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    checked = pieces = 0
    for index, image_id in enumerate(sorted(images)):
        image = images[image_id]
        _, objects = _rendered_objects(0, "train", index)
        annotations = by_image[image_id]
        assert len(annotations) == len(objects)
        for annotation, (_, visible, _, _) in zip(annotations, objects, strict=True):
            segmentation = annotation["segmentation"]
            assert isinstance(segmentation, list) and segmentation
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in segmentation)
            mask = _rasterize(segmentation, image["height"], image["width"])
            union = shapely.union_all([Polygon(np.reshape(p, (-1, 2))) for p in segmentation])
            perimeter = union.length
            assert (mask & visible).sum() / (mask | visible).sum() > 0.85, annotation["id"]
            # pycocotools and PIL disagree on at most a fraction of the outline's pixels.
            assert (mask ^ visible).sum() <= 0.5 * perimeter + 2
            assert abs(union.area - visible.sum()) <= 0.25 * perimeter + 2
            # area and bbox still describe the rendered visible pixels.
            assert annotation["area"] == visible.sum()
            ys, xs = np.nonzero(visible)
            x0, y0 = int(xs.min()), int(ys.min())
            assert annotation["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]
            checked += 1
            pieces += len(segmentation) > 1
    assert checked >= 20 and pieces >= 1, "expected some objects cut into several polygons"


def test_a_lone_circle_has_the_area_of_its_disc():
    height, width, size = 120, 140, 41.0
    center = np.array([60.3, 55.8])
    region = painted_polygon(None, size, center, height, width)
    # Pillow truncates the box [39.8, 35.3, 80.8, 76.3] to pixels 39..80 and 35..76: a disc
    # of 42 pixels across, centred on (60, 56) in pixel-corner coordinates.
    radius = 42 / 2 - ELLIPSE_INSET
    assert region.area == pytest.approx(math.pi * radius**2, rel=1e-9)
    vertices = np.asarray(region.exterior.coords)
    distances = np.hypot(vertices[:, 0] - 60.0, vertices[:, 1] - 56.0)
    assert np.abs(distances - radius).max() < 0.05
    canvas = Image.new("L", (width, height), 0)
    r = size / 2
    ImageDraw.Draw(canvas).ellipse([*(center - r), *(center + r)], fill=1)
    pixels = np.asarray(canvas, dtype=bool)
    assert abs(region.area - pixels.sum()) < 0.05 * region.length
    rasterized = _rasterize(coco_polygons(region), height, width)
    assert (rasterized & pixels).sum() / (rasterized | pixels).sum() > 0.97


def test_ellipse_polygon_area_is_exact_and_outline_close():
    for radius in (3.0, 6.0, 50.0, 140.0):
        polygon = ellipse_polygon((0.0, 0.0), (radius, radius))
        assert polygon.area == pytest.approx(math.pi * radius**2, rel=1e-9)
        count = len(polygon.exterior.coords) - 1
        assert count == circle_vertex_count(radius) and count % 4 == 0
        vertices = np.asarray(polygon.exterior.coords)
        assert np.abs(np.hypot(*vertices.T) - radius).max() < 0.03  # the outline tolerance


def test_a_region_with_a_hole_becomes_hole_free_pieces():
    big, small = box(0, 0, 40, 30), box(10, 10, 20, 20)
    covered, on_top = visible_regions([big, small])
    assert on_top.equals(small) and len(covered.interiors) == 1
    polygons = coco_polygons(covered)
    assert len(polygons) >= 2
    pieces = [Polygon(np.reshape(p, (-1, 2))) for p in polygons]
    assert all(piece.is_valid and not piece.interiors for piece in pieces)
    assert sum(piece.area for piece in pieces) == pytest.approx(40 * 30 - 10 * 10)
    assert shapely.union_all(pieces).symmetric_difference(covered).area < 1e-6
    mask = _rasterize(polygons, 30, 40)
    assert mask.sum() == 40 * 30 - 10 * 10 and not mask[10:20, 10:20].any()


def test_a_region_cut_in_two_with_two_holes():
    """A bar drawn across a square cuts it in two; two small squares pierce one half."""
    square, bar = box(0, 0, 30, 30), box(12, -1, 16, 31)
    hole_a, hole_b = box(2, 2, 5, 5), box(6, 20, 9, 24)
    covered = visible_regions([square, bar, hole_a, hole_b])[0]
    expected_area = 30 * 30 - 4 * 30 - 3 * 3 - 3 * 4
    pieces = split_holes(covered)
    assert len(pieces) >= 3 and all(not piece.interiors for piece in pieces)
    assert sum(piece.area for piece in pieces) == pytest.approx(expected_area)
    assert shapely.union_all(pieces).symmetric_difference(covered).area < 1e-6
    assert _rasterize(coco_polygons(covered), 30, 30).sum() == expected_area


def test_painted_polygon_matches_pil_for_an_integer_square():
    """PIL fills a polygon through integer vertices including both ends of every row; in
    pixel-corner coordinates that is the polygon shifted by half a pixel and widened by half
    a pixel left and right. The pixels whose centres it covers are PIL's; pycocotools differs
    only on centres that lie on the outline (its ties)."""
    height, width = 40, 50
    outline = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
    center = np.array([20.0, 15.0])
    region = painted_polygon(outline, 10.0, center, height, width)
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in outline + center], fill=1)
    pixels = np.asarray(canvas, dtype=bool)
    assert pixels.sum() == 11 * 11  # columns 15..25 and rows 10..20, both ends included
    assert region.equals(box(15, 10.5, 26, 20.5))
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    centres = shapely.points(xs.ravel(), ys.ravel())
    assert np.array_equal(shapely.covers(region, centres).reshape(height, width), pixels)
    differ = (_rasterize(coco_polygons(region), height, width) ^ pixels).ravel()
    assert np.all(shapely.distance(region.boundary, centres[differ]) < 1e-9)
