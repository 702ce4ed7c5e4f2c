"""Convert state_dicts between naming schemes (other codebases -> detr_ext models).

A conversion is a list of ordered renaming rules, optional value transforms and a list of
target keys that may be taken from the target model when the source does not have them:

- rules: ``(pattern, replacement)`` pairs applied in order, each as ``re.sub`` on the key
  produced by the previous rules, so later rules see renamed keys. ``replacement`` may be a
  string (with ``\\1`` groups) or a function of the match, as for ``re.sub``. A ``None``
  replacement drops every key the pattern matches (searched, not full-matched); dropped keys
  are listed in the report, never silently lost.
- transforms: ``(pattern, function)`` pairs; ``function(value, target_value) -> value`` is
  applied to a converted tensor whose *target* key full-matches ``pattern`` (e.g. to reorder
  class rows).
- fill_from_target: patterns of target keys that the source lacks by design (such as a
  loss buffer computed from the config); they are copied from the target state_dict.
- defaults: ``(pattern, function)`` pairs for target keys the source lacks but whose value
  that codebase implies (e.g. the scale and bias of a head that is a plain dot product there);
  ``function(target_value) -> value`` gives the value.

:func:`convert_state_dict` applies them and returns the converted state_dict with a
:class:`ConversionReport`. Named conversions are :class:`Converter` objects registered with
:func:`register_converter` (projects register theirs; ``tools/convert_checkpoint.py`` looks
them up by name, e.g. ``"detr.facebookresearch"``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

__all__ = [
    "ConversionReport",
    "Converter",
    "DROP_NORM_COUNTERS",
    "convert_state_dict",
    "find_converters",
    "get_converter",
    "list_converters",
    "register_converter",
    "rename_key",
]

Replacement = str | Callable[[re.Match], str] | None
Rule = tuple[str, Replacement]
Transform = tuple[str, Callable[[Tensor, Tensor], Tensor]]

# BatchNorm step counters (``*.num_batches_tracked``) carry no weights: every converter drops
# them (detectron2's ResNets use FrozenBatchNorm2d, which has none).
DROP_NORM_COUNTERS: Rule = (r"num_batches_tracked$", None)


@dataclass
class ConversionReport:
    """What a conversion did, key by key.

    Attributes:
        converted: target key -> source key, for every tensor that found its target.
        unused_source_keys: source key -> renamed key, for renamed keys that are not in the
            target (a rule is missing or wrong).
        dropped_source_keys: source keys removed on purpose by a ``None`` rule.
        missing_target_keys: target keys that no source key converted to.
        filled_target_keys: target keys copied from the target (``fill_from_target``).
        shape_mismatches: target key -> (converted shape, target shape).
        transformed_keys: target keys whose values a transform changed.
    """

    converted: dict[str, str] = field(default_factory=dict)
    unused_source_keys: dict[str, str] = field(default_factory=dict)
    dropped_source_keys: list[str] = field(default_factory=list)
    missing_target_keys: list[str] = field(default_factory=list)
    filled_target_keys: list[str] = field(default_factory=list)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict
    )
    transformed_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every source key was used or dropped on purpose, every target key was
        produced and every shape matches."""
        return not (self.unused_source_keys or self.missing_target_keys or self.shape_mismatches)

    @property
    def num_matched(self) -> int:
        """Target keys that received a source tensor of the right shape."""
        return len(self.converted) - len(self.shape_mismatches)

    @property
    def num_problems(self) -> int:
        """Unused source keys + missing target keys + shape mismatches (0 when :attr:`ok`)."""
        return (
            len(self.unused_source_keys)
            + len(self.missing_target_keys)
            + len(self.shape_mismatches)
        )

    def summary(self, max_keys: int = 20) -> str:
        """A human-readable report: the count of each category and up to ``max_keys`` of its
        keys (an unused source key is shown with its renamed form only when a rule changed
        it)."""

        def block(title: str, lines: Sequence[str]) -> list[str]:
            out = [f"{title}: {len(lines)}"]
            out += [f"  {line}" for line in lines[:max_keys]]
            if len(lines) > max_keys:
                out.append(f"  ... and {len(lines) - max_keys} more")
            return out

        lines = [f"converted: {len(self.converted)}"]
        lines += block("transformed", self.transformed_keys)
        lines += block("filled from the target model", self.filled_target_keys)
        lines += block("dropped source keys", self.dropped_source_keys)
        lines += block(
            "unused source keys",
            [
                src if src == dst else f"{src} (renamed to {dst})"
                for src, dst in self.unused_source_keys.items()
            ],
        )
        lines += block("missing target keys", self.missing_target_keys)
        lines += block(
            "shape mismatches",
            [
                f"{key}: converted {list(got)} vs target {list(want)}"
                for key, (got, want) in self.shape_mismatches.items()
            ],
        )
        lines.append("OK" if self.ok else "NOT OK")
        return "\n".join(lines)


def _compile(patterns: Iterable[tuple[str, object]], what: str) -> list[tuple[re.Pattern, object]]:
    compiled = []
    for index, entry in enumerate(patterns):
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise ValueError(f"convert_state_dict: {what}[{index}] must be a pair, got {entry!r}")
        pattern, action = entry
        try:
            compiled.append((re.compile(pattern), action))
        except re.error as error:
            raise ValueError(
                f"convert_state_dict: {what}[{index}] has an invalid regex {pattern!r}: {error}"
            ) from error
    return compiled


def rename_key(key: str, rules: Sequence[tuple[re.Pattern, Replacement]]) -> str | None:
    """Apply compiled ``rules`` to one key; None if a dropping rule matched."""
    for pattern, replacement in rules:
        if replacement is None:
            if pattern.search(key):
                return None
        else:
            key = pattern.sub(replacement, key)
    return key


def convert_state_dict(
    source: Mapping[str, Tensor],
    rules: Sequence[Rule],
    target_state_dict: Mapping[str, Tensor],
    transforms: Sequence[Transform] = (),
    fill_from_target: Sequence[str] = (),
    defaults: Sequence[tuple[str, Callable[[Tensor], Tensor]]] = (),
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename (and transform) ``source`` into the key space of ``target_state_dict``.

    Args:
        source: the state_dict to convert.
        rules: ordered ``(pattern, replacement)`` renaming rules (see the module docs).
        target_state_dict: the state_dict of the model the result is for; only its keys and
            shapes are used, plus the values of ``fill_from_target`` keys.
        transforms: ``(target_key_pattern, function(value, target_value))`` value transforms.
        fill_from_target: full-match patterns of target keys to copy from the target when
            the source does not provide them. BatchNorm's step counters
            (``*.num_batches_tracked``) always are: they are not weights (the converters drop
            the source's, which frozen-BN codebases lack), so a model with trainable BatchNorm
            gets its own instead of "missing" keys.
        defaults: ``(target_key_pattern, function(target_value))``: full-match patterns of
            target keys the source does not provide, and the function giving their value
            (listed in ``report.filled_target_keys``).

    Returns:
        ``(converted, report)``: ``converted`` holds the target keys that were produced, in
        the target's order. Keys whose shape does not match stay in ``converted`` but are
        listed in ``report.shape_mismatches``; check ``report.ok`` before loading.

    Raises:
        ValueError: if two source keys rename to the same target key, or a rule is invalid.
    """
    compiled_rules = _compile(rules, "rules")
    compiled_transforms = _compile(transforms, "transforms")
    fill_patterns = [re.compile(p) for p in (*fill_from_target, r".*num_batches_tracked")]
    compiled_defaults = _compile(defaults, "defaults")
    report = ConversionReport()

    renamed: dict[str, Tensor] = {}
    for source_key, value in source.items():
        target_key = rename_key(source_key, compiled_rules)
        if target_key is None:
            report.dropped_source_keys.append(source_key)
            continue
        if target_key not in target_state_dict:
            report.unused_source_keys[source_key] = target_key
            continue
        if target_key in report.converted:
            raise ValueError(
                f"convert_state_dict: source keys {report.converted[target_key]!r} and "
                f"{source_key!r} both rename to {target_key!r}; expected one source per target"
            )
        report.converted[target_key] = source_key
        renamed[target_key] = value

    # A module shared under two names (DINO's heads are also the decoder's) gives two keys
    # of one tensor: a source that names only one of them converts both.
    by_storage = {
        _storage_key(target_state_dict[key]): key for key in renamed if key in target_state_dict
    }
    by_storage.pop(None, None)  # tensors whose memory cannot tell (meta, empty) are not tied
    for target_key, target_value in target_state_dict.items():
        identity = _storage_key(target_value)
        tied_to = by_storage.get(identity) if identity is not None else None
        if target_key not in renamed and tied_to is not None:
            renamed[target_key] = renamed[tied_to]
            report.converted[target_key] = report.converted[tied_to]

    converted: dict[str, Tensor] = {}
    for target_key, target_value in target_state_dict.items():
        if target_key not in renamed:
            default = next((f for p, f in compiled_defaults if p.fullmatch(target_key)), None)
            if default is not None:
                converted[target_key] = default(target_value.detach().clone())
                report.filled_target_keys.append(target_key)
            elif any(pattern.fullmatch(target_key) for pattern in fill_patterns):
                converted[target_key] = target_value.detach().clone()
                report.filled_target_keys.append(target_key)
            else:
                report.missing_target_keys.append(target_key)
            continue
        value = renamed[target_key]
        for pattern, function in compiled_transforms:
            if pattern.fullmatch(target_key):
                new_value = function(value, target_value)
                if new_value is not value:
                    report.transformed_keys.append(target_key)
                value = new_value
        if isinstance(value, Tensor) and isinstance(target_value, Tensor):
            if value.shape != target_value.shape:
                report.shape_mismatches[target_key] = (
                    tuple(value.shape),
                    tuple(target_value.shape),
                )
        converted[target_key] = value
    return converted, report


def _storage_key(value: object) -> tuple | None:
    """Identity of a tensor's memory; None for non-tensors and empty tensors.

    Meta tensors have no memory to compare: they are identified by the object itself, so a
    ``state_dict(keep_vars=True)`` of a model built on the meta device (which gives a shared
    parameter under each of its names) still shows its ties, and one built with
    ``keep_vars=False`` (a fresh tensor per name) shows none.
    """
    if not isinstance(value, Tensor) or value.numel() == 0:
        return None
    if value.device.type == "meta":
        return ("object", id(value))
    return (value.data_ptr(), value.storage_offset(), tuple(value.shape))


@dataclass(frozen=True)
class Converter:
    """A named conversion into a detr_ext model's parameter names.

    Attributes:
        name: registry key, ``"<project>.<source>"``, e.g. ``"detr.facebookresearch"``.
        description: one line on what checkpoints it converts.
        rules, transforms, fill_from_target, defaults: as for :func:`convert_state_dict`.
    """

    name: str
    description: str
    rules: tuple[Rule, ...]
    transforms: tuple[Transform, ...] = ()
    fill_from_target: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = ()

    def convert(
        self, source: Mapping[str, Tensor], target_state_dict: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], ConversionReport]:
        """:func:`convert_state_dict` with this converter's rules."""
        return convert_state_dict(
            source,
            self.rules,
            target_state_dict,
            transforms=self.transforms,
            fill_from_target=self.fill_from_target,
            defaults=self.defaults,
        )


_CONVERTERS: dict[str, Converter] = {}


def register_converter(converter: Converter, *, replace: bool = False) -> Converter:
    """Add ``converter`` to the registry under ``converter.name``; returns it."""
    if not isinstance(converter, Converter):
        raise TypeError(f"register_converter: expected a Converter, got {type(converter).__name__}")
    existing = _CONVERTERS.get(converter.name)
    if existing is not None and existing != converter and not replace:
        raise ValueError(
            f"register_converter: a different converter named {converter.name!r} is already "
            "registered; pass replace=True to replace it"
        )
    _CONVERTERS[converter.name] = converter
    return converter


def find_converters(name: str) -> list[str]:
    """Registered converter names that ``name`` may have meant: those whose project or source
    part (``"<project>.<source>"``) starts with ``name``, sorted; else up to 3 close spellings
    of the whole name, closest first."""
    name = name.strip(".")
    related = []
    for registered in _CONVERTERS:
        parts = registered.split(".", 1)
        if registered.startswith(name) or any(part.startswith(name) for part in parts):
            related.append(registered)
    if related:
        return sorted(related)
    return difflib.get_close_matches(name, sorted(_CONVERTERS), n=3, cutoff=0.6)


def get_converter(name: str) -> Converter:
    """The registered converter called ``name``.

    Raises:
        KeyError: no such converter; the message lists the converters ``name`` may have
            meant (see :func:`find_converters`) and explains the naming.
    """
    if name not in _CONVERTERS:
        candidates = find_converters(name) if name else []
        hint = f"; did you mean one of {candidates}?" if candidates else "."
        raise KeyError(
            f"get_converter: no converter named {name!r}{hint} Converters are named "
            "'<project>.<source>': the detr_ext project the weights are for, then the codebase "
            f"they come from (e.g. 'dino.detrex'). Registered: {list_converters()}"
        )
    return _CONVERTERS[name]


def list_converters() -> list[str]:
    """Names of the registered converters, sorted."""
    return sorted(_CONVERTERS)
