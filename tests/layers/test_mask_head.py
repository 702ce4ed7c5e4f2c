"""MHAttentionMap and MaskHeadSmallConv: shapes, the joint softmax, padding, gradients,
bf16 autocast, validation and facebookresearch/detr's parameter names."""

import math

import pytest
import torch

from detr_ext.layers import MaskHeadSmallConv, MHAttentionMap

# The bbox_attention.* and mask_head.* entries of
# ../shared/reference/state_dict_keys/facebookresearch_detr_resnet50_panoptic.txt
# (detr_resnet50_panoptic: hidden 256, 8 heads, fpn dims 1024/512/256).
DETR_PANOPTIC_HEAD_KEYS = """
bbox_attention.q_linear.weight (256, 256) float32
bbox_attention.q_linear.bias (256,) float32
bbox_attention.k_linear.weight (256, 256) float32
bbox_attention.k_linear.bias (256,) float32
mask_head.lay1.weight (264, 264, 3, 3) float32
mask_head.lay1.bias (264,) float32
mask_head.gn1.weight (264,) float32
mask_head.gn1.bias (264,) float32
mask_head.lay2.weight (128, 264, 3, 3) float32
mask_head.lay2.bias (128,) float32
mask_head.gn2.weight (128,) float32
mask_head.gn2.bias (128,) float32
mask_head.lay3.weight (64, 128, 3, 3) float32
mask_head.lay3.bias (64,) float32
mask_head.gn3.weight (64,) float32
mask_head.gn3.bias (64,) float32
mask_head.lay4.weight (32, 64, 3, 3) float32
mask_head.lay4.bias (32,) float32
mask_head.gn4.weight (32,) float32
mask_head.gn4.bias (32,) float32
mask_head.lay5.weight (16, 32, 3, 3) float32
mask_head.lay5.bias (16,) float32
mask_head.gn5.weight (16,) float32
mask_head.gn5.bias (16,) float32
mask_head.out_lay.weight (1, 16, 3, 3) float32
mask_head.out_lay.bias (1,) float32
mask_head.adapter1.weight (128, 1024, 1, 1) float32
mask_head.adapter1.bias (128,) float32
mask_head.adapter2.weight (64, 512, 1, 1) float32
mask_head.adapter2.bias (64,) float32
mask_head.adapter3.weight (32, 256, 1, 1) float32
mask_head.adapter3.bias (32,) float32
"""

# A small head: hidden 128, 8 heads (dim = 136), fpn dims coarse to fine.
HIDDEN, HEADS, FPN_DIMS = 128, 8, (24, 16, 8)


def reference_shapes():
    shapes = {}
    for line in DETR_PANOPTIC_HEAD_KEYS.strip().splitlines():
        key, rest = line.split(" ", 1)
        shapes[key] = tuple(int(v) for v in rest.rsplit(" ", 1)[0].strip("()").split(",") if v)
    return shapes


def attention_inputs(batch, queries, height, width, dtype=torch.float32):
    q = torch.randn(batch, queries, HIDDEN, dtype=dtype)
    k = torch.randn(batch, HIDDEN, height, width, dtype=dtype)
    return q, k


def head_inputs(batch, queries, height, width, fpn_sizes):
    x = torch.randn(batch, HIDDEN, height, width)
    bbox_mask = torch.rand(batch, queries, HEADS, height, width)
    fpns = [torch.randn(batch, c, h, w) for c, (h, w) in zip(FPN_DIMS, fpn_sizes, strict=True)]
    return x, bbox_mask, fpns


def test_state_dict_matches_detr_panoptic_names_and_shapes():
    modules = torch.nn.ModuleDict(
        {
            "bbox_attention": MHAttentionMap(256, 256, 8, dropout=0.0),
            "mask_head": MaskHeadSmallConv(256 + 8, [1024, 512, 256], 256),
        }
    )
    got = {key: tuple(value.shape) for key, value in modules.state_dict().items()}
    assert got == reference_shapes()


# --------------------------------------------------------------------- MHAttentionMap


@pytest.mark.parametrize(
    "batch, queries, height, width", [(1, 1, 1, 1), (2, 5, 7, 3), (2, 3, 4, 9)]
)
def test_attention_map_shape_and_joint_softmax(batch, queries, height, width):
    attention = MHAttentionMap(HIDDEN, HIDDEN, HEADS)
    weights = attention(*attention_inputs(batch, queries, height, width))
    assert weights.shape == (batch, queries, HEADS, height, width)
    # One softmax over (heads, h, w) per query, not one per head (that would sum to HEADS).
    sums = weights.sum(dim=(2, 3, 4))
    torch.testing.assert_close(sums, torch.ones(batch, queries))


def test_attention_map_matches_a_loop_reference():
    torch.manual_seed(3)
    attention = MHAttentionMap(HIDDEN, 64, 4).double()
    torch.nn.init.normal_(attention.q_linear.bias)
    torch.nn.init.normal_(attention.k_linear.bias)
    q, k = attention_inputs(2, 3, 2, 3, dtype=torch.float64)
    weights = attention(q, k)
    head_dim = 16
    for b in range(2):
        for query in range(3):
            projected_q = attention.q_linear(q[b, query])  # [64]
            logits = []
            for head in range(4):
                channels = slice(head * head_dim, (head + 1) * head_dim)
                for y in range(2):
                    for x in range(3):
                        projected_k = attention.k_linear(k[b, :, y, x])
                        dot = (projected_q[channels] * projected_k[channels]).sum().item()
                        logits.append(dot / math.sqrt(head_dim))
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            expected = torch.tensor([v / sum(exps) for v in exps], dtype=torch.float64)
            torch.testing.assert_close(weights[b, query].flatten(), expected)


def test_padding_gets_zero_attention():
    attention = MHAttentionMap(HIDDEN, HIDDEN, HEADS)
    q, k = attention_inputs(2, 4, 5, 6)
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[0, :, 4:] = True  # image 0: two padded columns
    mask[1, 3:, :] = True  # image 1: two padded rows
    weights = attention(q, k, mask)
    assert torch.equal(weights[0, :, :, :, 4:], torch.zeros_like(weights[0, :, :, :, 4:]))
    assert torch.equal(weights[1, :, :, 3:], torch.zeros_like(weights[1, :, :, 3:]))
    assert (weights[0, :, :, :, :4] > 0).all() and (weights[1, :, :, :3] > 0).all()
    torch.testing.assert_close(weights.sum(dim=(2, 3, 4)), torch.ones(2, 4))
    # Unpadded positions are as if the padded ones were cropped away.
    cropped = attention(q[:1], k[:1, :, :, :4])
    torch.testing.assert_close(weights[:1, :, :, :, :4], cropped)


def test_attention_map_init_is_detr_s():
    attention = MHAttentionMap(HIDDEN, 64, HEADS)
    bound = math.sqrt(6 / (HIDDEN + 64))  # xavier-uniform
    for linear in (attention.q_linear, attention.k_linear):
        assert torch.equal(linear.bias, torch.zeros(64))
        assert linear.weight.abs().max() <= bound
        assert linear.weight.abs().max() > 0.8 * bound


def test_attention_map_validation():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MHAttentionMap(HIDDEN, 100, 8)
    attention = MHAttentionMap(HIDDEN, HIDDEN, HEADS)
    q, k = attention_inputs(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"q of shape \[B, Q, 128\]"):
        attention(q[..., :-1], k)
    with pytest.raises(ValueError, match="k of shape"):
        attention(q, k[:1])
    with pytest.raises(ValueError, match="bool mask"):
        attention(q, k, torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"\[B, h, w\] = \(2, 4, 5\)"):
        attention(q, k, torch.zeros(2, 5, 4, dtype=torch.bool))


# --------------------------------------------------------------------- MaskHeadSmallConv


@pytest.mark.parametrize(
    "batch, queries, size, fpn_sizes",
    [
        (1, 1, (2, 2), [(4, 4), (8, 8), (16, 16)]),
        (2, 3, (5, 7), [(9, 13), (17, 25), (33, 50)]),  # odd sizes, not exact doublings
        (2, 4, (3, 4), [(5, 8), (10, 16), (21, 31)]),
    ],
)
def test_mask_head_shapes(batch, queries, size, fpn_sizes):
    head = MaskHeadSmallConv(HIDDEN + HEADS, FPN_DIMS, HIDDEN)
    out = head(*head_inputs(batch, queries, *size, fpn_sizes))
    assert out.shape == (batch, queries, *fpn_sizes[-1])
    assert torch.isfinite(out).all()


def test_mask_head_pairs_each_query_with_its_own_image():
    """Batch-major expansion: image b's feature goes with image b's queries, query order kept."""
    head = MaskHeadSmallConv(HIDDEN + HEADS, FPN_DIMS, HIDDEN)
    x, bbox_mask, fpns = head_inputs(2, 3, 4, 5, [(7, 9), (14, 18), (27, 35)])
    out = head(x, bbox_mask, fpns)
    for b in range(2):
        single = head(x[b : b + 1], bbox_mask[b : b + 1], [f[b : b + 1] for f in fpns])
        torch.testing.assert_close(out[b : b + 1], single, rtol=1e-5, atol=1e-5)
    order = torch.tensor([2, 0, 1])
    permuted = head(x, bbox_mask[:, order], fpns)
    torch.testing.assert_close(permuted, out[:, order], rtol=1e-5, atol=1e-5)
    # Queries with different maps get different masks (the maps are used).
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_gradients_reach_every_parameter_and_input():
    attention = MHAttentionMap(HIDDEN, HIDDEN, HEADS)
    head = MaskHeadSmallConv(HIDDEN + HEADS, FPN_DIMS, HIDDEN)
    q, memory = attention_inputs(2, 3, 4, 5)
    x, _, fpns = head_inputs(2, 3, 4, 5, [(7, 9), (14, 18), (27, 35)])
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, :, 3:] = True
    inputs = [q, memory, x, *fpns]
    for tensor in inputs:
        tensor.requires_grad_(True)
    out = head(x, attention(q, memory, mask), fpns)
    (out * torch.randn_like(out)).sum().backward()
    for name, parameter in [*attention.named_parameters(), *head.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for index, tensor in enumerate(inputs):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, index


def test_bf16_autocast_on_cpu():
    attention = MHAttentionMap(HIDDEN, HIDDEN, HEADS)
    head = MaskHeadSmallConv(HIDDEN + HEADS, FPN_DIMS, HIDDEN)
    q, memory = attention_inputs(2, 3, 5, 3)
    x, _, fpns = head_inputs(2, 3, 5, 3, [(9, 5), (17, 11), (35, 21)])
    mask = torch.zeros(2, 5, 3, dtype=torch.bool)
    mask[0, 4:] = True
    reference = head(x, attention(q, memory, mask), fpns)
    memory.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = attention(q, memory, mask)
        out = head(x, weights, fpns)
    assert weights.dtype == torch.bfloat16
    assert torch.equal(weights[0, :, :, 4:], torch.zeros_like(weights[0, :, :, 4:]))
    assert out.shape == reference.shape and torch.isfinite(out).all()
    tolerance = 0.1 * reference.abs().max().item()
    torch.testing.assert_close(out.float(), reference, rtol=0.1, atol=tolerance)
    out.float().sum().backward()
    assert memory.grad is not None and torch.isfinite(memory.grad).all()


def test_mask_head_init_is_detr_s():
    head = MaskHeadSmallConv(HIDDEN + HEADS, FPN_DIMS, HIDDEN)
    conv = head.lay2  # kaiming_uniform(a=1): bound sqrt(6 / ((1 + 1) * fan_in)) = sqrt(3 / fan_in)
    bound = math.sqrt(3 / (HIDDEN + HEADS) / 9)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    for module in head.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert torch.equal(module.bias, torch.zeros_like(module.bias))


def test_mask_head_validation():
    with pytest.raises(ValueError, match=r"GroupNorm\(8, dim\).*multiple of 8, got dim=132"):
        MaskHeadSmallConv(132, FPN_DIMS, HIDDEN)
    with pytest.raises(ValueError, match="multiple of 128, got context_dim=64"):
        MaskHeadSmallConv(72, FPN_DIMS, 64)
    with pytest.raises(ValueError, match="3 positive fpn_dims"):
        MaskHeadSmallConv(136, (24, 16), HIDDEN)
    head = MaskHeadSmallConv(HIDDEN + HEADS, FPN_DIMS, HIDDEN)
    x, bbox_mask, fpns = head_inputs(2, 3, 4, 5, [(7, 9), (14, 18), (27, 35)])
    with pytest.raises(
        ValueError, match=r"x channels \+ attention heads = dim = 136, got 128 \+ 4"
    ):
        head(x, bbox_mask[:, :, :4], fpns)
    with pytest.raises(ValueError, match="same batch size and map size"):
        head(x[:, :, :3], bbox_mask, fpns)
    with pytest.raises(ValueError, match="expected 3 fpn features, got 2"):
        head(x, bbox_mask, fpns[:2])
    with pytest.raises(ValueError, match=r"fpns\[1\] of shape \[B=2, 16, H, W\]"):
        head(x, bbox_mask, [fpns[0], fpns[2], fpns[2]])
