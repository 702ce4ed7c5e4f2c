"""Tests for detr_ext.layers.position_embedding."""

import math

import pytest
import torch

from detr_ext.layers.position_embedding import (
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    get_sine_pos_embed,
)


def _sine_loop(mask, num_pos_feats, temperature, normalize, scale, eps, offset):
    """Plain-Python sine embedding, one pixel and one channel at a time: [B, 2F, H, W]."""
    batch, height, width = mask.shape
    out = torch.zeros(batch, 2 * num_pos_feats, height, width, dtype=torch.float64)
    for b in range(batch):
        valid = [[not bool(mask[b, i, j]) for j in range(width)] for i in range(height)]
        for i in range(height):
            for j in range(width):
                y = sum(valid[r][j] for r in range(i + 1))
                x = sum(valid[i][c] for c in range(j + 1))
                if normalize:
                    y_last = sum(valid[r][j] for r in range(height))
                    x_last = sum(valid[i][c] for c in range(width))
                    y = (y + offset) / (y_last + eps) * scale
                    x = (x + offset) / (x_last + eps) * scale
                for axis, coord in enumerate((y, x)):
                    for k in range(num_pos_feats):
                        angle = coord / temperature ** (2 * (k // 2) / num_pos_feats)
                        value = math.sin(angle) if k % 2 == 0 else math.cos(angle)
                        out[b, axis * num_pos_feats + k, i, j] = value
    return out


@pytest.fixture
def padded_mask():
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, :, 3:] = True  # image 0 is 3 x 3 inside a 3 x 4 canvas
    mask[1, 2:, :] = True  # image 1 is 2 x 4
    mask[1, :, 3] = True  # ... and 2 x 3
    return mask


@pytest.mark.parametrize(
    "normalize, offset, temperature",
    [(False, 0.0, 10000), (True, 0.0, 10000), (True, -0.5, 20), (False, 0.0, 20)],
)
def test_sine_matches_loop_reference(padded_mask, normalize, offset, temperature):
    kwargs = dict(
        num_pos_feats=6,
        temperature=temperature,
        normalize=normalize,
        scale=2 * math.pi,
        eps=1e-6,
        offset=offset,
    )
    out = PositionEmbeddingSine(**kwargs)(padded_mask)
    assert out.shape == (2, 12, 3, 4)
    assert out.dtype == torch.float32
    expected = _sine_loop(padded_mask, **kwargs)
    # Fully padded rows / columns divide by eps when normalizing; with an offset their angles
    # are ~1e6 and float32 rounding dominates, so compare them only when the offset is zero.
    valid = ~padded_mask[:, None].expand_as(out) if offset else torch.ones_like(out, dtype=bool)
    torch.testing.assert_close(out.double()[valid], expected[valid], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_sine_normalize_differs_and_padding_does_not_shift_content(padded_mask):
    plain = PositionEmbeddingSine(num_pos_feats=4)(padded_mask)
    normed = PositionEmbeddingSine(num_pos_feats=4, normalize=True)(padded_mask)
    assert not torch.allclose(plain, normed)
    # Unnormalized positions count valid pixels, so the top-left 3 x 3 image content of a
    # padded canvas gets the same embedding as an unpadded 3 x 3 image.
    alone = PositionEmbeddingSine(num_pos_feats=4)(torch.zeros(1, 3, 3, dtype=torch.bool))
    torch.testing.assert_close(plain[0, :, :, :3], alone[0])


def test_sine_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"bool mask of shape \[B, H, W\]"):
        PositionEmbeddingSine()(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        PositionEmbeddingSine()(torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(num_pos_feats=5)


def test_learned_embedding_shape_and_layout(padded_mask):
    module = PositionEmbeddingLearned(num_embeddings=10, num_pos_feats=5)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        "row_embed.weight": (10, 5),
        "col_embed.weight": (10, 5),
    }
    out = module(padded_mask)
    assert out.shape == (2, 10, 3, 4)
    # Column embedding first, then row embedding; the same for every image in the batch.
    torch.testing.assert_close(out[1, :5, 2, 1], module.col_embed.weight[1])
    torch.testing.assert_close(out[0, 5:, 2, 1], module.row_embed.weight[2])
    torch.testing.assert_close(out[0], out[1])
    with pytest.raises(ValueError, match="num_embeddings"):
        module(torch.zeros(1, 11, 2, dtype=torch.bool))


def _coord_embed(value, num_pos_feats, temperature=10000):
    return torch.tensor(
        [
            (math.sin if k % 2 == 0 else math.cos)(
                value * 2 * math.pi / temperature ** (2 * (k // 2) / num_pos_feats)
            )
            for k in range(num_pos_feats)
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("num_coords", [2, 4])
def test_get_sine_pos_embed_values_and_swap(num_coords):
    points = torch.rand(2, 3, num_coords, dtype=torch.float64)
    out = get_sine_pos_embed(points, num_pos_feats=8)
    assert out.shape == (2, 3, num_coords * 8)
    plain = get_sine_pos_embed(points, num_pos_feats=8, exchange_xy=False)
    p = points[1, 2].tolist()
    expected_plain = torch.cat([_coord_embed(v, 8) for v in p])
    torch.testing.assert_close(plain[1, 2], expected_plain, atol=1e-6, rtol=1e-6)
    # exchange_xy puts y's embedding first, x's second, the rest unchanged.
    torch.testing.assert_close(out[..., :8], plain[..., 8:16])
    torch.testing.assert_close(out[..., 8:16], plain[..., :8])
    torch.testing.assert_close(out[..., 16:], plain[..., 16:])
    assert not torch.allclose(out, plain)


def test_get_sine_pos_embed_default_width_and_errors():
    assert get_sine_pos_embed(torch.rand(5, 4)).shape == (5, 512)
    with pytest.raises(ValueError, match="exchange_xy"):
        get_sine_pos_embed(torch.rand(5, 1))
    assert get_sine_pos_embed(torch.rand(5, 1), exchange_xy=False).shape == (5, 128)
    with pytest.raises(ValueError, match="even"):
        get_sine_pos_embed(torch.rand(5, 2), num_pos_feats=7)
