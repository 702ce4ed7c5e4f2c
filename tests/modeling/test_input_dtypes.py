"""Image and model dtypes at inference: a float64 image (from a float64 numpy array) and a
model cast with ``.bfloat16()`` ran into dtype errors inside the backbone / the transformer;
bfloat16 runs returned bfloat16 scores, which numpy cannot take."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import instantiate

from tests.projects.tiny_shapes import SHAPES_CONFIGS, tiny_shapes_config


@pytest.mark.parametrize("project", sorted(SHAPES_CONFIGS))
def test_float64_images_and_bfloat16_models(project):
    torch.manual_seed(0)
    model = instantiate(tiny_shapes_config(project).model).eval()
    image = torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        reference = model([{"image": image}])[0]["instances"]
        from_float64 = model([{"image": image.double()}])[0]["instances"]
        torch.testing.assert_close(from_float64.scores, reference.scores, rtol=0, atol=0)
        torch.testing.assert_close(
            from_float64.pred_boxes.tensor, reference.pred_boxes.tensor, rtol=0, atol=0
        )
        cast = model.bfloat16()([{"image": image}])[0]["instances"]
    assert len(cast) == len(reference)
    assert cast.scores.dtype == torch.float32 and cast.pred_boxes.tensor.dtype == torch.float32
    assert torch.isfinite(cast.pred_boxes.tensor).all()
    assert ((cast.scores >= 0) & (cast.scores <= 1)).all()
    cast.scores.numpy()  # what evaluators and the demo do with them
