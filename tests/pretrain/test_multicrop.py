"""MultiCropAugmentation: view counts, shapes, dtype, normalization, randomness and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detr_ext.pretrain import MultiCropAugmentation

MEAN = (123.675, 116.280, 103.530)
STD = (58.395, 57.120, 57.375)


def _gradient_image(height: int = 96, width: int = 80) -> np.ndarray:
    """A smooth image where every crop position gives different pixels."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([ys * 255 // height, xs * 255 // width, (ys + xs) * 255 // (height + width)])
    return image.transpose(1, 2, 0).astype(np.uint8)


def test_counts_shapes_and_dtype():
    augment = MultiCropAugmentation(global_size=32, local_size=16, num_local=3)
    views = augment(_gradient_image())
    assert len(views) == 5
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    no_local = MultiCropAugmentation(global_size=24, local_size=8, num_local=0)
    assert [tuple(v.shape) for v in no_local(_gradient_image())] == [(3, 24, 24)] * 2


def test_normalization_of_a_constant_image():
    # Colours below the solarization threshold (128) and no colour distortion: every pixel of
    # every view (crop, flip, blur) keeps the colour, so it normalizes to (c - mean) / std.
    colour = (120, 60, 30)
    image = np.empty((50, 70, 3), dtype=np.uint8)
    image[...] = colour
    augment = MultiCropAugmentation(global_size=32, local_size=16, num_local=2, color_jitter=0.0)
    expected = torch.tensor([(c - m) / s for c, m, s in zip(colour, MEAN, STD)])
    for view in augment(image):
        assert torch.allclose(view, expected[:, None, None].expand_as(view), atol=1.01 / 57)


def test_custom_normalization():
    image = np.full((40, 40, 3), 100, dtype=np.uint8)
    augment = MultiCropAugmentation(
        global_size=16,
        local_size=8,
        num_local=1,
        color_jitter=0.0,
        pixel_mean=(100.0, 50.0, 0.0),
        pixel_std=(1.0, 10.0, 100.0),
    )
    view = augment(image)[0]
    assert view[0].abs().max() <= 1.01
    assert view[1].mean().item() == pytest.approx(5.0, abs=0.11)
    assert view[2].mean().item() == pytest.approx(1.0, abs=0.011)


def test_views_differ_and_torch_seed_reproduces_them():
    augment = MultiCropAugmentation(global_size=32, local_size=16, num_local=2)
    image = _gradient_image()
    torch.manual_seed(1)
    first = augment(image)
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[2], first[3])
    torch.manual_seed(1)
    again = augment(image)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    torch.manual_seed(2)
    other = augment(image)
    assert not torch.equal(first[0], other[0])


def test_global_views_cover_more_of_the_image_than_local_views():
    # A horizontal ramp 0..127 (below the solarization threshold): a view's value range
    # measures its width in the image. With aspect ratios in [3/4, 4/3], a global view (>= 60%
    # of the area) spans more than sqrt(0.6 * 3/4) = 67% of the width, a local view (<= 10%)
    # less than sqrt(0.1 * 4/3) = 37%.
    ramp = np.linspace(0, 127, 120).round().astype(np.uint8)
    image = np.repeat(np.repeat(ramp[None, :, None], 120, axis=0), 3, axis=2)
    augment = MultiCropAugmentation(
        global_size=32,
        local_size=16,
        num_local=2,
        global_scale=(0.6, 1.0),
        local_scale=(0.01, 0.1),
        color_jitter=0.0,
    )
    for _ in range(10):
        views = augment(image)
        widths = [(view[0].max() - view[0].min()).item() * STD[0] / 127 for view in views]
        assert min(widths[:2]) > 0.6, widths
        assert max(widths[2:]) < 0.4, widths


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_size": 0}, "global_size"),
        ({"num_local": -1}, "num_local"),
        ({"local_scale": (0.5, 0.2)}, "local_scale"),
        ({"global_scale": (0.0, 1.0)}, "global_scale"),
        ({"color_jitter": 2.0}, "color_jitter"),
        ({"pixel_std": (1.0, 0.0, 1.0)}, "pixel_std"),
        ({"pixel_mean": (1.0, 2.0)}, "pixel_mean"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiCropAugmentation(**kwargs)


def test_rejects_bad_images():
    augment = MultiCropAugmentation(global_size=16, local_size=8, num_local=1)
    with pytest.raises(TypeError, match="uint8"):
        augment(np.zeros((20, 20, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="\\[H, W, 3\\]"):
        augment(np.zeros((20, 20), dtype=np.uint8))
