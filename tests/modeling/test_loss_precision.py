"""``full_precision``: the containers a detector's outputs come in; ``autocast_disabled``:
autocast really off inside (both found by `make mutate`)."""

import torch

from detr_ext.modeling.losses.precision import autocast_disabled, full_precision


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


def test_autocast_disabled_turns_cpu_autocast_off_inside_only():
    """Inside ``autocast_disabled`` a float32 matmul stays float32 under an outer bfloat16
    autocast (the matchers' and losses' arithmetic); outside it autocast applies again."""
    a = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with autocast_disabled("cpu"):
            assert not torch.is_autocast_enabled("cpu")
            assert (a @ a).dtype == torch.float32
        with autocast_disabled(torch.device("cpu")):
            assert (a @ a).dtype == torch.float32
        assert (a @ a).dtype == torch.bfloat16
