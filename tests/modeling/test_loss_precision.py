"""``full_precision``: the containers a detector's outputs come in (found by `make mutate`)."""

import torch

from detr_ext.modeling.losses.precision import full_precision


def test_full_precision_converts_inside_dicts_lists_and_tuples():
    half = torch.ones(2, dtype=torch.float16)
    exact = torch.ones(2, dtype=torch.float64)
    outputs = {"pred_logits": half, "aux_outputs": [{"pred_boxes": half}], "pair": (half, 3)}
    converted = full_precision(outputs)
    assert converted["pred_logits"].dtype == torch.float32
    assert converted["aux_outputs"][0]["pred_boxes"].dtype == torch.float32
    assert isinstance(converted["pair"], tuple) and converted["pair"][1] == 3
    assert converted["pair"][0].dtype == torch.float32
    assert full_precision([exact])[0] is exact and full_precision(None) is None
