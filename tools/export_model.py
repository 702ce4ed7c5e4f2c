#!/usr/bin/env python
"""Export a detector built from a LazyConfig: torch.export (.pt2), AOTInductor (.pt2), ONNX.

    python tools/export_model.py --config-file projects/dino/configs/dino_shapes.py \
        --weights output/dino_shapes/model_final.pth --format torch_export onnx \
        --output output/export/dino_shapes [--min-size 64] [--max-size 4096] \
        [--size-multiple 1] [--max-batch 64] [--device cpu] [--no-verify] [key=value ...]

The exported graph takes a normalized, padded batch ``images [B, 3, H, W]`` (float32) and
``image_sizes [B, 2]`` (int64, each image's size before padding) and returns ``boxes [B, D, 4]``
(absolute xyxy in each image's unpadded frame), ``scores [B, D]`` and ``classes [B, D]``, with
dynamic batch, height and width; see docs/export.md. With one ``--format``, ``--output`` is the
file; with several it is a prefix: ``<output>.pt2`` (torch_export), ``<output>.aoti.pt2``
(aoti), ``<output>.onnx``. Unless ``--no-verify``, each exported file is loaded and run on two
random batches of other sizes than the example, and its largest difference from the eager
model is printed, with the difference between the eager model in float32 and in float64 (the
float32 rounding noise of those inputs); the exit status is 1 if boxes differ by more than
``--tolerance`` or any class differs although eager float32 and float64 agree.
``--random-weights`` exports the config's random initialisation (for benchmarks and smoke
tests) instead of ``--weights``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

FORMATS = ("torch_export", "aoti", "onnx")
SUFFIXES = {"torch_export": ".pt2", "aoti": ".aoti.pt2", "onnx": ".onnx"}

logger = logging.getLogger("detr_ext.export_model")


class ExportToolError(Exception):
    """A usage error, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file of the model")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="checkpoint to export, e.g. model_final.pth")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="export the random initialisation (seed 0): benchmarks, smoke tests",
    )
    parser.add_argument("--format", nargs="+", choices=FORMATS, required=True)
    parser.add_argument("--output", required=True, help="file (one format) or prefix (several)")
    parser.add_argument("--min-size", type=int, default=None, help="smallest padded H / W")
    parser.add_argument("--max-size", type=int, default=None, help="largest padded H / W")
    parser.add_argument(
        "--size-multiple",
        type=int,
        default=1,
        help="H and W are multiples of this (1: any size; 32 exports about twice as fast, "
        "and runners pad images up to it)",
    )
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch (1: static)")
    parser.add_argument(
        "--example-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="size of the example batch traced",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 18)")
    parser.add_argument("--device", default="cpu", help="device to export for (default: cpu)")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with eager")
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest box difference accepted (pixels)"
    )
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def output_paths(output: str, formats: Sequence[str]) -> dict[str, Path]:
    """``--output`` as the file of a single format, or the prefix of several."""
    formats = list(dict.fromkeys(formats))
    if len(formats) == 1:
        return {formats[0]: Path(output)}
    return {fmt: Path(output + SUFFIXES[fmt]) for fmt in formats}


def verification_sizes(metadata) -> list[tuple[int, int]]:
    """Two padded sizes other than the example's, inside the exported range."""
    height, width = metadata.example_size
    multiple = metadata.size_multiple
    candidates = [
        (height + 2 * multiple, width - multiple),
        (height - multiple, width + 3 * multiple),
    ]
    if multiple == 1:
        candidates = [(height + 37, width - 21), (height - 45, width + 53)]
    low, high = metadata.min_size, metadata.max_size
    return [(min(max(h, low), high), min(max(w, low), high)) for h, w in candidates]


def _differs(result: dict, tolerance: float) -> bool:
    return result["boxes"] > tolerance or result["classes_differing"] > 0


def main(argv: Sequence[str] | None = None) -> dict:
    """Export; returns ``{format: {"path", "verification"}}``."""
    args = build_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    from detr_ext.checkpoint import CheckpointMismatchError, UnreadableCheckpointError
    from detr_ext.config import ConfigUsageError, load_config
    from detr_ext.export import (
        ExportError,
        build_model,
        config_metadata,
        export_model,
        export_program,
        load_exported,
        verify_runner,
    )
    from detr_ext.export import exporters as defaults

    setup_logger(name="detr_ext", abbrev_name="detr")
    config_file = Path(args.config_file)
    try:
        cfg = load_config(config_file, args.opts)
    except ConfigUsageError as error:
        raise ExportToolError(str(error)) from error
    try:
        model = build_model(cfg, None if args.random_weights else args.weights, args.device)
    # A model that detr_ext.export does not handle, or weights that are missing, unreadable or
    # of another model: a one-line error, not a traceback.
    except (
        ExportError,
        CheckpointMismatchError,
        UnreadableCheckpointError,
        FileNotFoundError,
    ) as error:
        raise ExportToolError(str(error)) from error

    sizes = {
        "min_size": args.min_size or defaults.DEFAULT_MIN_SIZE,
        "max_size": args.max_size or defaults.DEFAULT_MAX_SIZE,
        "size_multiple": args.size_multiple,
        "max_batch": args.max_batch or defaults.DEFAULT_MAX_BATCH,
        "example_size": tuple(args.example_size or defaults.DEFAULT_EXAMPLE_SIZE),
    }
    fields = config_metadata(cfg)
    fields.update(config_file=str(config_file), weights=args.weights)
    try:
        program = export_program(model, **sizes)
        results = {}
        for fmt, path in output_paths(args.output, args.format).items():
            options = {"opset": args.opset} if fmt == "onnx" and args.opset else {}
            metadata = export_model(model, path, fmt, program=program, **sizes, **options, **fields)
            results[fmt] = {"path": str(path), "verification": None}
            print(f"{fmt}: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
            if args.no_verify:
                continue
            runner = load_exported(path)
            check = verify_runner(model, runner, verification_sizes(metadata))
            results[fmt]["verification"] = check
            exported, float64 = check["exported"], check["float64"]
            print(
                f"{fmt}: vs eager on sizes {verification_sizes(metadata)}: max |boxes| diff "
                f"{exported['boxes']:.3g} px, max |scores| diff {exported['scores']:.3g}, "
                f"{exported['classes_differing']} classes differ (eager float32 vs float64: "
                f"{float64['boxes']:.3g} px, {float64['scores']:.3g}, "
                f"{float64['classes_differing']})"
            )
    except ExportError as error:
        raise ExportToolError(str(error)) from error
    failed, inconclusive = [], []
    for fmt, result in results.items():
        check = result["verification"]
        if check is None or not _differs(check["exported"], args.tolerance):
            continue
        # Rounding alone changes the eager result too: near-equal top-k scores, not the export.
        (inconclusive if _differs(check["float64"], args.tolerance) else failed).append(fmt)
    if inconclusive:
        logger.warning(
            "%s: the verification inputs are ill-conditioned (eager float32 and float64 differ "
            "beyond --tolerance too: near-equal scores in a top-k, typical of random weights); "
            "the comparison proves nothing either way",
            ", ".join(inconclusive),
        )
    if failed:
        raise ExportToolError(
            f"the exported {', '.join(failed)} model(s) differ from the eager model by more than "
            f"--tolerance {args.tolerance} on inputs where eager float32 and float64 agree"
        )
    return results


if __name__ == "__main__":
    try:
        main()
    except ExportToolError as error:
        sys.exit(f"tools/export_model.py: error: {error}")
