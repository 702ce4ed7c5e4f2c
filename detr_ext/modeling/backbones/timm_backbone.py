"""A detectron2 ``Backbone`` over any timm model that supports ``features_only``."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from typing import Any

import timm
import torch
from detectron2.modeling.backbone import Backbone
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["TimmBackbone"]


def _timm_norm_layer(norm_layer: Any) -> Any:
    """``norm_layer`` made to accept the ``device`` / ``dtype`` keyword arguments timm (>= 1.0)
    passes to every norm layer, when it does not take them itself (detectron2's and
    torchvision's ``FrozenBatchNorm2d``: "unexpected keyword argument 'device'")."""
    try:
        parameters = inspect.signature(norm_layer).parameters
    except (TypeError, ValueError):
        return norm_layer
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "device" in parameters or takes_any:
        return norm_layer

    def make(*args: Any, device: Any = None, dtype: Any = None, **kwargs: Any) -> nn.Module:
        layer = norm_layer(*args, **kwargs)
        if device is not None or dtype is not None:
            layer = layer.to(device=device, dtype=dtype)
        return layer

    make.__name__ = make.__qualname__ = getattr(norm_layer, "__name__", "norm_layer")
    return make


class TimmBackbone(Backbone):
    """Multi-scale feature maps from a timm model, as a detectron2 ``Backbone``.

    The timm model is built with ``features_only=True``; feature level ``i`` (timm's
    ``feature_info`` numbering, e.g. for ResNets level 0 is the stride-2 stem and level 1 is
    ``layer1``) is returned under the name ``"p{i}"``, the naming detrex's ``TimmBackbone`` uses.
    The timm model lives in the ``timm_model`` attribute, so its parameters are named
    ``timm_model.<timm feature-wrapper name>`` (e.g. ``timm_model.layer1.0.conv1.weight``).

    Freezing: ``freeze_at = k > 0`` sets ``requires_grad=False`` on every parameter of the
    stem and of the modules producing feature levels ``0 .. k-1`` (everything registered before
    and inside the module of level ``k-1``). BatchNorm layers among them are kept in eval mode
    whenever the backbone is put in train mode, so their running statistics stay fixed too;
    the state-dict keys stay timm's (they are not converted to ``FrozenBatchNorm2d``). For a
    ResNet, ``freeze_at=1`` freezes the stem and ``freeze_at=2`` the stem and ``layer1``, like
    detectron2's ``freeze_at``; for ConvNeXt (whose level 0 is ``stages.0``) ``freeze_at=1``
    freezes the stem and ``stages.0``.

    Args:
        model_name: a timm model name, e.g. ``"resnet50"`` or ``"convnext_tiny"``.
        features_only: must be True (kept for detrex config compatibility).
        pretrained: load timm's pretrained weights (needs the weights cached or reachable).
        checkpoint_path: a local checkpoint for the full (classification) timm model, either a
            state dict or a dict holding one under ``"state_dict"`` / ``"model"``; when given
            it is loaded (whatever ``pretrained`` says) before timm wraps the model for features.
        in_channels: number of input image channels.
        out_indices: the feature levels to compute, e.g. ``(1, 2, 3)`` for strides 4/8/16 of
            a ResNet; negative indices count from the last level.
        norm_layer: optional norm layer passed to ``timm.create_model`` (for models that take
            one, e.g. ResNets), e.g. ``detectron2.layers.FrozenBatchNorm2d``. timm passes
            ``device`` / ``dtype`` to norm layers; a layer class that takes neither (detectron2's
            and torchvision's ``FrozenBatchNorm2d``) is wrapped to accept them.
        freeze_at: number of leading feature levels frozen (with the stem); 0 freezes nothing.
        out_features: the output names returned by ``forward``, a subset of
            ``["p{i}" for i in out_indices]``; default all of them.
        model_kwargs: further keyword arguments for ``timm.create_model``
            (e.g. ``{"drop_path_rate": 0.1}``).
    """

    def __init__(
        self,
        model_name: str,
        features_only: bool = True,
        pretrained: bool = False,
        checkpoint_path: str = "",
        in_channels: int = 3,
        out_indices: Sequence[int] = (1, 2, 3),
        norm_layer: Any = None,
        freeze_at: int = 0,
        out_features: Sequence[str] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not features_only:
            raise ValueError(
                "TimmBackbone: expected features_only=True (a backbone returns feature maps), "
                "got features_only=False"
            )
        _check_model_name(model_name)
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) == 0:
            raise ValueError("TimmBackbone: expected at least one out index, got out_indices=()")

        create_kwargs: dict[str, Any] = dict(model_kwargs or {})
        if norm_layer is not None:
            create_kwargs["norm_layer"] = _timm_norm_layer(norm_layer)
        if checkpoint_path:
            if not os.path.isfile(checkpoint_path):
                raise FileNotFoundError(
                    f"TimmBackbone({model_name!r}): checkpoint_path {checkpoint_path!r} "
                    "is not a file"
                )
            pretrained = True
            create_kwargs["pretrained_cfg_overlay"] = dict(file=checkpoint_path)

        try:
            self.timm_model = timm.create_model(
                model_name,
                features_only=True,
                pretrained=pretrained,
                in_chans=in_channels,
                out_indices=out_indices,
                **create_kwargs,
            )
        except IndexError as err:  # timm's error for an out index past the last level
            num_levels = _num_feature_levels(model_name, in_channels, create_kwargs)
            raise ValueError(
                f"TimmBackbone({model_name!r}): expected out_indices in "
                f"[-{num_levels}, {num_levels}) (the model has {num_levels} feature levels), "
                f"got {out_indices}"
            ) from err
        num_levels = len(self.timm_model.feature_info.info)
        resolved = [i + num_levels if i < 0 else i for i in out_indices]
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                f"TimmBackbone({model_name!r}): expected distinct feature levels in out_indices, "
                f"got {out_indices} (levels {resolved})"
            )
        if not 0 <= freeze_at <= num_levels:
            raise ValueError(
                f"TimmBackbone({model_name!r}): expected freeze_at in [0, {num_levels}], "
                f"got {freeze_at}"
            )
        self.in_channels = in_channels
        feature_info = self.timm_model.feature_info
        self._all_features = [f"p{i}" for i in resolved]
        channels = dict(zip(self._all_features, feature_info.channels()))
        strides = dict(zip(self._all_features, feature_info.reduction()))

        if out_features is None:
            out_features = self._all_features
        unknown = [name for name in out_features if name not in self._all_features]
        if unknown or len(out_features) == 0:
            raise ValueError(
                f"TimmBackbone({model_name!r}): expected out_features among "
                f"{self._all_features} (from out_indices={out_indices}), got {list(out_features)}"
            )
        self._out_features = list(out_features)
        self._out_feature_channels = {name: channels[name] for name in self._out_features}
        self._out_feature_strides = {name: strides[name] for name in self._out_features}

        self._frozen_norm_names: tuple[str, ...] = ()
        if freeze_at > 0:
            self._freeze(freeze_at, max(resolved))
        self.train()

    def _freeze(self, freeze_at: int, last_out_index: int) -> None:
        """Freeze everything up to and including the module of feature level ``freeze_at - 1``."""
        modules = dict(self.timm_model.named_modules())
        target = None
        if freeze_at - 1 <= last_out_index:
            level_module = self.timm_model.feature_info.get("module", freeze_at - 1)
            # timm's feature wrappers flatten the first level of names ("stages.0" ->
            # "stages_0") or keep the whole model under ``model``.
            candidates = (level_module, level_module.replace(".", "_", 1), f"model.{level_module}")
            target = next((name for name in candidates if name in modules), None)
            if target is None:
                raise RuntimeError(
                    f"TimmBackbone: cannot find the module {level_module!r} of feature level "
                    f"{freeze_at - 1} in the timm feature model; tried {candidates}"
                )
        # Past the last computed level the wrapper holds only modules that precede the target.
        frozen_norms = []
        seen_target = False
        for name, module in modules.items():
            in_target = target is not None and (name == target or name.startswith(target + "."))
            if seen_target and not in_target:
                break
            seen_target = seen_target or in_target
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
            if isinstance(module, _BatchNorm):
                frozen_norms.append(name)
        self._frozen_norm_names = tuple(frozen_norms)

    def train(self, mode: bool = True) -> TimmBackbone:
        """Set train/eval mode, keeping the frozen BatchNorm layers in eval mode."""
        super().train(mode)
        for name in self._frozen_norm_names:
            self.timm_model.get_submodule(name).eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Compute the feature maps.

        Args:
            x: ``[B, in_channels, H, W]`` images.

        Returns:
            ``{name: [B, C_name, ~H / stride_name, ~W / stride_name]}`` for each out feature.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"TimmBackbone: expected input of shape [B, {self.in_channels}, H, W], "
                f"got {tuple(x.shape)}"
            )
        features = dict(zip(self._all_features, self.timm_model(x)))
        return {name: features[name] for name in self._out_features}


def _check_model_name(model_name: str) -> None:
    """Raise a ValueError with close matches when timm does not know ``model_name``."""
    if ":" in model_name or timm.is_model(model_name):  # "hf-hub:..." names are resolved by timm
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
    family = (close[0] if close else model_name).split("_")[0].rstrip("0123456789") + "*"
    raise ValueError(
        f"TimmBackbone: unknown timm model {model_name!r}; close matches: {close}. "
        f"List the available names with timm.list_models({family!r}) "
        f"(first ones: {timm.list_models(family)[:8]})"
    )


def _num_feature_levels(model_name: str, in_channels: int, create_kwargs: dict[str, Any]) -> int:
    """The number of feature levels timm offers for ``model_name`` (built on the meta device,
    so nothing is allocated or loaded)."""
    probe_kwargs = {k: v for k, v in create_kwargs.items() if k != "pretrained_cfg_overlay"}
    with torch.device("meta"):
        probe = timm.create_model(
            model_name, features_only=True, pretrained=False, in_chans=in_channels, **probe_kwargs
        )
    return len(probe.feature_info.info)
