"""Polygons of the shapes dataset's objects: the region PIL paints for each one, the part of it
left visible by the objects drawn later, and that part as COCO polygons.

Coordinates are COCO's: pixel ``(i, j)`` (row ``i``, column ``j``) covers ``[j, j + 1) x
[i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)``; pycocotools' ``frPyObjects`` marks a
pixel when its centre lies inside the polygon. PIL's drawing coordinates put pixel centres at
integers instead, and (Pillow 13) truncate every coordinate to an integer before drawing. So:

- a polygon (square, triangle) drawn through vertices ``v`` covers the pixels of the polygon
  through ``trunc(v) + 0.5``, widened by half a pixel to the left and right: PIL fills each
  pixel row whose centre lies within the polygon's vertical extent, rounding the row's
  crossings outwards to the nearest pixel centre. Its region is the Minkowski sum of that
  polygon and the segment ``[-0.5, 0.5] x {0}``;
- an ellipse drawn in the box ``[x0, y0, x1, y1]`` covers pixels of columns ``trunc(x0)`` to
  ``trunc(x1)`` and rows ``trunc(y0)`` to ``trunc(y1)``, both inclusive: about the ellipse
  inscribed in those pixels. Pillow keeps on each row the pixel nearest the curve, which comes
  out a little inside; :data:`ELLIPSE_INSET` is that margin, fitted to Pillow's output.

These models hold except along the outline: pycocotools' rasterization of the polygons differs
from PIL's masks by about 1% of an object's pixels (pixel centres exactly on the outline, which
the two break differently; the one-pixel outline PIL also draws along almost horizontal edges;
pycocotools' own 1/5-pixel quantization of the vertices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPoint, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import split

__all__ = [
    "ELLIPSE_INSET",
    "circle_vertex_count",
    "coco_polygons",
    "ellipse_polygon",
    "painted_polygon",
    "split_holes",
    "visible_regions",
]

# How far inside the ellipse inscribed in its pixel box Pillow's ellipse ends (pixels), fitted
# to Pillow 13: it minimizes the pixels where pycocotools' mask and PIL's differ.
ELLIPSE_INSET = 0.05
# Largest distance between a circle and its regular polygon (pixels): the polygon's area is
# exact (see ellipse_polygon), its outline within this of the circle's.
_CIRCLE_TOLERANCE = 0.02
# Pieces thinner than this (pixels^2 of area) are numerical slivers of a difference, not
# regions: pycocotools cannot rasterize a polygon of fewer than 3 vertices anyway.
_MIN_PIECE_AREA = 1e-3


def circle_vertex_count(radius: float, tolerance: float = _CIRCLE_TOLERANCE) -> int:
    """Vertices of a regular polygon whose outline stays within ``tolerance`` px of a circle
    of ``radius`` px: the sagitta ``r (1 - cos(pi / n)) ~ r pi^2 / (2 n^2)``. A multiple of 4
    (symmetric under the flips and quarter turns of augmentation), at least 16."""
    if radius <= 0 or tolerance <= 0:
        raise ValueError(
            f"circle_vertex_count: expected radius > 0 and tolerance > 0, got radius={radius}, "
            f"tolerance={tolerance}"
        )
    count = math.pi / math.sqrt(2.0 * tolerance / radius)
    return max(16, 4 * math.ceil(count / 4))


def ellipse_polygon(center: Sequence[float], semi_axes: Sequence[float]) -> Polygon:
    """An axis-aligned ellipse as a regular polygon (:func:`circle_vertex_count` vertices for
    its larger semi-axis) with the ellipse's exact area: the vertices lie slightly outside the
    curve and the edges' midpoints slightly inside.

    Args:
        center: ``(cx, cy)``; semi_axes: ``(a, b)``, both in pixels.
    """
    a, b = (float(s) for s in semi_axes)
    if a <= 0 or b <= 0:
        raise ValueError(f"ellipse_polygon: expected positive semi-axes, got {tuple(semi_axes)}")
    count = circle_vertex_count(max(a, b))
    # A regular n-gon of circumradius r has area (n / 2) r^2 sin(2 pi / n); scale it to pi r^2.
    scale = math.sqrt(math.pi / (count / 2 * math.sin(2 * math.pi / count)))
    angles = np.arange(count) * (2 * math.pi / count)
    vertices = np.stack([a * np.cos(angles), b * np.sin(angles)], axis=1) * scale
    return Polygon(vertices + np.asarray(center, dtype=np.float64))


def painted_polygon(
    outline: np.ndarray | None, size: float, center: np.ndarray, height: int, width: int
) -> Polygon:
    """The region PIL paints for a shape that ``shapes._shape_mask`` draws, in COCO pixel
    coordinates (see the module docs), clipped to the ``height`` x ``width`` image.

    Args:
        outline: the shape's vertices ``[V, 2]`` as ``(x, y)`` around the origin, or None for
            a circle of diameter ``size``.
        size: the circle's diameter (unused for polygons).
        center: ``(x, y)`` of the shape in PIL's drawing coordinates.
    """
    center = np.asarray(center, dtype=np.float64)
    if outline is None:
        radius = size / 2
        # Pillow truncates the box, then fills the columns x0..x1 and rows y0..y1 inclusive.
        x0, y0 = np.trunc(center - radius)
        x1, y1 = np.trunc(center + radius)
        region = ellipse_polygon(
            ((x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2),
            ((x1 - x0 + 1) / 2 - ELLIPSE_INSET, (y1 - y0 + 1) / 2 - ELLIPSE_INSET),
        )
    else:
        vertices = np.trunc(outline + center) + 0.5
        # Minkowski sum with the horizontal half-pixel segment; the shapes are convex.
        widened = np.concatenate([vertices - [0.5, 0.0], vertices + [0.5, 0.0]])
        region = MultiPoint(widened).convex_hull
    return region.intersection(box(0, 0, width, height))


def visible_regions(regions: Sequence[BaseGeometry]) -> list[BaseGeometry]:
    """What stays visible of each region when they are painted in order (later on top):
    ``regions[k]`` minus the union of ``regions[k + 1:]``. May be empty, in pieces, or hold
    holes (a small shape drawn over a large one)."""
    visible = []
    for index, region in enumerate(regions):
        above = regions[index + 1 :]
        visible.append(region.difference(shapely.union_all(above)) if above else region)
    return visible


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The polygons of a (multi)polygon or geometry collection, without slivers."""
    if isinstance(geometry, Polygon):
        parts = [geometry]
    else:
        parts = [p for p in getattr(geometry, "geoms", []) for p in _polygons(p)]
    return [p for p in parts if isinstance(p, Polygon) and p.area >= _MIN_PIECE_AREA]


def split_holes(region: BaseGeometry) -> list[Polygon]:
    """Hole-free polygons whose union is ``region`` and whose interiors do not overlap (COCO
    polygons cannot carry holes).

    A polygon with holes is cut by the vertical line through a point inside its first hole;
    the hole then opens into the outline of the pieces on both sides. Pieces that still hold
    holes are cut again, until none does.
    """
    done: list[Polygon] = []
    pending = _polygons(region)
    while pending:
        polygon = pending.pop()
        if not polygon.interiors:
            done.append(polygon)
            continue
        x = Polygon(polygon.interiors[0]).representative_point().x
        _, min_y, _, max_y = polygon.bounds
        cut = shapely.LineString([(x, min_y - 1.0), (x, max_y + 1.0)])
        pieces = _polygons(split(polygon, cut))
        if len(pieces) < 2:
            raise RuntimeError(f"split_holes: cutting at x={x} did not split {polygon.wkt}")
        pending.extend(pieces)
    return done


def coco_polygons(region: BaseGeometry, decimals: int = 3) -> list[list[float]]:
    """``region`` as a COCO ``segmentation``: flat ``[x0, y0, x1, y1, ...]`` lists, one per
    hole-free piece (:func:`split_holes`), each with at least 3 vertices, the closing vertex
    not repeated, coordinates rounded to ``decimals``."""
    polygons = []
    for piece in split_holes(region):
        vertices = np.round(np.asarray(piece.exterior.coords)[:-1], decimals)
        if len(vertices) >= 3:
            polygons.append([float(v) for v in vertices.ravel()])
    return polygons
