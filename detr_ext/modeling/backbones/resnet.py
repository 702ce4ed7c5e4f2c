"""A LazyConfig-friendly builder for detectron2's ``ResNet`` backbone."""

from __future__ import annotations

from collections.abc import Sequence

from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

__all__ = ["build_resnet_backbone"]

_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_RES5_DILATION_STYLES = ("torchvision", "detectron2")


def build_resnet_backbone(
    depth: int = 50,
    out_features: Sequence[str] = ("res3", "res4", "res5"),
    norm: str = "FrozenBN",
    freeze_at: int = 1,
    res5_dilation: int = 1,
    res5_dilation_style: str = "torchvision",
    stride_in_1x1: bool = False,
    in_channels: int = 3,
    num_groups: int = 1,
    width_per_group: int = 64,
    base_channels: int = 64,
) -> ResNet:
    """Build detectron2's ``ResNet`` from plain arguments (no detectron2 ``cfg`` needed).

    The module is detectron2's own, so parameter names are detectron2's and detrex's, e.g.
    ``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ``res2.0.shortcut.weight`` (the
    shortcut exists in ``res2`` for depth >= 50 only). Stages after the last requested output
    are not built. Equivalent to the detrex config style
    ``L(ResNet)(stem=L(BasicStem)(...), stages=L(ResNet.make_default_stages)(...), ...)`` when
    ``res5_dilation == 1``.

    A dilated res5 ("DC5") comes in two variants with the same parameters but different
    outputs, so weights must run in the variant they were trained in:

    - ``"torchvision"``: torchvision's ``resnet50(replace_stride_with_dilation=[False, False,
      True])``: the first res5 block has stride 1 and dilation 1, the others dilation 2. The
      published DETR-DC5 checkpoints (facebookresearch/detr) were trained this way.
    - ``"detectron2"``: detectron2's ``MODEL.RESNETS.RES5_DILATION = 2``: every res5 block has
      dilation 2 (the first with stride 1).

    Args:
        depth: 18, 34 (BasicBlock, res2 has 64 channels) or 50, 101, 152 (BottleneckBlock,
            res2 has 256 channels).
        out_features: names among ``"stem", "res2", "res3", "res4", "res5"``; their strides
            are 4, 4, 8, 16, 32 (res5 stride 16 with ``res5_dilation=2``).
        norm: detectron2 norm name, e.g. ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"GN"``.
        freeze_at: detectron2 semantics: 0 freezes nothing, 1 the stem, 2 the stem and res2...
        res5_dilation: 1, or 2 for a dilated res5 (depth >= 50 only).
        res5_dilation_style: ``"torchvision"`` (first res5 block undilated) or
            ``"detectron2"`` (every res5 block dilated); used only when ``res5_dilation == 2``.
        stride_in_1x1: put the stride in the 1x1 conv of a bottleneck (MSRA/Caffe2 weights)
            instead of the 3x3 conv (torchvision weights).
        in_channels: number of input image channels.
        num_groups: groups of the bottleneck 3x3 conv (ResNeXt), depth >= 50 only.
        width_per_group: bottleneck width per group in res2.
        base_channels: stem width and, for depth 18/34, res2 width (doubling per stage);
            below 64 gives a slimmer network for small data and CPUs (no pretrained weights).

    Returns:
        A ``ResNet``; ``forward(x: [B, in_channels, H, W])`` returns
        ``{name: [B, C_name, H / stride_name, W / stride_name]}``.
    """
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"build_resnet_backbone: expected depth in {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
        )
    if res5_dilation not in (1, 2):
        raise ValueError(
            f"build_resnet_backbone: expected res5_dilation 1 or 2, got {res5_dilation}"
        )
    if res5_dilation_style not in _RES5_DILATION_STYLES:
        raise ValueError(
            f"build_resnet_backbone: expected res5_dilation_style in {_RES5_DILATION_STYLES}, "
            f"got {res5_dilation_style!r}"
        )
    basic = depth < 50
    if base_channels < 1 or (base_channels != 64 and not basic):
        raise ValueError(
            f"build_resnet_backbone: base_channels other than 64 needs depth 18 or 34, "
            f"got base_channels={base_channels} with depth {depth}"
        )
    if basic and (res5_dilation != 1 or num_groups != 1):
        raise ValueError(
            f"build_resnet_backbone: depth {depth} (BasicBlock) expects res5_dilation=1 and "
            f"num_groups=1, got res5_dilation={res5_dilation}, num_groups={num_groups}"
        )
    valid_names = ("stem", *_STAGE_NAMES)
    unknown = [name for name in out_features if name not in valid_names]
    if unknown or len(out_features) == 0:
        raise ValueError(
            f"build_resnet_backbone: expected out_features among {list(valid_names)}, "
            f"got {list(out_features)}"
        )

    stem_channels = base_channels
    stem = BasicStem(in_channels=in_channels, out_channels=stem_channels, norm=norm)
    stage_in_channels = stem_channels
    stage_out_channels = base_channels if basic else 256
    bottleneck_channels = num_groups * width_per_group
    stages = []
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        dilation = res5_dilation if index == 3 else 1
        first_stride = 1 if index == 0 or dilation == 2 else 2
        # torchvision's _make_layer(dilate=True) gives the first block the dilation of the
        # stage before (1) and only the following blocks the new one.
        first_dilation = 1 if res5_dilation_style == "torchvision" else dilation
        stage_kwargs = dict(
            num_blocks=num_blocks,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=stage_in_channels,
            out_channels=stage_out_channels,
            norm=norm,
        )
        if basic:
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=stride_in_1x1,
                dilation_per_block=[first_dilation] + [dilation] * (num_blocks - 1),
                num_groups=num_groups,
            )
        stages.append(ResNet.make_stage(**stage_kwargs))
        stage_in_channels = stage_out_channels
        stage_out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)
