"""Loading a local checkpoint file into a timm ``features_only`` model, strictly: timm's own
loading is lenient for feature models (``strict=False``), so a file under a wrapper prefix
(mmpretrain's ``backbone.``, Lightning's ``model.``) or of another model size loaded nothing,
or dropped blocks, without an error."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

__all__ = ["load_timm_checkpoint"]

logger = logging.getLogger(__name__)

# Where checkpoints keep their state dict, and the key prefixes of common training wrappers
# (DDP, Lightning, mmpretrain, detr_ext's own detectors and this backbone).
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema")
_KEY_PREFIXES = ("backbone.timm_model.", "timm_model.", "backbone.", "module.", "model.")
_SHOWN_KEYS = 10


def load_timm_checkpoint(
    features: nn.Module, path: str, model_name: str, in_channels: int, full: nn.Module
) -> None:
    """Load the checkpoint file ``path`` into ``features``, timm's ``features_only`` model of
    ``model_name``, checking every key it uses (see ``TimmBackbone``'s ``checkpoint_path``).

    Args:
        features: the feature model to fill.
        path: a ``torch.save`` or ``.safetensors`` file.
        model_name: the timm model name, for messages.
        in_channels: the input channels a 3-channel first conv is adapted to.
        full: timm's full (classification) model of ``model_name`` without weights (its
            names and classifier), e.g. built on the meta device.

    Raises:
        ValueError: a file that is no state dict, or missing, misshapen or foreign keys.
    """
    where = f"TimmBackbone({model_name!r}) checkpoint_path {path!r}"
    state = _read_state_dict(path, where)
    full_keys = set(full.state_dict())
    # Buffers timm recomputes (Swin's relative_position_index, saved by older timm versions),
    # and BatchNorm's step counter, which FrozenBatchNorm2d lacks: never required nor foreign.
    bookkeeping = {n.rsplit(".", 1)[-1] for n, _ in full.named_buffers() if n not in full_keys}
    bookkeeping.add("num_batches_tracked")
    module_names = {name for name, _ in full.named_modules()}
    targets = features.state_dict()
    to_full = _feature_to_model_names(list(targets), full, full_keys)
    state = _strip_known_prefix(state, full_keys | set(targets))
    state = {(k if k in full_keys else to_full.get(k, k)): v for k, v in state.items()}
    used = {to_full[k]: k for k in targets}  # full-model name -> feature-model name
    classifiers = (getattr(full, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)

    def is_head(key: str) -> bool:
        return any(key.startswith(name + ".") for name in classifiers)

    def is_bookkeeping(key: str) -> bool:
        module, _, leaf = key.rpartition(".")
        return leaf in bookkeeping and module in module_names

    for conv in _first_convs(full):
        key = conv + ".weight"
        if key in state and key in used and state[key].dim() == 4:
            weight, shape = state[key], targets[used[key]].shape
            if (
                weight.shape[1] != shape[1]
                and weight.shape[:1] + weight.shape[2:] == shape[:1] + shape[2:]
            ):
                state[key] = adapt_input_conv(in_channels, weight)
                logger.info("%s: adapted %s from %d input channels", where, key, weight.shape[1])
    missing = [k for k in used if k not in state and not is_bookkeeping(k)]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(targets[used[k]].shape)}"
        for k in used
        if k in state and state[k].shape != targets[used[k]].shape
    ]
    ignored = {k for k in state if k not in used and (is_head(k) or is_bookkeeping(k))}
    unexpected = [k for k in state if k not in full_keys and k not in used and k not in ignored]
    if missing or mismatched or unexpected:
        problems = [
            f"{len(keys)} {kind} {keys[:_SHOWN_KEYS]}"
            for kind, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (checkpoint vs model)", mismatched),
            )
            if keys
        ]
        raise ValueError(
            f"{where}: expected the weights of timm's {model_name!r} (keys like "
            f"{list(used)[:3]}), got {'; '.join(problems)}. The state dict may be bare or "
            f"under one of {list(_WRAPPER_KEYS)}, its keys behind one of the prefixes "
            f"{list(_KEY_PREFIXES)}; a checkpoint in a model's original format can be "
            f"converted with timm.create_model({model_name!r}, pretrained=True, "
            "pretrained_cfg_overlay=dict(file=PATH)) and torch.save(model.state_dict(), NEW_PATH)"
        )
    features.load_state_dict({used[k]: v for k, v in state.items() if k in used}, strict=False)
    head = [k for k in state if is_head(k)]
    dropped = [k for k in state if k not in used and k not in ignored]
    logger.info(
        "%s: loaded %d tensors; skipped %d classifier-head keys %s and %d keys of layers the "
        "feature model does not use %s",
        where,
        sum(k in used for k in state),
        len(head),
        head[:_SHOWN_KEYS],
        len(dropped),
        dropped[:_SHOWN_KEYS],
    )


def _read_state_dict(path: str, where: str) -> dict[str, Tensor]:
    """The ``{name: tensor}`` state dict of a checkpoint file, unwrapped from its container."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            content: Any = load_file(path)
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"{where}: cannot read the file with torch.load(weights_only=True) (a file holding "
            f"only tensors, dicts and numbers is expected): {err}"
        ) from err
    if isinstance(content, dict):
        content = next(
            (content[k] for k in _WRAPPER_KEYS if isinstance(content.get(k), dict)), content
        )
    if not isinstance(content, dict) or not content:
        got = f"{type(content).__name__} {'(empty)' if not content else ''}"
    elif not all(isinstance(v, Tensor) for v in content.values()):
        got = f"a dict with keys {list(content)[:_SHOWN_KEYS]}"
    else:
        return content
    raise ValueError(
        f"{where}: expected a state dict (parameter name -> tensor), bare or under one of "
        f"{list(_WRAPPER_KEYS)}, got {got}"
    )


def _strip_known_prefix(state: dict[str, Tensor], known: set[str]) -> dict[str, Tensor]:
    """``state`` with the key prefixes every key shares removed (one of ``_KEY_PREFIXES`` at a
    time), where that names more of the ``known`` keys."""
    best, best_hits, current = state, len(known & state.keys()), state
    while True:
        prefix = next((p for p in _KEY_PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            return best
        current = {k[len(prefix) :]: v for k, v in current.items()}
        hits = len(known & current.keys())
        if hits > best_hits:
            best, best_hits = current, hits


def _feature_to_model_names(
    feature_keys: list[str], full: nn.Module, full_keys: set[str]
) -> dict[str, str]:
    """``{feature-model key: full-model key}``. timm's feature wrappers keep names, hold the
    model under ``model`` / ``body``, or flatten the top-level ``nn.Sequential`` children
    (``stages.0`` -> ``stages_0``, the rule of ``timm.models._features._module_list``)."""
    flattened = {
        f"{name}_{child_name}": f"{name}.{child_name}"
        for name, child in full.named_children()
        if isinstance(child, nn.Sequential)
        for child_name, _ in child.named_children()
    }
    mapping = {}
    for key in feature_keys:
        head, _, rest = key.partition(".")
        candidates = [key, rest if head in ("model", "body") else ""]
        if head in flattened:
            candidates.append(f"{flattened[head]}.{rest}")
        mapping[key] = next((c for c in candidates if c in full_keys), key)
    return mapping


def _first_convs(full: nn.Module) -> tuple[str, ...]:
    """Names of the model's input convolutions (timm's ``pretrained_cfg['first_conv']``)."""
    first = (getattr(full, "pretrained_cfg", None) or {}).get("first_conv") or ()
    return (first,) if isinstance(first, str) else tuple(first)
