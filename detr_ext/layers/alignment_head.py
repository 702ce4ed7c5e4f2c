"""Region-token alignment head: the classifier of text-prompted detectors (GLIP, Grounding DINO).

Instead of a fixed ``Linear(C, num_classes)``, each query is scored against each text token of
the prompt, so the "classes" are whatever the prompt names. A phrase's score is then read from
its tokens (the detector's job, through the positive maps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MASKED_LOGIT", "TokenAlignmentHead"]

# Logit of a padded text token: finite (no NaN in losses or under half precision, where -1e4
# is still representable) and low enough that sigmoid gives 0 and focal loss with target 0
# gives 0.
MASKED_LOGIT = -1e4

# CLIP caps its temperature-inverted scale at 100 so training cannot make the logits explode.
_MAX_COSINE_SCALE = 100.0


class TokenAlignmentHead(nn.Module):
    """Scores every query against every text token.

    - ``normalize=False`` (GLIP / Grounding DINO dot product):
      ``logits[b, q, t] = exp(logit_scale) * <x_q, text_t> / sqrt(C) + bias``;
    - ``normalize=True`` (CLIP): ``exp(logit_scale) * cos(x_q, text_t) + bias``, the scale
      capped at 100 as in CLIP.

    ``logit_scale`` and ``bias`` are learnable scalars; ``logit_scale`` starts at
    ``log(init_scale)`` and ``bias`` at the focal-loss prior ``-log((1 - p) / p)``, so every
    token starts with probability about ``prior_prob``. Padded text tokens get
    :data:`MASKED_LOGIT`. The logits are computed in float32 (float64 for float64 inputs), even
    under autocast.

    IDEA's Grounding DINO uses the plain ``x @ text^T`` (``ContrastiveEmbed``, no parameters):
    ``logit_scale = log(sqrt(C))`` with ``bias = 0`` reproduces it.

    Args:
        embed_dim: channels ``C`` of queries and text tokens.
        normalize: cosine similarity (True) or scaled dot product (False).
        prior_prob: initial probability of every (query, token) pair.
        init_scale: initial value of ``exp(logit_scale)``; must be positive.
    """

    def __init__(
        self,
        embed_dim: int,
        normalize: bool = False,
        prior_prob: float = 0.01,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if embed_dim <= 0:
            raise ValueError(f"TokenAlignmentHead: expected a positive embed_dim, got {embed_dim}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(
                f"TokenAlignmentHead: expected 0 < prior_prob < 1, got prior_prob={prior_prob}"
            )
        if init_scale <= 0.0:
            raise ValueError(
                f"TokenAlignmentHead: expected a positive init_scale, got init_scale={init_scale}"
            )
        self.embed_dim = embed_dim
        self.normalize = normalize
        self.prior_prob = prior_prob
        self.init_scale = init_scale
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``logit_scale = log(init_scale)``, ``bias = -log((1 - prior_prob) / prior_prob)``."""
        nn.init.constant_(self.logit_scale, math.log(self.init_scale))
        nn.init.constant_(self.bias, -math.log((1.0 - self.prior_prob) / self.prior_prob))

    def forward(
        self, queries: Tensor, text: Tensor, text_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Align queries with text tokens.

        Args:
            queries: ``[B, Q, C]`` decoder states or encoder proposals.
            text: ``[B, T, C]`` text tokens (already in the queries' space).
            text_padding_mask: ``[B, T]`` bool, True on padded tokens, or None.

        Returns:
            ``[B, Q, T]`` logits, float32 (float64 for float64 inputs); :data:`MASKED_LOGIT` at
            padded tokens.
        """
        where = "TokenAlignmentHead"
        for name, tokens in (("queries", queries), ("text", text)):
            if not isinstance(tokens, Tensor) or tokens.dim() != 3:
                got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
                raise ValueError(f"{where}: expected {name} of shape [B, L, C], got {got}")
            if tokens.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"{where}: expected {name} with {self.embed_dim} channels, got "
                    f"shape {tuple(tokens.shape)}"
                )
        if queries.shape[0] != text.shape[0]:
            raise ValueError(
                f"{where}: expected queries and text with the same batch size, got "
                f"{queries.shape[0]} and {text.shape[0]}"
            )
        if text_padding_mask is not None and (
            not isinstance(text_padding_mask, Tensor)
            or text_padding_mask.dtype != torch.bool
            or text_padding_mask.shape != text.shape[:2]
        ):
            got = (
                f"shape {tuple(text_padding_mask.shape)}, dtype {text_padding_mask.dtype}"
                if isinstance(text_padding_mask, Tensor)
                else type(text_padding_mask).__name__
            )
            raise ValueError(
                f"{where}: expected text_padding_mask as a bool tensor of shape "
                f"{tuple(text.shape[:2])}, got {got}"
            )

        # At least float32 (float64 stays float64), whatever autocast would pick.
        compute_dtype = torch.promote_types(queries.dtype, torch.float32)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            queries = queries.to(compute_dtype)
            text = text.to(compute_dtype)
            if self.normalize:
                scale = self.logit_scale.to(compute_dtype).exp().clamp(max=_MAX_COSINE_SCALE)
                similarity = F.normalize(queries, dim=-1) @ F.normalize(text, dim=-1).transpose(
                    -1, -2
                )
            else:
                scale = self.logit_scale.to(compute_dtype).exp()
                similarity = (queries @ text.transpose(-1, -2)) / math.sqrt(self.embed_dim)
            logits = scale * similarity + self.bias.to(compute_dtype)
            if text_padding_mask is not None:
                logits = logits.masked_fill(text_padding_mask[:, None, :], MASKED_LOGIT)
        return logits

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, normalize={self.normalize}, "
            f"prior_prob={self.prior_prob}, init_scale={self.init_scale}"
        )
