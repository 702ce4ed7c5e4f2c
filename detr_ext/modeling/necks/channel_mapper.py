"""ChannelMapper: project backbone features to a common width, optionally adding coarser levels."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from detectron2.layers import ShapeSpec
from torch import Tensor, nn

__all__ = ["ChannelMapper", "ConvNormAct"]


class ConvNormAct(nn.Module):
    """A ``Conv2d`` followed by an optional norm and an optional activation.

    Submodules are named ``conv``, ``norm`` and ``activation`` (detrex's names), so parameters
    read ``conv.weight``, ``conv.bias``, ``norm.weight``, ``norm.bias``. The padding keeps the
    spatial size for ``stride=1``: ``dilation * (kernel_size - 1) // 2``.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size, stride, dilation, groups, bias: as for ``nn.Conv2d``.
        norm: a norm module over ``C_out`` channels (used as given, not copied), or None.
        activation: an activation module, or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, C_in, H, W]`` -> ``[B, C_out, H', W']`` (``H' = ceil(H / stride)`` for odd
        kernels)."""
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _norm_channels(norm: nn.Module | None) -> int | None:
    """The channel count a norm module was built for (GroupNorm's ``num_channels``, BatchNorm's
    ``num_features``, ), or None when it does not say."""
    for name in ("num_channels", "num_features"):
        if isinstance(getattr(norm, name, None), int):
            return getattr(norm, name)
    return None


class ChannelMapper(nn.Module):
    """Map selected backbone features to ``out_channels`` each, plus extra stride-2 levels.

    Each feature in ``in_features`` goes through its own ``ConvNormAct`` (``convs.{i}``, with
    the given kernel size, stride, bias, groups and dilation). When ``num_outs`` exceeds
    ``len(in_features)``, extra levels are made by 3x3 stride-2 ``ConvNormAct`` layers
    (``extra_convs.{j}``): the first takes the last *input* feature (so it has that feature's
    channel count as input, e.g. 2048 for a ResNet-50 res5), each next one takes the previous
    extra output. The norm and activation modules are deep-copied for every conv. This is the
    neck of detrex's Deformable DETR / DINO, with the same parameter names, e.g. for DINO
    4-scale: ``ChannelMapper(shapes, ["res3", "res4", "res5"], 256,
    norm_layer=nn.GroupNorm(32, 256), num_outs=4)``.

    Args:
        input_shapes: backbone output shapes, ``name -> ShapeSpec(channels, stride)``.
        in_features: the names to map, in output order (usually finest to coarsest).
        out_channels: channels ``C`` of every output.
        kernel_size, stride, bias, groups, dilation: of the per-feature convs.
        norm_layer: a norm module over ``out_channels`` channels (e.g. ``nn.GroupNorm(32, 256)``)
            used as a template, or None.
        activation: an activation module used as a template, or None.
        num_outs: number of outputs; default ``len(in_features)`` (no extra levels).
    """

    def __init__(
        self,
        input_shapes: dict[str, ShapeSpec],
        in_features: Sequence[str],
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        bias: bool = True,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: nn.Module | None = None,
        activation: nn.Module | None = None,
        num_outs: int | None = None,
    ) -> None:
        super().__init__()
        in_features = list(in_features)
        if len(in_features) == 0:
            raise ValueError("ChannelMapper: expected at least one name in in_features, got []")
        missing = [name for name in in_features if name not in input_shapes]
        if missing:
            raise ValueError(
                f"ChannelMapper: in_features {missing} not found in input_shapes; "
                f"expected names among {list(input_shapes)}"
            )
        no_channels = [name for name in in_features if input_shapes[name].channels is None]
        if no_channels:
            raise ValueError(f"ChannelMapper: input_shapes {no_channels} have channels=None")
        if num_outs is None:
            num_outs = len(in_features)
        if num_outs < len(in_features):
            raise ValueError(
                f"ChannelMapper: expected num_outs >= len(in_features) = {len(in_features)}, "
                f"got num_outs={num_outs}"
            )

        norm_channels = _norm_channels(norm_layer)
        if norm_channels is not None and norm_channels != out_channels:
            raise ValueError(
                f"ChannelMapper: expected norm_layer over out_channels={out_channels} channels, "
                f"got {norm_layer!r} ({norm_channels} channels); set both together (in a "
                'LazyConfig: num_channels="${..out_channels}")'
            )

        self.in_features = in_features
        self.out_channels = out_channels
        self.num_outs = num_outs

        def conv_norm_act(in_channels: int, **conv_kwargs) -> ConvNormAct:
            return ConvNormAct(
                in_channels,
                out_channels,
                bias=bias,
                norm=copy.deepcopy(norm_layer),
                activation=copy.deepcopy(activation),
                **conv_kwargs,
            )

        self.convs = nn.ModuleList(
            conv_norm_act(
                input_shapes[name].channels,
                kernel_size=kernel_size,
                stride=stride,
                groups=groups,
                dilation=dilation,
            )
            for name in in_features
        )
        last_in_channels = input_shapes[in_features[-1]].channels
        self.extra_convs = nn.ModuleList(
            conv_norm_act(last_in_channels if j == 0 else out_channels, kernel_size=3, stride=2)
            for j in range(num_outs - len(in_features))
        )

        strides = [
            None if input_shapes[name].stride is None else input_shapes[name].stride * stride
            for name in in_features
        ]
        extra_stride = input_shapes[in_features[-1]].stride
        for _ in self.extra_convs:
            extra_stride = None if extra_stride is None else extra_stride * 2
            strides.append(extra_stride)
        self._output_shapes = [ShapeSpec(channels=out_channels, stride=s) for s in strides]

    def output_shapes(self) -> list[ShapeSpec]:
        """Channels and stride (relative to the image; None if unknown) of each output level."""
        return list(self._output_shapes)

    def forward(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        """Map the features.

        Args:
            inputs: ``{name: [B, C_name, H_name, W_name]}``, containing every ``in_features``.

        Returns:
            ``num_outs`` tensors ``[B, out_channels, H_l, W_l]``: the mapped ``in_features`` in
            order, then the extra levels, each half the size of the one before.
        """
        missing = [name for name in self.in_features if name not in inputs]
        if missing:
            raise KeyError(
                f"ChannelMapper: expected inputs with keys {self.in_features}, "
                f"got {list(inputs)} (missing {missing})"
            )
        for conv, name in zip(self.convs, self.in_features):
            got = inputs[name].shape[1] if inputs[name].dim() == 4 else None
            if got != conv.conv.in_channels:
                raise ValueError(
                    f"ChannelMapper: expected input {name!r} as [B, {conv.conv.in_channels}, H, W] "
                    f"(input_shapes[{name!r}].channels), got shape {tuple(inputs[name].shape)}; "
                    "make the neck's input_shapes match the backbone's output_shape()"
                )
        outputs = [conv(inputs[name]) for conv, name in zip(self.convs, self.in_features)]
        extra_input = inputs[self.in_features[-1]]
        for extra_conv in self.extra_convs:
            extra_input = extra_conv(extra_input)
            outputs.append(extra_input)
        return outputs
