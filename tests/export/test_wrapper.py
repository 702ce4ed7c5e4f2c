"""The pieces of the exported graph that re-express eager code: the padding mask from the
image sizes, and the padding mask's nearest resize (exported graphs round it differently)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from detr_ext.export import padding_mask_from_sizes
from detr_ext.layers import resize_padding_mask

from .models import tiny_model


def test_padding_mask_from_sizes_is_the_mask_of_preprocess_image():
    model = tiny_model("detr")
    images = [torch.zeros(3, 70, 90), torch.zeros(3, 64, 100), torch.zeros(3, 81, 77)]
    batch, expected = model.preprocess_image([{"image": image} for image in images])
    sizes = torch.tensor(batch.image_sizes)
    assert torch.equal(padding_mask_from_sizes(batch.tensor, sizes), expected)


def _pairs() -> list[tuple[int, int]]:
    rng = random.Random(0)
    # Feature map sizes of strides 8-64 (all exact-integer cases of i * in / out among them),
    # arbitrary down- and upsampling, and large maps.
    pairs = [(n, (n - 1) // s + 1) for n in range(1, 400) for s in (8, 16, 32, 64)]
    pairs += [(n, m) for n in range(1, 40) for m in range(1, 90)]
    pairs += [(rng.randint(1, 4000), rng.randint(1, 600)) for _ in range(500)]
    return pairs


def test_resize_padding_mask_picks_the_pixels_of_interpolate_nearest():
    generator = torch.Generator().manual_seed(0)
    for size, out in _pairs():
        mask = torch.rand(1, size, 2, generator=generator) < 0.5
        expected = F.interpolate(mask[None].float(), size=(out, 2))[0].bool()
        assert torch.equal(resize_padding_mask(mask, (out, 2)), expected), (size, out)


@pytest.mark.parametrize("size", [(45, 50), (357, 395)])
def test_resize_padding_mask_of_a_padded_batch(size):
    mask = torch.zeros(2, *size, dtype=torch.bool)
    mask[1, size[0] - 44 :] = True
    mask[1, :, size[1] - 65 :] = True
    for stride in (8, 16, 32):
        feature = ((size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)
        expected = F.interpolate(mask[None].float(), size=feature)[0].bool()
        assert torch.equal(resize_padding_mask(mask, feature), expected)


class _ResizeMask(torch.nn.Module):
    def forward(self, mask: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return resize_padding_mask(mask, feature.shape[-2:])


def test_resize_padding_mask_exported_to_onnx_keeps_the_pixels_of_interpolate(tmp_path):
    """The reason resize_padding_mask exists: ONNX's Resize (what F.interpolate becomes)
    picks other source pixels than PyTorch for about 1 in 12 feature-map sizes (e.g. 21 ->
    3 rows), which moves the mask edge of padded images. The written-out rule does not."""
    import onnxruntime

    example = (torch.zeros(1, 357, 395, dtype=torch.bool), torch.zeros(1, 1, 45, 50))
    dims = {name: torch.export.Dim(name, min=2, max=4096) for name in ("h", "w", "fh", "fw")}
    program = torch.export.export(
        _ResizeMask(),
        example,
        dynamic_shapes=({1: dims["h"], 2: dims["w"]}, {2: dims["fh"], 3: dims["fw"]}),
    )
    path = tmp_path / "resize_mask.onnx"
    torch.onnx.export(program, dynamo=True, optimize=False, verbose=False).save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    for size in range(20, 400):
        for stride in (8, 16, 32):
            out = (size - 1) // stride + 1
            if out < 2:
                continue
            mask = torch.zeros(1, size, 4, dtype=torch.bool)
            mask[:, torch.arange(size) % 3 == 0] = True
            feature = torch.zeros(1, 1, out, 2)
            got = session.run(None, {names[0]: mask.numpy(), names[1]: feature.numpy()})[0]
            expected = F.interpolate(mask[None].float(), size=(out, 2))[0].bool()
            assert torch.equal(torch.from_numpy(got), expected), (size, out)
