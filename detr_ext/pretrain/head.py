"""DINO projection head: MLP -> L2 normalization -> weight-normalized linear layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """Projection head of DINO self-distillation.

    ``x [N, in_dim] -> MLP -> [N, bottleneck_dim] -> L2-normalize -> last_layer -> [N, out_dim]``.
    The MLP has ``num_layers`` Linear layers with GELU between them (hidden width
    ``hidden_dim``). ``last_layer`` is a bias-free Linear under weight normalization
    (``weight = g * v / ||v||`` per output row); its magnitude ``g``
    (``last_layer.parametrizations.weight.original0``, ``[out_dim, 1]``) starts at 1 and, with
    ``norm_last_layer``, stays fixed there (``requires_grad=False``), which DINO found to
    stabilize training. The outputs are logits over ``out_dim`` made-up classes.

    Args:
        in_dim: input channels (the backbone's pooled feature width).
        out_dim: number of output logits ``K``.
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: width of the normalized embedding fed to ``last_layer``.
        num_layers: Linear layers in the MLP, >= 1 (1: a single ``in_dim -> bottleneck_dim``).
        norm_last_layer: keep ``g`` fixed at 1.
        use_bn: BatchNorm1d before each GELU of the MLP (DINO's ``use_bn_in_head``): the
            hidden activations are normalized over the batch, so differences between images
            are kept even when the backbone's pooled features are nearly alike.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        for name, dim in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
        ):
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"DINOHead: expected {name} to be a positive int, got {dim!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"DINOHead: expected num_layers >= 1, got {num_layers!r}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.norm_last_layer = norm_last_layer

        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            if index > 0:
                if use_bn:
                    layers.append(nn.BatchNorm1d(width_in))
                layers.append(nn.GELU())
            layers.append(nn.Linear(width_in, width_out))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [N, in_dim]`` -> logits ``[N, out_dim]``."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"DINOHead: expected input [N, {self.in_dim}], got {tuple(x.shape)}")
        embedding = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(embedding)
