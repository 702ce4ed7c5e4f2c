"""FLOP rules for the deformable attention operator, and tools/analyze_model.py."""

from __future__ import annotations

import json

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from detr_ext.layers import MultiScaleDeformableAttention
from detr_ext.ops import compiled_kernel_available
from detr_ext.utils.flop_count import flop_count_handles, ms_deform_attn_flops
from tests.tool_runs import REPO_ROOT, TINY_SHAPES_CONFIG, load_script

COMPILED_CPU = compiled_kernel_available("cpu", torch.float32) is None
LEVELS = ((8, 10), (4, 5))  # (H_l, W_l)


def test_msda_flops_are_five_multiply_adds_per_sampled_channel():
    # B=2, S, H=8 heads of D=32, Q=100 queries, L=4 levels, P=4 points.
    assert (
        ms_deform_attn_flops((2, 1000, 8, 32), (2, 100, 8, 4, 4, 2)) == 5 * 2 * 100 * 8 * 4 * 4 * 32
    )
    with pytest.raises(ValueError, match=r"\(B, Q, H, L, P, 2\)"):
        ms_deform_attn_flops((2, 1000, 8, 32), (2, 100, 8, 4, 2))


class _OneAttention(torch.nn.Module):
    """A deformable attention layer on a fixed two-level memory (what the trace sees)."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.attention = MultiScaleDeformableAttention(
            embed_dim=32, num_heads=2, num_levels=len(LEVELS), num_points=3, backend=backend
        )

    def forward(self, query: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        spatial_shapes = torch.tensor(LEVELS)
        level_start_index = torch.tensor([0, LEVELS[0][0] * LEVELS[0][1]])
        reference_points = torch.rand(query.shape[0], query.shape[1], len(LEVELS), 2)
        return self.attention(
            query,
            value=value,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
        )


def _operator_counts(backend: str) -> tuple[dict, int]:
    torch.manual_seed(0)
    num_values = sum(h * w for h, w in LEVELS)
    query, value = torch.randn(2, 7, 32), torch.randn(2, num_values, 32)
    analysis = FlopCountAnalysis(_OneAttention(backend).eval(), (query, value))
    analysis.set_op_handle(**flop_count_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # B=2, Q=7, H=2, L=2, P=3, D=16.
    return dict(analysis.by_operator()), ms_deform_attn_flops(
        (2, num_values, 2, 16), (2, 7, 2, 2, 3, 2)
    )


@pytest.mark.skipif(not COMPILED_CPU, reason="needs the compiled CPU kernel")
def test_compiled_operator_is_counted_by_its_rule():
    counts, expected = _operator_counts("compiled")
    assert counts["ms_deform_attn"] == expected


def test_grid_sample_path_counts_the_bilinear_sampling():
    counts, expected = _operator_counts("pytorch")
    assert "ms_deform_attn" not in counts
    assert counts["grid_sampler"] == expected * 4 // 5


@pytest.fixture()
def tiny_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    base = REPO_ROOT / "projects/dino/configs/dino_shapes.py"
    config = tmp_path / "tiny_dino_shapes.py"
    config.write_text(TINY_SHAPES_CONFIG.format(base=str(base)))
    return config


def test_tool_counts_parameters_and_flops(tiny_config, tmp_path, capsys):
    from detectron2.config import LazyConfig, instantiate

    tool = load_script("tools/analyze_model.py")
    out = tmp_path / "analysis.json"
    result = tool.main(
        [
            "--config-file",
            str(tiny_config),
            "--tasks",
            "parameter",
            "flop",
            "structure",
            "--input-size",
            "96",
            "128",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=list))
    model = instantiate(LazyConfig.load(str(tiny_config)).model)
    assert result["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result["parameters"]["trainable"] == trainable
    flops = result["flops"]
    assert flops["images"] == 1 and flops["input_sizes"] == [(96, 128)]
    operators = flops["gflops_by_operator_first_image"]
    assert operators["conv"] > 0 and operators["linear"] > 0
    assert ("ms_deform_attn" if COMPILED_CPU else "grid_sampler") in operators
    assert flops["gflops_mean"] == pytest.approx(sum(operators.values()))
    printed = capsys.readouterr().out
    assert "DINO(" in printed  # structure
    assert "GFLOPs:" in printed and "network input 96x128" in printed


def test_tool_averages_over_test_loader_images(tiny_config):
    tool = load_script("tools/analyze_model.py")
    result = tool.main(["--config-file", str(tiny_config), "--tasks", "flop", "--num-inputs", "2"])
    flops = result["flops"]
    assert flops["images"] == 2
    assert flops["gflops_mean"] > 0 and flops["gflops_std"] >= 0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--input-size", "0", "64"], "positive H W"),
        (["--num-inputs", "0"], "positive count"),
        (["bad_override"], "key=value"),
    ],
)
def test_tool_usage_errors(tiny_config, argv, match):
    tool = load_script("tools/analyze_model.py")
    with pytest.raises(tool.AnalyzeError, match=match):
        tool.main(["--config-file", str(tiny_config), *argv, "--tasks", "flop"])


class _AttentionProducts(torch.nn.Module):
    """The two forms attention products take in a trace, both unknown to fvcore."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        logits = torch.baddbmm(torch.zeros(6, 5, 7), q, k.transpose(1, 2))
        fused = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return logits.sum() + fused.sum()


def test_attention_products_are_counted():
    # q [6, 5, 8], k [6, 7, 8], v [6, 7, 4]: batch 6, L 5, S 7, E 8, E_v 4.
    inputs = (torch.randn(6, 5, 8), torch.randn(6, 7, 8), torch.randn(6, 7, 4))
    analysis = FlopCountAnalysis(_AttentionProducts().eval(), inputs)
    analysis.set_op_handle(**flop_count_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    counts = dict(analysis.by_operator())
    assert counts["baddbmm"] == 6 * 5 * 8 * 7
    assert counts["scaled_dot_product_attention"] == 6 * 5 * 7 * (8 + 4)
