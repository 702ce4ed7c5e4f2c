"""Feed-forward blocks: the transformer ``FFN`` (with residual) and the plain ``MLP`` head.

Parameter names follow detrex (``layers.0.0.weight`` ... for ``FFN``, ``layers.i.weight``
for ``MLP``) so detrex checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FFN", "MLP"]


class FFN(nn.Module):
    """Transformer feed-forward network with an optional residual connection.

    Layout for ``num_fcs = n``: ``n - 1`` blocks ``Sequential(Linear, activation, Dropout)``,
    then ``Linear(feedforward_dim, output_dim)`` and ``Dropout``, all inside ``self.layers``.

    Args:
        embed_dim: input channels ``C``.
        feedforward_dim: hidden channels.
        output_dim: output channels; defaults to ``embed_dim``.
        num_fcs: number of Linear layers, at least 2.
        activation: an ``nn.Module`` shared by all hidden blocks, or a zero-argument factory
            (such as ``nn.GELU``) called once per block; defaults to ``nn.ReLU(inplace=True)``.
        ffn_drop: dropout after each hidden activation and after the last Linear.
        fc_bias: whether the Linear layers have a bias.
        add_identity: whether to add the residual ``identity`` to the output.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        feedforward_dim: int = 1024,
        output_dim: int | None = None,
        num_fcs: int = 2,
        activation: nn.Module | Callable[[], nn.Module] | None = None,
        ffn_drop: float = 0.0,
        fc_bias: bool = True,
        add_identity: bool = True,
    ) -> None:
        super().__init__()
        if num_fcs < 2:
            raise ValueError(f"FFN: expected num_fcs >= 2, got num_fcs={num_fcs}")
        if output_dim is None:
            output_dim = embed_dim
        self.embed_dim = embed_dim
        self.feedforward_dim = feedforward_dim
        self.output_dim = output_dim
        self.num_fcs = num_fcs
        self.add_identity = add_identity

        blocks: list[nn.Module] = []
        in_channels = embed_dim
        for _ in range(num_fcs - 1):
            blocks.append(
                nn.Sequential(
                    nn.Linear(in_channels, feedforward_dim, bias=fc_bias),
                    _make_activation(activation),
                    nn.Dropout(ffn_drop),
                )
            )
            in_channels = feedforward_dim
        blocks.append(nn.Linear(feedforward_dim, output_dim, bias=fc_bias))
        blocks.append(nn.Dropout(ffn_drop))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the FFN.

        Args:
            x: ``[..., embed_dim]``.
            identity: ``[..., output_dim]`` residual; defaults to ``x``.

        Returns:
            ``[..., output_dim]``: ``identity + layers(x)`` if ``add_identity``, else
            ``layers(x)``.
        """
        out = self.layers(x)
        if not self.add_identity:
            return out
        if identity is None:
            if self.output_dim != self.embed_dim:
                raise ValueError(
                    "FFN: the default residual (the input) needs output_dim == embed_dim, got "
                    f"output_dim={self.output_dim}, embed_dim={self.embed_dim}; pass identity"
                )
            identity = x
        return identity + out


def _make_activation(activation: nn.Module | Callable[[], nn.Module] | None) -> nn.Module:
    """Return the activation module for one hidden block of ``FFN``."""
    if activation is None:
        return nn.ReLU(inplace=True)
    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        module = activation()
        if not isinstance(module, nn.Module):
            raise ValueError(
                "FFN: expected the activation factory to return an nn.Module, got "
                f"{type(module).__name__}"
            )
        return module
    raise ValueError(
        "FFN: expected activation to be an nn.Module, a factory of one, or None, got "
        f"{type(activation).__name__}"
    )


class MLP(nn.Module):
    """A stack of Linear layers with ReLU between them (none after the last).

    Used for box regression heads and reference-point heads.

    Args:
        input_dim: input channels.
        hidden_dim: channels of every hidden layer.
        output_dim: output channels.
        num_layers: number of Linear layers, at least 1.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: expected num_layers >= 1, got num_layers={num_layers}")
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(in_dim, out_dim)
            for in_dim, out_dim in zip([input_dim] + hidden, hidden + [output_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x: [..., input_dim]`` to ``[..., output_dim]``."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < self.num_layers - 1:
                x = F.relu(x)
        return x
