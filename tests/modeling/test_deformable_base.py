"""DeformableDetectorBase: module registration, per-layer predictions and their outputs."""

import pytest
import torch
from torch import nn

from detr_ext.layers.box_ops import inverse_sigmoid
from detr_ext.modeling import DeformableDetectorBase

C, K = 8, 3


class _Transformer(nn.Module):
    embed_dim = C


def _detector(**kwargs):
    arguments = dict(
        backbone=nn.Identity(),
        position_embedding=nn.Identity(),
        neck=nn.Conv2d(4, C, 1),
        transformer=_Transformer(),
        embed_dim=C,
        num_classes=K,
        num_queries=5,
        criterion=nn.Identity(),
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    arguments.update(kwargs)
    detector = DeformableDetectorBase(**arguments)
    class_head, box_head = detector.new_prediction_heads()
    detector.class_embed = nn.ModuleList([class_head, class_head])
    detector.bbox_embed = nn.ModuleList([box_head, box_head])
    return detector


def test_modules_are_registered_in_detrex_order():
    detector = _detector(query_embedding_dim=2 * C)
    names = [name for name, _ in detector.named_children()]
    assert names[:5] == ["backbone", "position_embedding", "neck", "query_embedding", "transformer"]
    assert detector.query_embedding.weight.shape == (5, 2 * C)
    assert not hasattr(_detector(), "query_embedding")
    with pytest.raises(ValueError, match="embed_dim=16"):
        _detector(embed_dim=16)


def test_new_heads_start_at_the_prior_with_zero_boxes():
    class_head, box_head = _detector().new_prediction_heads()
    torch.testing.assert_close(torch.sigmoid(class_head.bias), torch.full((K,), 0.01))
    assert (box_head(torch.randn(2, C)) == 0).all()


def test_layer_predictions_refine_boxes_and_points():
    torch.manual_seed(0)
    detector = _detector()
    with torch.no_grad():
        for parameter in detector.bbox_embed[0].parameters():
            parameter.normal_()
    states = torch.randn(2, 1, 4, C)
    boxes = torch.rand(1, 4, 4) * 0.8 + 0.1
    classes, coords = detector.layer_predictions(states, boxes, boxes[None])
    assert len(classes) == len(coords) == 2 and classes[0].shape == (1, 4, K)
    delta = detector.bbox_embed[0](states[0])
    torch.testing.assert_close(coords[0], (delta + inverse_sigmoid(boxes)).sigmoid())

    # A point reference is a prior for the center only.
    points = boxes[..., :2]
    _, point_coords = detector.layer_predictions(states, points, points[None])
    torch.testing.assert_close(
        point_coords[0][..., :2], (delta[..., :2] + inverse_sigmoid(points)).sigmoid()
    )
    torch.testing.assert_close(point_coords[0][..., 2:], delta[..., 2:].sigmoid())


@pytest.mark.parametrize("aux_loss", [True, False])
def test_layer_outputs_keep_the_last_layer_and_the_auxiliary_ones(aux_loss):
    detector = _detector(aux_loss=aux_loss)
    logits, boxes = torch.randn(3, 2, 4, K), torch.rand(3, 2, 4, 4)
    outputs = detector.layer_outputs(logits, boxes)
    assert torch.equal(outputs["pred_logits"], logits[-1])
    assert torch.equal(outputs["pred_boxes"], boxes[-1])
    if aux_loss:
        aux = outputs["aux_outputs"]
        assert len(aux) == 2
        assert all(torch.equal(layer["pred_boxes"], boxes[i]) for i, layer in enumerate(aux))
    else:
        assert "aux_outputs" not in outputs
