"""Loading trained weights for inference and evaluation, strictly enough to trust the result.

detectron2's ``DetectionCheckpointer`` is lenient because fine-tuning needs it: a parameter
whose shape differs from the model's is skipped with a warning and keeps its random
initialisation, and an empty path loads nothing. When weights are loaded to *use* a model
(evaluation, the demo), either means a silently random model. :func:`load_model_weights`
loads through detectron2's checkpointer (same file formats, URL handlers, heuristics) but
raises :class:`CheckpointMismatchError` when a tensor's shape does not fit the model (e.g. a
class head trained with another ``model.num_classes``), when the checkpoint fits none of
the model's parameters, or when it lacks some of them (they would stay random).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .norm_counters import DropFrozenNormCountersMixin
from .reading import NamedReadErrorsMixin, UnreadableCheckpointError

__all__ = [
    "CheckpointMismatchError",
    "check_caffe2_weights_fit",
    "check_fits_some_key",
    "ema_weights_requested",
    "ShapeCheckingCheckpointer",
    "UnreadableCheckpointError",
    "check_checkpoint_path",
    "load_model_weights",
]

logger = logging.getLogger(__name__)

# Mismatched / missing keys quoted in an error message; the rest are counted.
MAX_KEYS_IN_MESSAGE = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model built from the config."""


def _mismatch_message(
    where: str, path: str, incorrect_shapes: list[tuple[str, tuple, tuple]], model: nn.Module
) -> str:
    lines = [
        f"{where}: checkpoint {path!r} does not fit the model built from the config: "
        f"{len(incorrect_shapes)} tensor(s) have another shape (checkpoint vs model):"
    ]
    for key, checkpoint_shape, model_shape in incorrect_shapes[:MAX_KEYS_IN_MESSAGE]:
        lines.append(f"  {key}: {list(checkpoint_shape)} vs {list(model_shape)}")
    if len(incorrect_shapes) > MAX_KEYS_IN_MESSAGE:
        lines.append(f"  ... and {len(incorrect_shapes) - MAX_KEYS_IN_MESSAGE} more")
    hint = "Use the config the checkpoint was trained with"
    if any("class_embed" in key or "label_enc" in key for key, _, _ in incorrect_shapes):
        num_classes = getattr(model, "num_classes", None)
        hint += (
            "; the class head differs, so the checkpoint was trained with another "
            f"model.num_classes (the config builds num_classes={num_classes})"
        )
    lines.append(hint + ".")
    return "\n".join(lines)


class ShapeCheckingCheckpointer(
    NamedReadErrorsMixin, DropFrozenNormCountersMixin, DetectionCheckpointer
):
    """A ``DetectionCheckpointer`` whose loading fails on tensors of the wrong shape, on a
    checkpoint that matches none of the model's keys and on one that lacks some of them,
    instead of leaving them random, and on a file it cannot read with an
    :class:`UnreadableCheckpointError` naming it.

    Args:
        model, save_dir, checkpointables: as for ``DetectionCheckpointer``.
        where: who loads, quoted in error messages (e.g. ``"Predictor"``).
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, where: str = "load", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.where = where
        self._path = ""

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        self._path = path
        return super().load(path, checkpointables=checkpointables)

    def _load_model(self, checkpoint: Any) -> Any:
        incompatible = super()._load_model(checkpoint)
        if incompatible is None:
            return None
        if incompatible.incorrect_shapes:
            raise CheckpointMismatchError(
                _mismatch_message(
                    self.where, self._path, list(incompatible.incorrect_shapes), self.model
                )
            )
        check_fits_some_key(self.model, incompatible, self.where, self._path)
        missing = set(incompatible.missing_keys) - _non_checkpoint_keys(self.model)
        if missing:
            raise CheckpointMismatchError(_missing_message(self.where, self._path, missing))
        return incompatible


def check_fits_some_key(model: nn.Module, incompatible: Any, where: str, path: str) -> None:
    """Raise :class:`CheckpointMismatchError` when a load (``incompatible``: what fvcore's
    ``_load_model`` returns) left the model at its initialisation in a way no fine-tuning
    wants:

    - it filled none of ``model``'s parameters: a checkpoint of another codebase (a torchvision
      ResNet, an unconverted detrex / DETR file). Parameters are counted, not buffers:
      detectron2's ``FrozenBatchNorm2d`` fills in running statistics that a file lacks (for
      checkpoints older than them), so a load that took nothing else reported none missing;
    - it filled none of ``model.backbone``'s parameters while the file has tensors that fit
      nowhere: a detector of another codebase whose few same-named tensors (DETR's
      ``query_embed``, ``input_proj``) matched, leaving the backbone random.
    """
    parameters = {name for name, _ in model.named_parameters()}
    not_taken = set(incompatible.missing_keys) | {k for k, *_ in incompatible.incorrect_shapes}
    taken = parameters - not_taken
    unexpected = sorted(incompatible.unexpected_keys)
    if parameters and not taken:
        raise CheckpointMismatchError(
            f"{where}: checkpoint {path!r} has none of the model's parameter names (the model "
            f"has {len(parameters)} parameters, e.g. {sorted(parameters)[:3]}; the checkpoint "
            f"has e.g. {unexpected[:MAX_KEYS_IN_MESSAGE]}). Expected weights of this model or "
            f"of a part of it (e.g. its backbone, as backbone.* keys). {_OTHER_CODEBASES}"
        )
    backbone = {name for name in parameters if name.startswith("backbone.")}
    if backbone and not backbone & taken and unexpected:
        raise CheckpointMismatchError(
            f"{where}: checkpoint {path!r} fills {len(taken)} of the model's {len(parameters)} "
            f"parameters but none of its backbone's {len(backbone)} (e.g. "
            f"{sorted(backbone)[:2]}), while {len(unexpected)} of its tensors fit nowhere (e.g. "
            f"{unexpected[:MAX_KEYS_IN_MESSAGE]}): the backbone would train from random "
            f"weights. Expected the backbone's weights as backbone.* keys. {_OTHER_CODEBASES} "
            "To start from the other tensors alone, save a checkpoint without the keys that "
            "fit nowhere."
        )


def check_caffe2_weights_fit(model: nn.Module, checkpoint: Any, where: str, path: str) -> None:
    """Raise :class:`CheckpointMismatchError` when ``checkpoint`` (as detectron2's
    ``DetectionCheckpointer._load_file`` reads it) holds MSRA / Caffe2 ImageNet weights
    (``detectron2://ImageNetPretrained/MSRA/R-50.pkl``) and ``model`` is not set up for them.

    Those weights were trained on BGR images normalized with ``pixel_std`` 1 and with the
    stride of each stage in its first 1x1 convolution; detectron2 loads them into a
    torchvision-style model (RGB, ImageNet ``pixel_std``, ``stride_in_1x1=False``, as every
    config here) by name without a word, and the run starts from features computed on wrong
    inputs.
    """
    if not isinstance(checkpoint, dict) or checkpoint.get("__author__") != "Caffe2":
        return
    wrong = []
    input_format = getattr(model, "input_format", None)
    if input_format is not None and input_format != "BGR":
        wrong.append(f"model.input_format={input_format!r} (expected 'BGR')")
    pixel_std = getattr(model, "pixel_std", None)
    if isinstance(pixel_std, torch.Tensor) and not torch.all(pixel_std == 1):
        wrong.append(f"model.pixel_std={[round(v, 3) for v in pixel_std.flatten().tolist()]}")
    stride_in_1x1 = _stride_in_1x1(getattr(model, "backbone", model))
    if stride_in_1x1 is False:
        wrong.append("stride_in_1x1=False in the backbone's stages (expected True)")
    if wrong:
        raise CheckpointMismatchError(
            f"{where}: checkpoint {path!r} holds MSRA / Caffe2 weights, trained on BGR images "
            "with pixel_mean [103.530, 116.280, 123.675], pixel_std [1, 1, 1] and "
            f"stride_in_1x1=True, but this model has {'; '.join(wrong)}. Expected "
            "torchvision-style weights for this config (detectron2://ImageNetPretrained/"
            "torchvision/R-50.pkl), or a config set up for these: model.input_format='BGR', "
            "the pixel statistics above, model.backbone.stages.stride_in_1x1=True and "
            "dataloader.train/test.mapper.img_format='BGR'."
        )


def _stride_in_1x1(backbone: nn.Module) -> bool | None:
    """Whether the first strided bottleneck of a detectron2 ResNet strides in its 1x1
    convolution (``stride_in_1x1``); ``None`` for other backbones."""
    for module in backbone.modules():
        conv1, conv2 = getattr(module, "conv1", None), getattr(module, "conv2", None)
        if not (isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)):
            continue
        if not hasattr(module, "conv3"):  # a bottleneck block has three convolutions
            continue
        if conv1.stride[0] > 1 or conv2.stride[0] > 1:
            return conv1.stride[0] > 1
    return None


# Where weights of other codebases go, for the messages above.
_OTHER_CODEBASES = (
    "A checkpoint from another codebase needs converting first: detrex / facebookresearch "
    "DETR detectors with tools/convert_checkpoint.py; a torchvision ResNet with detectron2's "
    "tools/convert-torchvision-to-d2.py (or use detectron2://ImageNetPretrained/torchvision/"
    "R-50.pkl); a timm backbone's file goes to model.backbone.checkpoint_path instead."
)


def _missing_message(where: str, path: str, missing: set[str]) -> str:
    keys = sorted(missing)
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    extra = len(keys) - MAX_KEYS_IN_MESSAGE
    more = f" ... and {extra} more" if extra > 0 else ""
    modules = sorted({key.split(".", 1)[0] for key in keys})
    return (
        f"{where}: checkpoint {path!r} lacks {len(keys)} of the model's tensors, which would "
        f"keep their random initialisation: {shown}{more} (in {', '.join(modules)}). Expected "
        "the weights of the model this config builds, e.g. the model_final.pth of a run with "
        "it; a checkpoint of another variant (another number of feature levels or decoder "
        "layers, without a mask head, ...) or of a backbone only is for train.init_checkpoint "
        "when training, which loads what fits."
    )


def _non_checkpoint_keys(model: nn.Module) -> set[str]:
    # Normalization constants, which detectron2 tolerates as missing (see DetectionCheckpointer),
    # and BatchNorm step counters, which fvcore leaves out of its missing keys.
    names = ("pixel_mean", "pixel_std", "num_batches_tracked")
    return {key for key in model.state_dict() if key.rsplit(".", 1)[-1] in names}


def ema_weights_requested(cfg: Any) -> bool:
    """Whether a config asks to use the EMA weights of its checkpoints, as ``--eval-only``
    does: ``train.ema.use_ema_weights_for_eval_only`` (which needs ``train.ema.enabled``).

    Raises:
        ValueError: ``use_ema_weights_for_eval_only`` without ``enabled``, which
            ``--eval-only``, the ``Predictor``, the demo and export all refuse alike (else one
            would run the EMA weights and another the model weights of the same config).
    """
    train = cfg.get("train", None) if hasattr(cfg, "get") else None
    ema = (train.get("ema", None) if train is not None else None) or {}
    ema_only = bool(ema.get("use_ema_weights_for_eval_only", False))
    if ema_only and not ema.get("enabled", False):
        raise ValueError(
            "train.ema.use_ema_weights_for_eval_only=True uses the checkpoint's EMA weights "
            "alone, which needs train.ema.enabled=True too (got False); expected both set, or "
            "use_ema_weights_for_eval_only=False for the model weights"
        )
    return ema_only


def _copy_ema_weights(model: nn.Module, extra: dict[str, Any], where: str, path: str) -> None:
    state = extra.get("ema", {}).get("state") if isinstance(extra.get("ema"), dict) else None
    if state is None:
        raise CheckpointMismatchError(
            f"{where}: the EMA weights were asked for, but checkpoint {path!r} has no 'ema' "
            f"state (it has {sorted(extra)}); expected a checkpoint of a run trained with "
            "train.ema.enabled=True, or the model weights (no EMA option)"
        )
    model_state = model.state_dict()
    if set(state) != set(model_state):
        missing = sorted(set(model_state) - set(state))[:MAX_KEYS_IN_MESSAGE]
        raise CheckpointMismatchError(
            f"{where}: the EMA weights of checkpoint {path!r} do not fit the model (missing "
            f"e.g. {missing}, unexpected e.g. "
            f"{sorted(set(state) - set(model_state))[:MAX_KEYS_IN_MESSAGE]})"
        )
    wrong = [key for key, value in state.items() if value.shape != model_state[key].shape]
    if wrong:
        raise CheckpointMismatchError(
            f"{where}: the EMA weights of checkpoint {path!r} have other shapes than the model "
            f"in {wrong[:MAX_KEYS_IN_MESSAGE]}"
        )
    with torch.no_grad():
        for key, value in state.items():
            model_state[key].copy_(value)


def check_checkpoint_path(path: str | os.PathLike, where: str) -> str:
    """``path`` as a str, after checking that it names a checkpoint to load: a local file, or a
    URL (``detectron2://``, ``https://`` ..., fetched when loaded).

    Args:
        path: the checkpoint's path or URL.
        where: what names the path in messages, e.g. ``"train.init_checkpoint"``.

    Raises:
        ValueError: ``path`` is empty.
        FileNotFoundError: ``path`` is a local path that is not a file.
    """
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{where}: expected a checkpoint path, got ''")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: expected a checkpoint file, got missing path {path!r}")
    return path


def load_model_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    where: str,
    checkpointables: dict[str, Any] | None = None,
    ema: bool = False,
) -> dict[str, Any]:
    """Load the weights of ``path`` into ``model``, for using the model, not fine-tuning it.

    Args:
        model: the model built from the config.
        path: a checkpoint file, or a URL detectron2's ``PathManager`` understands
            (``detectron2://``, ``https://`` ...).
        where: what names the path in messages, e.g. ``"train.init_checkpoint"``.
        checkpointables: extra objects to restore from the checkpoint (e.g. ``{"ema": ema}``);
            default none.
        ema: load the checkpoint's EMA weights (its ``"ema"`` entry, written by ``train_net``
            with ``train.ema.enabled``) into the model instead of its model weights; a
            checkpoint without them is a :class:`CheckpointMismatchError`.

    Returns:
        the checkpoint's entries that were not loaded (e.g. ``"ema"``, ``"iteration"``).

    Raises:
        ValueError: ``path`` is empty.
        FileNotFoundError: ``path`` is a local path that is not a file.
        CheckpointMismatchError: a tensor's shape differs from the model's, or the
            checkpoint matches none of the model's keys, or lacks some of them.
        UnreadableCheckpointError: the file cannot be read (truncated, corrupt).
    """
    path = check_checkpoint_path(path, where)
    checkpointer = ShapeCheckingCheckpointer(model, where=where, **(checkpointables or {}))
    extra = checkpointer.load(path, checkpointables=list(checkpointables or {}))
    if ema:
        _copy_ema_weights(model, extra, where, path)
        logger.info("%s: using the EMA weights of %s.", where, path)
    return extra
