#!/usr/bin/env python
"""Convert a checkpoint from another codebase into a detr_ext model's parameter names.

    python tools/convert_checkpoint.py --from detr.facebookresearch \
        --config projects/detr/configs/detr_r50_500ep.py detr-r50-e632da11.pth detr_r50.pth
    python tools/convert_checkpoint.py --list

Converters are named ``<project>.<source>``: the detr_ext project the weights are for, then
the codebase they come from (``dino.detrex``, ``detr.facebookresearch``); each is registered
by ``projects/<project>/checkpoint.py``. ``--from`` with only a project or a source (``--from
detrex``) lists the converters it may mean. ``--config`` is looked up from the current
directory first, then from the repository root.

The model is built from the config (on the CPU) and the converted state_dict must cover it
exactly: every source key used or dropped on purpose, every model key produced, every shape
equal; otherwise nothing is written and the exit status is 1. The report then gives counts
and a few example keys per problem (``--max-keys``), and ranks the project's other configs by
how well the checkpoint fits them (built on the meta device: no memory, no weights), since
the usual cause is a config of another variant (e.g. two-stage weights with the plain
config). Input: a ``.pth`` file (read with ``torch.load(weights_only=True)`` unless
``--unsafe-pickle``) or, with ``--unsafe-pickle``, a ``.pkl`` pickle of numpy arrays (as
detectron2's model zoo has them). The output is ``{"model": state_dict}``, loadable with
detectron2's ``DetectionCheckpointer`` (e.g. as ``train.init_checkpoint``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

from detr_ext.checkpoint import (  # noqa: E402
    ConversionReport,
    Converter,
    find_converters,
    get_converter,
    list_converters,
)

# Configs ranked in the report when a checkpoint does not fit.
NUM_SUGGESTED_CONFIGS = 3
DDP_PREFIX = "module."


def import_project_converters(name: str | None = None) -> None:
    """Import ``projects.<p>.checkpoint`` for the project of ``name`` (``"<p>.<source>"``),
    or for every project that has one when ``name`` is None."""
    if name is not None:
        projects = [name.split(".", 1)[0]]
    else:
        projects = sorted(p.parent.name for p in (_REPO_ROOT / "projects").glob("*/checkpoint.py"))
    for project in projects:
        if (_REPO_ROOT / "projects" / project / "checkpoint.py").is_file():
            importlib.import_module(f"projects.{project}.checkpoint")


def _read_pickle(path: str, unsafe_pickle: bool) -> Any:
    """A plain pickle (detectron2 / Detectron model-zoo ``.pkl``: numpy arrays, Python 2
    pickles among them), read as detectron2's checkpointer reads it."""
    if not unsafe_pickle:
        raise SystemExit(
            f"{path} is a pickle file, which can run code when it is read; if you trust it, "
            "rerun with --unsafe-pickle."
        )
    with open(path, "rb") as file:
        return pickle.load(file, encoding="latin1")


def load_source_state_dict(path: str, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` checkpoint (or, with ``unsafe_pickle``, a ``.pkl`` one of numpy arrays)
    and return its tensors, unwrapping a ``"model"`` (or Detectron's ``"blobs"``) entry."""
    if not os.path.isfile(path):
        raise SystemExit(f"input: expected a checkpoint file, got missing path {path!r}")
    if path.endswith(".pkl"):
        checkpoint = _read_pickle(path, unsafe_pickle)
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
        except Exception as error:  # an unpickling error names the offending global
            if unsafe_pickle:
                raise
            if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
                # A readable file holding objects other than tensors (e.g. argparse args).
                raise SystemExit(
                    f"could not read {path} with torch.load(weights_only=True): {error}\n"
                    "If you trust this file, rerun with --unsafe-pickle."
                ) from error
            raise SystemExit(
                f"could not read {path} ({type(error).__name__}: {error}); expected a "
                "checkpoint file: it is probably truncated (a copy cut short) or not a "
                "checkpoint."
            ) from error
    for entry in ("model", "blobs"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(entry), dict):
            checkpoint = checkpoint[entry]
            break
    if isinstance(checkpoint, dict):
        checkpoint = {
            key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            for key, value in checkpoint.items()
        }
    if not isinstance(checkpoint, dict):
        raise SystemExit(
            f"{path}: expected a state_dict or {{'model': state_dict}}, "
            f"got {type(checkpoint).__name__}"
        )
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(set(checkpoint) - set(tensors))
    if skipped:
        print(f"ignoring {len(skipped)} non-tensor entries: {skipped[:10]}")
    if tensors and all(key.startswith(DDP_PREFIX) for key in tensors):
        # Saved from a DistributedDataParallel model, as detectron2's loader also accepts.
        print(f"removing the {DDP_PREFIX!r} prefix of every key (saved from a DDP model)")
        tensors = {key[len(DDP_PREFIX) :]: value for key, value in tensors.items()}
    return tensors


def resolve_config(config: str) -> Path:
    """``config`` as given (relative to the current directory), else relative to the
    repository root. Raises ``SystemExit`` naming every place tried."""
    tried = [Path(config)]
    if not Path(config).is_absolute():
        tried.append(_REPO_ROOT / config)
    for path in tried:
        if path.is_file():
            return path
    places = " and ".join(str(path.resolve()) for path in tried)
    raise SystemExit(f"--config: expected a LazyConfig .py file, got {config!r}; tried {places}")


def project_configs(project: str) -> list[Path]:
    """The training configs of ``projects/<project>/configs`` (not the ``models/`` parts)."""
    return sorted((_REPO_ROOT / "projects" / project / "configs").glob("*.py"))


def meta_state_dict(config: Path) -> dict[str, torch.Tensor]:
    """The state_dict of the config's model built on the meta device: names and shapes
    only, without allocating or initialising weights. ``keep_vars=True``: a parameter shared
    under two names is one object, which is how the conversion sees the ties on meta."""
    cfg = LazyConfig.load(str(config))
    with torch.device("meta"):
        return instantiate(cfg.model).state_dict(keep_vars=True)


def rank_configs(
    converter: Converter, source: dict[str, torch.Tensor], configs: list[Path]
) -> list[tuple[Path, ConversionReport]]:
    """``(config, report)`` of converting ``source`` for each config's model, best fit first
    (fewest problems, then most matched keys). Configs whose model cannot be built are
    left out."""
    ranked = []
    for config in configs:
        try:
            _, report = converter.convert(source, meta_state_dict(config))
        except Exception as error:  # a config we cannot build cannot be suggested either
            print(f"  (skipped {config.relative_to(_REPO_ROOT)}: {type(error).__name__})")
            continue
        ranked.append((config, report))
    ranked.sort(key=lambda item: _fit(item[1]))
    return ranked


def _fit(report: ConversionReport) -> tuple[bool, int, int]:
    """Sort key, best first: an exact fit, then the most keys matched, then fewest problems
    (fewest problems alone favoured small models that match almost nothing)."""
    return (not report.ok, -report.num_matched, report.num_problems)


def fits_better(other: ConversionReport, report: ConversionReport) -> bool:
    """Whether ``other`` fits exactly, or matches more keys than ``report``: the model that
    takes more of the checkpoint is the closer one, whatever the count of problems."""
    return (other.ok and not report.ok) or other.num_matched > report.num_matched


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(_REPO_ROOT))
    except ValueError:
        return str(path)


def suggest_configs(
    converter: Converter, source: dict[str, torch.Tensor], config: Path, report: ConversionReport
) -> str:
    """Lines ranking the configs of the converter's project that fit ``source`` better than
    ``config`` (whose ``report`` is given), or a note that none does."""
    project = converter.name.split(".", 1)[0]
    others = [path for path in project_configs(project) if path.resolve() != config.resolve()]
    if not others:
        return ""
    print(f"trying the {len(others)} other configs of projects/{project} ...")
    better = [
        (path, other)
        for path, other in rank_configs(converter, source, others)
        if fits_better(other, report)
    ]
    if not better:
        return f"no other config of projects/{project} fits this checkpoint better."
    lines = [f"configs of projects/{project} that fit this checkpoint better:"]
    for path, other in better[:NUM_SUGGESTED_CONFIGS]:
        fit = (
            "fits exactly"
            if other.ok
            else f"{other.num_problems} problems, {other.num_matched} keys matched"
        )
        lines.append(f"  --config {_display(path)}  ({fit})")
    return "\n".join(lines)


def suggest_converters(
    converter: Converter, source: dict[str, torch.Tensor], model_state: dict, report
) -> str:
    """Lines naming the other converters of the converter's project that fit ``source`` to
    the config's model better (e.g. ``detr.facebookresearch`` for a file given to
    ``detr.detrex``), or "" when none does."""
    project = converter.name.split(".", 1)[0]
    lines = []
    for name in find_converters(project):
        if name == converter.name or not name.startswith(project + "."):
            continue
        try:
            _, other = get_converter(name).convert(source, model_state)
        except Exception:  # a converter that cannot read this source does not fit it
            continue
        if fits_better(other, report):
            fit = "fits exactly" if other.ok else f"{other.num_matched} keys matched"
            lines.append(f"  --from {name}  ({fit})")
    if not lines:
        return ""
    return "\n".join([f"converters of projects/{project} that fit this checkpoint better:", *lines])


def short_counts(report: ConversionReport) -> str:
    return (
        f"{report.num_matched} keys matched; {len(report.unused_source_keys)} unused source "
        f"keys, {len(report.missing_target_keys)} missing model keys, "
        f"{len(report.shape_mismatches)} shape mismatches"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Converter names are <project>.<source>, e.g. dino.detrex; --list shows them.",
    )
    parser.add_argument(
        "--from",
        dest="source",
        help="converter name <project>.<source>, e.g. detr.facebookresearch",
    )
    parser.add_argument(
        "--config",
        help="LazyConfig whose `model` receives the weights (from the current directory, "
        "else from the repository root)",
    )
    parser.add_argument("--list", action="store_true", help="list the converters and exit")
    parser.add_argument(
        "--max-keys",
        type=int,
        default=5,
        help="example keys shown per problem when the checkpoint does not fit (default: 5)",
    )
    parser.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the input (only for files you trust)",
    )
    parser.add_argument(
        "input", nargs="?", help="source checkpoint (.pth; .pkl with --unsafe-pickle)"
    )
    parser.add_argument("output", nargs="?", help="converted checkpoint to write (.pth)")
    args = parser.parse_args(argv)

    if args.list:
        import_project_converters()
        print("Converters (<project>.<source>: the project the weights are for, the codebase")
        print("they come from):")
        for name in list_converters():
            print(f"{name}: {get_converter(name).description}")
        return 0
    if args.source and not (args.config or args.input or args.output):
        # --from alone (e.g. "--from detrex"): the converters it may mean.
        import_project_converters()
        names = find_converters(args.source)
        if not names:
            parser.error(f"--from {args.source!r}: no converter of that project or source")
        print(f"Converters for --from {args.source!r}:")
        for name in names:
            print(f"  {name}: {get_converter(name).description}")
        return 0
    if not (args.source and args.config and args.input and args.output):
        parser.error("--from, --config, input and output are required (or use --list)")

    import_project_converters(args.source)
    try:
        converter = get_converter(args.source)
    except KeyError:
        # Not a full name (e.g. only the source, "detrex"): look among every project's.
        import_project_converters()
        try:
            converter = get_converter(args.source)
        except KeyError as error:
            parser.error(str(error.args[0]))

    config = resolve_config(args.config)
    cfg = LazyConfig.load(str(config))
    model = instantiate(cfg.model)
    target_state_dict = model.state_dict()
    source = load_source_state_dict(args.input, args.unsafe_pickle)
    converted, report = converter.convert(source, target_state_dict)
    print(
        f"{converter.name}: {len(source)} source tensors -> {len(target_state_dict)} model tensors"
    )
    if not report.ok:
        print(report.summary(max_keys=args.max_keys))
        print(f"does not fit {_display(config)}: {short_counts(report)}")
        for suggestion in (
            suggest_converters(converter, source, target_state_dict, report),
            suggest_configs(converter, source, config, report),
        ):
            if suggestion:
                print(suggestion)
        print("conversion incomplete; nothing written", file=sys.stderr)
        return 1
    print(report.summary())
    # Final check: the model itself accepts the result with strict key matching.
    model.load_state_dict(converted, strict=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": converted, "__author__": f"detr_ext convert_checkpoint ({converter.name})"},
        args.output,
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
