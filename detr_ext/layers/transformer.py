"""Generic transformer layer driven by an operation order, and a stack of such layers.

``BaseTransformerLayer`` runs attentions, norms and FFNs in the order given by
``operation_order`` (e.g. ``("self_attn", "norm", "ffn", "norm")`` for a post-norm encoder
layer). Its submodules live in ``attentions``, ``ffns`` and ``norms``, numbered by
occurrence, which matches the detrex parameter names.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BaseTransformerLayer", "TransformerLayerSequence"]

_ATTENTION_OPS = ("self_attn", "cross_attn")
_VALID_OPS = frozenset(("self_attn", "cross_attn", "norm", "ffn"))


def _replicate(
    modules: nn.Module | Sequence[nn.Module], count: int, name: str, where: str
) -> list[nn.Module]:
    """Deep-copy a single module ``count`` times, or check that a list has ``count`` entries."""
    if isinstance(modules, nn.Module):
        return [copy.deepcopy(modules) for _ in range(count)]
    modules = list(modules)
    if len(modules) != count:
        raise ValueError(
            f"{where}: expected {count} {name} module(s) for the operation order, "
            f"got {len(modules)}"
        )
    for module in modules:
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"{where}: expected every {name} entry to be an nn.Module, "
                f"got {type(module).__name__}"
            )
    return modules


class BaseTransformerLayer(nn.Module):
    """A transformer layer whose sub-blocks run in a configurable order.

    Residuals live inside the attention and FFN modules. In pre-norm layers (the order starts
    with ``"norm"``) the residual of each attention / FFN is the input before the preceding
    norm, so it is passed explicitly as ``identity``; in post-norm layers ``identity`` is
    None and each block uses its own input.

    Args:
        attn: one attention module per ``"self_attn"`` / ``"cross_attn"`` in
            ``operation_order`` (in order), or a single module deep-copied for each.
        ffn: one module per ``"ffn"``, or a single module deep-copied for each.
        norm: one module per ``"norm"``, or a single module deep-copied for each.
        operation_order: sequence of ``"self_attn"``, ``"cross_attn"``, ``"norm"``, ``"ffn"``.
    """

    def __init__(
        self,
        attn: nn.Module | Sequence[nn.Module],
        ffn: nn.Module | Sequence[nn.Module],
        norm: nn.Module | Sequence[nn.Module],
        operation_order: Sequence[str],
    ) -> None:
        super().__init__()
        where = "BaseTransformerLayer"
        operation_order = tuple(operation_order)
        if not operation_order:
            raise ValueError(f"{where}: expected a non-empty operation_order, got ()")
        unknown = [op for op in operation_order if op not in _VALID_OPS]
        if unknown:
            raise ValueError(
                f"{where}: expected operation_order entries in {sorted(_VALID_OPS)}, "
                f"got unknown {unknown} in {operation_order}"
            )
        self.operation_order = operation_order
        self.num_attn = sum(op in _ATTENTION_OPS for op in operation_order)
        self.pre_norm = operation_order[0] == "norm"

        self.attentions = nn.ModuleList(
            _replicate(attn, self.num_attn, "attention", where) if self.num_attn else []
        )
        self.ffns = nn.ModuleList(
            _replicate(ffn, operation_order.count("ffn"), "ffn", where)
            if "ffn" in operation_order
            else []
        )
        self.norms = nn.ModuleList(
            _replicate(norm, operation_order.count("norm"), "norm", where)
            if "norm" in operation_order
            else []
        )
        if self.num_attn:
            first = self.attentions[0]
            if hasattr(first, "embed_dim"):
                self.embed_dim = first.embed_dim
            if hasattr(first, "batch_first"):
                self.batch_first = first.batch_first

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        attn_masks: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
        query_key_padding_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Run the operations in order.

        Args:
            query: ``[B, Q, C]`` (batch-first attentions).
            key: ``[B, K, C]`` for cross attention.
            value: ``[B, K, C]`` for cross attention.
            query_pos: ``[B, Q, C]`` positional embedding of the query (also used as the key
                position in self attention).
            key_pos: ``[B, K, C]`` positional embedding of the key in cross attention.
            attn_masks: one mask (or None) per attention op, or a single tensor used by all.
            query_key_padding_mask: ``[B, Q]`` bool, padding of the query in self attention.
            key_padding_mask: ``[B, K]`` bool, padding of the key in cross attention.
            **kwargs: passed to every attention (e.g. ``reference_points``,
                ``spatial_shapes``, ``level_start_index`` for deformable attention).

        Returns:
            ``[B, Q, C]``.
        """
        if attn_masks is None or isinstance(attn_masks, torch.Tensor):
            attn_masks = [attn_masks] * self.num_attn
        elif len(attn_masks) != self.num_attn:
            raise ValueError(
                f"BaseTransformerLayer: expected {self.num_attn} attn_masks (one per "
                f"attention op), got {len(attn_masks)}"
            )

        attn_index = norm_index = ffn_index = 0
        identity = query
        for op in self.operation_order:
            if op == "self_attn":
                query = self.attentions[attn_index](
                    query=query,
                    key=query,
                    value=query,
                    identity=identity if self.pre_norm else None,
                    query_pos=query_pos,
                    key_pos=query_pos,
                    attn_mask=attn_masks[attn_index],
                    key_padding_mask=query_key_padding_mask,
                    **kwargs,
                )
                attn_index += 1
                identity = query
            elif op == "norm":
                query = self.norms[norm_index](query)
                norm_index += 1
            elif op == "cross_attn":
                query = self.attentions[attn_index](
                    query=query,
                    key=key,
                    value=value,
                    identity=identity if self.pre_norm else None,
                    query_pos=query_pos,
                    key_pos=key_pos,
                    attn_mask=attn_masks[attn_index],
                    key_padding_mask=key_padding_mask,
                    **kwargs,
                )
                attn_index += 1
                identity = query
            else:  # "ffn"
                query = self.ffns[ffn_index](query, identity if self.pre_norm else None)
                ffn_index += 1
        return query


class TransformerLayerSequence(nn.Module):
    """A stack of transformer layers stored as ``layers`` (detrex parameter names).

    Projects usually subclass this and override ``forward`` (to refine reference points,
    collect intermediate outputs, ...); the default runs the layers one after another.

    Args:
        transformer_layers: a layer deep-copied ``num_layers`` times, or a list of
            ``num_layers`` layers.
        num_layers: number of layers.
    """

    def __init__(
        self,
        transformer_layers: nn.Module | Sequence[nn.Module],
        num_layers: int,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(
                f"TransformerLayerSequence: expected num_layers >= 1, got {num_layers}"
            )
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            _replicate(transformer_layers, num_layers, "layer", "TransformerLayerSequence")
        )
        first = self.layers[0]
        if hasattr(first, "embed_dim"):
            self.embed_dim = first.embed_dim
        self.pre_norm = getattr(first, "pre_norm", False)

    def forward(self, query: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Apply each layer to the previous layer's output; other arguments go to every layer.

        Args:
            query: ``[B, Q, C]``.

        Returns:
            ``[B, Q, C]``.
        """
        for layer in self.layers:
            query = layer(query, *args, **kwargs)
        return query
