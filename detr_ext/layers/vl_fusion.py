"""Bi-directional image <-> text cross-attention (GLIP's ``BiMultiHeadAttention`` and Grounding
DINO's ``BiAttentionBlock``), the vision-language fusion of the Grounding-DINO feature enhancer.

One set of attention logits ``<v_proj(v), l_proj(l)> / sqrt(head_dim)`` between the ``N`` image
tokens and the ``T`` text tokens serves both directions: softmax over the text tokens updates the
image tokens (values ``values_l_proj(l)``), softmax over the image tokens (the transposed logits)
updates the text tokens (values ``values_v_proj(v)``). Module and parameter names follow
IDEA-Research's ``fuse_modules.py`` (``attn.v_proj`` ... ``gamma_l``) so their checkpoints map
one to one.

Numerics: the logits and both softmaxes run in float32 (or float64) with autocast off (bf16 /
fp16 logits of long prompts overflow or lose the ranking), each row is shifted by its maximum
over the valid keys and clamped to ``[-LOGIT_CLAMP, LOGIT_CLAMP]`` (GLIP's bounds, safe in half
precision), padded keys get probability exactly 0, and a row whose keys are all padding (an
empty prompt) attends to nothing instead of giving NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

__all__ = ["LOGIT_CLAMP", "BiAttentionBlock", "BiMultiHeadAttention"]

# GLIP / Grounding DINO clamp the fusion logits to this range; larger bounds overflow in fp16.
LOGIT_CLAMP = 50000.0


def _check_tokens(tokens: Tensor, dim: int, name: str, where: str) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[-1] != dim:
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{where}: expected {name} of shape [B, L, {dim}], got {got}")


def _check_padding_mask(mask: Tensor | None, tokens: Tensor, name: str, where: str) -> None:
    if mask is None:
        return
    expected = tuple(tokens.shape[:2])
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        got = (
            f"shape {tuple(mask.shape)}, dtype {mask.dtype}"
            if isinstance(mask, Tensor)
            else type(mask).__name__
        )
        raise ValueError(
            f"{where}: expected {name} as a bool tensor of shape {expected}, got {got}"
        )


def _masked_stable_softmax(logits: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """Softmax over the last dim that ignores padded keys and never gives NaN.

    Args:
        logits: ``[B, H, Q, K]`` float32.
        key_padding_mask: ``[B, K]`` bool, True on padded keys, or None.

    Returns:
        ``[B, H, Q, K]`` probabilities; 0 on padded keys, all 0 in a row without valid keys.
    """
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask[:, None, None, :]
        # A finite fill: a row of only padded keys then stays finite (uniform, zeroed below)
        # where -inf would give NaN.
        logits = logits.masked_fill(key_padding_mask, torch.finfo(logits.dtype).min)
    logits = logits - logits.amax(dim=-1, keepdim=True)
    logits = logits.clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP)
    probs = logits.softmax(dim=-1)
    if key_padding_mask is not None:
        probs = probs.masked_fill(key_padding_mask, 0.0)
    return probs


class BiMultiHeadAttention(nn.Module):
    """Multi-head cross-attention between image tokens and text tokens, in both directions.

    Args:
        v_dim: channels ``C_v`` of the image tokens.
        l_dim: channels ``C_l`` of the text tokens.
        embed_dim: width of the shared attention space (split over the heads).
        num_heads: attention heads; must divide ``embed_dim``.
        dropout: dropout on the attention probabilities (both directions).
    """

    def __init__(
        self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if num_heads <= 0 or embed_dim <= 0 or embed_dim % num_heads != 0:
            raise ValueError(
                "BiMultiHeadAttention: expected a positive embed_dim divisible by a positive "
                f"num_heads, got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        self.v_dim = v_dim
        self.l_dim = l_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout

        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases (GLIP's initialisation)."""
        for projection in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def _split_heads(self, tokens: Tensor) -> Tensor:
        """``[B, L, embed_dim]`` -> ``[B, H, L, head_dim]``."""
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, tokens: Tensor) -> Tensor:
        """``[B, H, L, head_dim]`` -> ``[B, L, embed_dim]``."""
        batch, _, length, _ = tokens.shape
        return tokens.transpose(1, 2).reshape(batch, length, self.embed_dim)

    def forward(
        self,
        v: Tensor,
        l: Tensor,  # noqa: E741 (IDEA's name of the text tokens)
        attention_mask_v: Tensor | None = None,
        attention_mask_l: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attend image -> text and text -> image.

        Args:
            v: ``[B, N, C_v]`` image tokens.
            l: ``[B, T, C_l]`` text tokens.
            attention_mask_v: ``[B, N]`` bool, True on padded image positions (never attended
                by the text tokens), or None.
            attention_mask_l: ``[B, T]`` bool, True on padded text tokens (never attended by
                the image tokens), or None.

        Returns:
            ``(delta_v [B, N, C_v], delta_l [B, T, C_l])``: the attention outputs (no residual).
        """
        where = "BiMultiHeadAttention"
        _check_tokens(v, self.v_dim, "v (image tokens)", where)
        _check_tokens(l, self.l_dim, "l (text tokens)", where)
        if v.shape[0] != l.shape[0]:
            raise ValueError(
                f"{where}: expected image and text tokens with the same batch size, got "
                f"{v.shape[0]} and {l.shape[0]}"
            )
        _check_padding_mask(attention_mask_v, v, "attention_mask_v", where)
        _check_padding_mask(attention_mask_l, l, "attention_mask_l", where)

        query_v = self._split_heads(self.v_proj(v))
        key_l = self._split_heads(self.l_proj(l))
        value_v = self._split_heads(self.values_v_proj(v))
        value_l = self._split_heads(self.values_l_proj(l))
        # At least float32 (float64 stays float64); the projections' dtype again afterwards.
        compute_dtype = torch.promote_types(query_v.dtype, torch.float32)
        with torch.autocast(device_type=v.device.type, enabled=False):
            # [B, H, N, T]; the image -> text direction reads rows, text -> image columns.
            logits = (query_v.to(compute_dtype) * self.scale) @ key_l.to(compute_dtype).transpose(
                -1, -2
            )
            probs_v = _masked_stable_softmax(logits, attention_mask_l)
            probs_l = _masked_stable_softmax(logits.transpose(-1, -2), attention_mask_v)
            probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
            probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
            output_v = probs_v @ value_l.to(compute_dtype)  # [B, H, N, head_dim]
            output_l = probs_l @ value_v.to(compute_dtype)  # [B, H, T, head_dim]
        delta_v = self.out_v_proj(self._merge_heads(output_v.to(value_l.dtype)))
        delta_l = self.out_l_proj(self._merge_heads(output_l.to(value_v.dtype)))
        return delta_v, delta_l

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, dropout={self.dropout}"


class BiAttentionBlock(nn.Module):
    """Pre-norm bi-directional fusion block with layer-scale residuals and DropPath.

    ``v' = LN_v(v) + drop_path(gamma_v * delta_v)`` and ``l' = LN_l(l) + drop_path(gamma_l *
    delta_l)``, with ``(delta_v, delta_l) = attn(LN_v(v), LN_l(l))``. As in GLIP and Grounding
    DINO the residual starts from the *normalized* tokens (so their checkpoints keep their
    meaning); the small ``gamma`` (``init_values``) lets training start from near-identity
    fusion.

    Args:
        v_dim: channels ``C_v`` of the image tokens.
        l_dim: channels ``C_l`` of the text tokens.
        embed_dim: width of the attention space.
        num_heads: attention heads.
        dropout: dropout on the attention probabilities.
        drop_path: stochastic-depth rate of both residual branches.
        init_values: initial value of the layer-scale vectors ``gamma_v`` / ``gamma_l``.
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        init_values: float = 1e-4,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"BiAttentionBlock: expected 0 <= drop_path < 1, got {drop_path}")
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self,
        v: Tensor,
        l: Tensor,  # noqa: E741 (IDEA's name of the text tokens)
        attention_mask_v: Tensor | None = None,
        attention_mask_l: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Fuse image and text tokens.

        Args:
            v: ``[B, N, C_v]`` image tokens.
            l: ``[B, T, C_l]`` text tokens.
            attention_mask_v: ``[B, N]`` bool, True on padded image positions, or None.
            attention_mask_l: ``[B, T]`` bool, True on padded text tokens, or None.

        Returns:
            ``(v' [B, N, C_v], l' [B, T, C_l])``.
        """
        _check_tokens(v, self.attn.v_dim, "v (image tokens)", "BiAttentionBlock")
        _check_tokens(l, self.attn.l_dim, "l (text tokens)", "BiAttentionBlock")
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(l)  # noqa: E741
        delta_v, delta_l = self.attn(
            v, l, attention_mask_v=attention_mask_v, attention_mask_l=attention_mask_l
        )
        v = v + self.drop_path(self.gamma_v * delta_v)
        l = l + self.drop_path(self.gamma_l * delta_l)  # noqa: E741
        return v, l
