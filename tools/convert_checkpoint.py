#!/usr/bin/env python
"""Convert a checkpoint from another codebase into a detr_ext model's parameter names.

    python tools/convert_checkpoint.py --from detr.facebookresearch \
        --config projects/detr/configs/detr_r50_500ep.py detr-r50-e632da11.pth detr_r50.pth
    python tools/convert_checkpoint.py --list

The converter ``<project>.<source>`` is registered by ``projects/<project>/checkpoint.py``.
The model is built from the config (on the CPU) and the converted state_dict must cover it
exactly: every source key used or dropped on purpose, every model key produced, every shape
equal; otherwise nothing is written and the exit status is 1. The output is
``{"model": state_dict}``, loadable with detectron2's ``DetectionCheckpointer`` (e.g. as
``train.init_checkpoint``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

from detr_ext.checkpoint import get_converter, list_converters  # noqa: E402


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


def load_source_state_dict(path: str, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` checkpoint and return its tensors, unwrapping a ``"model"`` entry."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as error:  # an unpickling error names the offending global
        if unsafe_pickle:
            raise
        raise SystemExit(
            f"could not read {path} with torch.load(weights_only=True): {error}\n"
            "If you trust this file, rerun with --unsafe-pickle."
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise SystemExit(
            f"{path}: expected a state_dict or {{'model': state_dict}}, "
            f"got {type(checkpoint).__name__}"
        )
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(set(checkpoint) - set(tensors))
    if skipped:
        print(f"ignoring {len(skipped)} non-tensor entries: {skipped[:10]}")
    return tensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", help="converter name, e.g. detr.facebookresearch")
    parser.add_argument("--config", help="LazyConfig whose `model` receives the weights")
    parser.add_argument("--list", action="store_true", help="list the converters and exit")
    parser.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the input (only for files you trust)",
    )
    parser.add_argument("input", nargs="?", help="source checkpoint (.pth)")
    parser.add_argument("output", nargs="?", help="converted checkpoint to write (.pth)")
    args = parser.parse_args(argv)

    if args.list:
        import_project_converters()
        for name in list_converters():
            print(f"{name}: {get_converter(name).description}")
        return 0
    if not (args.source and args.config and args.input and args.output):
        parser.error("--from, --config, input and output are required (or use --list)")

    import_project_converters(args.source)
    try:
        converter = get_converter(args.source)
    except KeyError as error:
        parser.error(str(error.args[0]))

    cfg = LazyConfig.load(args.config)
    model = instantiate(cfg.model)
    target_state_dict = model.state_dict()
    source = load_source_state_dict(args.input, args.unsafe_pickle)
    converted, report = converter.convert(source, target_state_dict)
    print(
        f"{converter.name}: {len(source)} source tensors -> {len(target_state_dict)} model tensors"
    )
    print(report.summary())
    if not report.ok:
        print("conversion incomplete; nothing written", file=sys.stderr)
        return 1
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
