"""A detectron2 ``Backbone`` over any timm model that supports ``features_only``."""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import timm
import torch
from detectron2.modeling.backbone import Backbone
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .timm_checkpoint import load_timm_checkpoint

__all__ = ["TimmBackbone"]

logger = logging.getLogger(__name__)

# timm options that let a fixed-input-size model (Swin, ViT, ...) take any image size, tried in
# this order; the first set the model accepts is used unless model_kwargs set one of them.
_ANY_SIZE_OPTIONS = (
    {"dynamic_img_size": True, "dynamic_img_pad": True},
    {"dynamic_img_size": True},
    {"strict_img_size": False},
)


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
    ``out_indices`` may be given in any order and with negative indices: the levels are sorted,
    and ``output_shape()`` and ``forward`` list them from the finest to the coarsest, each
    ``"p{i}"`` always holding level ``i``. The timm model lives in the ``timm_model`` attribute,
    so its parameters are named ``timm_model.<timm feature-wrapper name>`` (e.g.
    ``timm_model.layer1.0.conv1.weight``; timm's wrapper renames ``stages.0`` to ``stages_0``).

    Maps are always ``[B, C, H, W]``: models whose timm features are channels-last (Swin:
    ``output_fmt="NHWC"``) are permuted. Models built for one input size (Swin, ViT) are
    created with the first of timm's ``dynamic_img_size=True, dynamic_img_pad=True`` /
    ``dynamic_img_size=True`` / ``strict_img_size=False`` they accept, unless ``model_kwargs``
    sets one of these, so they take any image size. A model that cannot pad its input
    (Swin) needs height and width divisible by its patch size (4), e.g. through the detector's
    ``size_divisibility``; ``forward`` raises a ValueError saying so otherwise.

    Freezing: ``freeze_at = k > 0`` sets ``requires_grad=False`` on every parameter of the
    stem and of the modules producing feature levels ``0 .. k-1`` (everything registered before
    and inside the module of level ``k-1``). BatchNorm layers among them are kept in eval mode
    whenever the backbone is put in train mode, so their running statistics stay fixed too;
    the state-dict keys stay timm's (they are not converted to ``FrozenBatchNorm2d``). For a
    ResNet, ``freeze_at=1`` freezes the stem and ``freeze_at=2`` the stem and ``layer1``, like
    detectron2's ``freeze_at``; for ConvNeXt (whose level 0 is ``stages.0``) ``freeze_at=1``
    freezes the stem and ``stages.0``.

    With ``pretrained=True`` or a ``checkpoint_path``, ``expected_pixel_statistics`` holds the
    input normalization the weights were trained with, ``(mean, std)`` in RGB order on the
    0-255 scale, from timm's ``pretrained_cfg`` for ``model_name`` (``None`` without weights);
    ``DetectorBase`` logs a warning when its ``pixel_mean`` / ``pixel_std`` differ.

    Args:
        model_name: a timm model name, e.g. ``"resnet50"`` or ``"convnext_tiny"``.
        features_only: must be True (kept for detrex config compatibility).
        pretrained: load timm's pretrained weights (needs the weights cached or reachable).
        checkpoint_path: a local checkpoint (``torch.save`` file or ``.safetensors``) of the
            timm model, loaded instead of timm's weights (whatever ``pretrained`` says). It
            holds a state dict bare or under ``"state_dict"`` / ``"model"`` /
            ``"state_dict_ema"``, named like timm's classification model (``stages.0...``) or
            like this backbone's ``timm_model`` (``stages_0...``), optionally all behind one of
            the prefixes ``module.``, ``model.``, ``backbone.``, ``timm_model.``,
            ``backbone.timm_model.``. Every weight the feature maps use must be there with its
            shape, and no key may be foreign to the model: otherwise a ValueError lists them.
            Classifier-head keys and keys of layers the feature model drops are skipped (logged
            at INFO). A first conv trained on 3 channels is adapted to ``in_channels`` as timm
            does. Checkpoints in a model's original (non-timm) format must first go through
            timm's converter (``pretrained_cfg_overlay=dict(file=...)`` on the full model).
        in_channels: number of input image channels.
        out_indices: the feature levels to compute, e.g. ``(1, 2, 3)`` for strides 4/8/16 of
            a ResNet; negative indices count from the last level; any order.
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
        where = f"TimmBackbone({model_name!r})"
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) == 0:
            raise ValueError("TimmBackbone: expected at least one out index, got out_indices=()")
        create_kwargs: dict[str, Any] = dict(model_kwargs or {})
        if norm_layer is not None:
            create_kwargs["norm_layer"] = _timm_norm_layer(norm_layer)
        if checkpoint_path and not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"{where}: checkpoint_path {checkpoint_path!r} is not a file")

        probe = _build_probe(model_name, in_channels, create_kwargs)
        num_levels = len(probe.feature_info.info)
        levels = _resolve_out_indices(where, out_indices, num_levels)
        if not 0 <= freeze_at <= num_levels:
            raise ValueError(f"{where}: expected freeze_at in [0, {num_levels}], got {freeze_at}")
        declared_fmt = getattr(probe, "output_fmt", None) or "NCHW"  # timm's Format or a str
        output_fmt = str(getattr(declared_fmt, "value", declared_fmt))
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(
                f"{where}: expected a model with 2-D feature maps (timm output_fmt NCHW or "
                f"NHWC), got output_fmt {output_fmt!r}"
            )
        if _patch_embed(probe) is not None and not any(
            key in create_kwargs for option in _ANY_SIZE_OPTIONS for key in option
        ):
            create_kwargs.update(_any_size_options(model_name, in_channels, create_kwargs))

        self.timm_model = timm.create_model(
            model_name,
            features_only=True,
            pretrained=pretrained and not checkpoint_path,
            in_chans=in_channels,
            out_indices=levels,
            **create_kwargs,
        )
        if checkpoint_path:
            full = _build_probe(model_name, in_channels, create_kwargs, features=False)
            load_timm_checkpoint(self.timm_model, checkpoint_path, model_name, in_channels, full)
        self.expected_pixel_statistics: tuple[list[float], list[float]] | None = None
        if pretrained or checkpoint_path:
            self.expected_pixel_statistics = _pretrained_statistics(self.timm_model, in_channels)

        self.model_name = model_name
        self.in_channels = in_channels
        self._channels_last = output_fmt == "NHWC"
        feature_info = self.timm_model.feature_info
        self._all_features = [f"p{i}" for i in levels]
        channels = {f"p{i}": feature_info.get("num_chs", i) for i in levels}
        strides = {f"p{i}": feature_info.get("reduction", i) for i in levels}
        self._max_stride = max(strides.values())
        # What the patch embedding (Swin, ViT) takes, as plain values for forward.
        patch_embed = _patch_embed(self.timm_model)
        self._fixed_img_size: tuple[int, int] | None = None
        self._unpadded_patch_size: tuple[int, int] | None = None
        if patch_embed is not None and patch_embed.strict_img_size:
            self._fixed_img_size = tuple(patch_embed.img_size)
        if patch_embed is not None and not getattr(patch_embed, "dynamic_img_pad", False):
            self._unpadded_patch_size = tuple(patch_embed.patch_size)
        if out_features is None:
            out_features = self._all_features
        unknown = [name for name in out_features if name not in self._all_features]
        if unknown or len(out_features) == 0:
            raise ValueError(
                f"{where}: expected out_features among {self._all_features} "
                f"(from out_indices={out_indices}), got {list(out_features)}"
            )
        self._out_features = list(out_features)
        self._out_feature_channels = {name: channels[name] for name in self._out_features}
        self._out_feature_strides = {name: strides[name] for name in self._out_features}

        self._frozen_norm_names: tuple[str, ...] = ()
        if freeze_at > 0:
            self._freeze(freeze_at, max(levels))
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
        self._check_input_size(x.shape[-2], x.shape[-1])
        maps = self.timm_model(x)
        if isinstance(maps, dict):  # feature_cls="dict" in model_kwargs
            maps = list(maps.values())
        if self._channels_last:  # timm's [B, H, W, C] (Swin)
            maps = [m.permute(0, 3, 1, 2).contiguous() for m in maps]
        features = dict(zip(self._all_features, maps))
        return {name: features[name] for name in self._out_features}

    def _check_input_size(self, height: int, width: int) -> None:
        """Raise a ValueError for an image size the model's patch embedding cannot take."""
        where = f"TimmBackbone({self.model_name!r})"
        if self._fixed_img_size is not None and (height, width) != self._fixed_img_size:
            raise ValueError(
                f"{where}: expected {self._fixed_img_size} images (the model was built with "
                f"strict_img_size=True), got {height}x{width}; leave strict_img_size / "
                "dynamic_img_size out of model_kwargs to accept any size"
            )
        if self._unpadded_patch_size is None:
            return
        patch_height, patch_width = self._unpadded_patch_size
        if height % patch_height or width % patch_width:
            divisor = math.lcm(patch_height, patch_width, self._max_stride)
            raise ValueError(
                f"{where}: expected image height and width divisible by the patch size "
                f"{patch_height}x{patch_width} (the model cannot pad its input), got "
                f"{height}x{width}; set model.size_divisibility={divisor} in the config so "
                "the detector pads its batches to a multiple of it"
            )


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


def _build_probe(
    model_name: str, in_channels: int, create_kwargs: dict[str, Any], features: bool = True
) -> nn.Module:
    """The timm model without weights, its features-only form or (``features=False``) the
    full classification model, on the meta device when it can be (nothing is allocated)."""
    kwargs = dict(create_kwargs)
    if not features:
        kwargs.pop("feature_cls", None)
    kwargs.update(pretrained=False, in_chans=in_channels, features_only=features)
    try:
        with torch.device("meta"):
            return timm.create_model(model_name, **kwargs)
    except (RuntimeError, NotImplementedError):  # initialization code that needs real data
        return timm.create_model(model_name, **kwargs)


def _resolve_out_indices(where: str, out_indices: tuple[int, ...], num_levels: int) -> list[int]:
    """``out_indices`` as distinct feature levels in ``[0, num_levels)``, sorted: timm returns
    the maps in the order of the model's modules, so the names must follow that order."""
    if not all(-num_levels <= i < num_levels for i in out_indices):
        raise ValueError(
            f"{where}: expected out_indices in [-{num_levels}, {num_levels}) (the model has "
            f"{num_levels} feature levels), got {out_indices}"
        )
    levels = [i + num_levels if i < 0 else i for i in out_indices]
    if len(set(levels)) != len(levels):
        raise ValueError(
            f"{where}: expected distinct feature levels in out_indices, got {out_indices} "
            f"(levels {levels})"
        )
    return sorted(levels)


def _patch_embed(model: nn.Module) -> nn.Module | None:
    """The model's timm patch embedding (the module with ``strict_img_size``), if any."""
    return next(
        (m for m in model.modules() if hasattr(m, "strict_img_size") and hasattr(m, "patch_size")),
        None,
    )


def _any_size_options(
    model_name: str, in_channels: int, create_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The first of ``_ANY_SIZE_OPTIONS`` the model's constructor accepts ({} if none)."""
    for options in _ANY_SIZE_OPTIONS:
        try:
            _build_probe(model_name, in_channels, {**create_kwargs, **options})
        except TypeError as err:  # "unexpected keyword argument 'dynamic_img_pad'"
            if any(key in str(err) for key in options):
                continue
            raise
        return dict(options)
    return {}


def _pretrained_statistics(
    model: nn.Module, in_channels: int
) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` on the 0-255 scale from timm's ``pretrained_cfg`` (RGB order)."""
    config = getattr(model, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean is None or std is None or not len(mean) == len(std) == in_channels:
        return None
    return [float(m) * 255.0 for m in mean], [float(s) * 255.0 for s in std]
