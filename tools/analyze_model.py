#!/usr/bin/env python
"""Count a model's parameters and FLOPs, or print its structure.

    python tools/analyze_model.py --config-file projects/dino/configs/dino_r50_4scale_12ep.py \
        --tasks parameter flop [--input-size 800 1333 | --num-inputs 100] [--max-depth 3] \
        [--device cpu] [--json output/analysis.json] [key=value ...]

- ``parameter``: total, trainable and frozen parameter counts, and fvcore's table per module
  down to ``--max-depth``.
- ``flop``: FLOPs of one image through the model in inference (fvcore counts a fused
  multiply-add as one FLOP; detectron2's ``FlopCountAnalysis`` with detr_ext's rule for the
  deformable attention operator, see ``detr_ext/utils/flop_count.py``), per operator and per
  module. On a blank image of ``--input-size H W`` (the size the network sees, after the
  config's resizing; default 800 x 1333), or averaged over the first ``--num-inputs`` images of
  the config's test loader (its dataset must be there), as detectron2's and detrex's
  ``analyze_model`` do. Operators fvcore has no rule for (elementwise ones, sorting, top-k) are
  listed and count as zero.
- ``structure``: the model as ``print(model)`` shows it.

The model is the config's random initialisation: neither count depends on the weights.
``key=value`` overrides apply to the config as in ``tools/train_net.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

TASKS = ("parameter", "flop", "structure")
DEFAULT_INPUT_SIZE = (800, 1333)

logger = logging.getLogger("detr_ext.analyze_model")


class AnalyzeError(Exception):
    """A usage error, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file of the model")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"])
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help=f"FLOPs of a blank image of this size (default {DEFAULT_INPUT_SIZE})",
    )
    inputs.add_argument(
        "--num-inputs",
        type=int,
        default=None,
        help="FLOPs averaged over this many images of the config's test loader",
    )
    parser.add_argument("--max-depth", type=int, default=3, help="module depth of the tables")
    parser.add_argument("--device", default="cpu", help="device to run on (default: cpu)")
    parser.add_argument("--json", default=None, help="also write the counts to this file")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def parameter_counts(model) -> dict[str, int]:
    """``{"total", "trainable", "frozen"}`` parameter counts (shared tensors counted once)."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def blank_inputs(size: Sequence[int], device: str) -> list[dict]:
    """One mid-grey image of ``size`` in detectron2's input format (already resized)."""
    import torch

    height, width = (int(side) for side in size)
    if height < 1 or width < 1:
        raise AnalyzeError(f"--input-size: expected positive H W, got {height} {width}")
    image = torch.full((3, height, width), 128.0, device=device)
    return [{"image": image, "height": height, "width": width}]


def loader_inputs(cfg, count: int):
    """The first ``count`` batches (of one image) of the config's test loader."""
    from detectron2.config import instantiate

    if count < 1:
        raise AnalyzeError(f"--num-inputs: expected a positive count, got {count}")
    if "test" not in cfg.get("dataloader", {}):
        raise AnalyzeError("--num-inputs: the config has no dataloader.test; use --input-size")
    try:
        loader = instantiate(cfg.dataloader.test)
    except (KeyError, FileNotFoundError, AssertionError) as error:
        raise AnalyzeError(
            f"--num-inputs: cannot build the config's test loader ({error}); is the dataset "
            "registered and on disk? --input-size H W needs no data"
        ) from error
    for index, batch in enumerate(loader):
        if index >= count:
            break
        yield batch


def count_flops(model, batches, max_depth: int = 3) -> dict:
    """FLOPs per image (mean over ``batches`` of one image each), per operator and module."""
    from fvcore.nn import flop_count_table

    from detr_ext.utils.flop_count import model_flop_analysis

    totals, by_operator, table, unsupported, sizes = [], None, "", {}, []
    for batch in batches:
        analysis = model_flop_analysis(model, batch)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        totals.append(analysis.total())
        sizes.append(tuple(batch[0]["image"].shape[-2:]))
        if by_operator is None:  # the tables of the first image
            by_operator = dict(analysis.by_operator())
            table = flop_count_table(analysis, max_depth=max_depth)
            unsupported = dict(analysis.unsupported_ops())
    if not totals:
        raise AnalyzeError("no input to count FLOPs on (the test loader is empty)")
    return {
        "images": len(totals),
        "input_sizes": sorted(set(sizes)),
        "gflops_mean": statistics.fmean(totals) / 1e9,
        "gflops_std": (statistics.pstdev(totals) if len(totals) > 1 else 0.0) / 1e9,
        "gflops_by_operator_first_image": {k: v / 1e9 for k, v in by_operator.items()},
        "not_counted_operators": unsupported,
        "table": table,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the tasks; returns the counts (also written to ``--json``)."""
    args = build_parser().parse_args(argv)
    import torch
    from detectron2.config import instantiate
    from detectron2.utils.analysis import parameter_count_table
    from detectron2.utils.logger import setup_logger

    from detr_ext.config import ConfigUsageError, load_config
    from detr_ext.ops import compiled_kernel_available

    setup_logger(name="detr_ext", abbrev_name="detr")
    config_file = Path(args.config_file)
    try:
        cfg = load_config(config_file, args.opts)
    except ConfigUsageError as error:
        raise AnalyzeError(str(error)) from error
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(args.device).eval()
    result: dict = {"config_file": str(config_file)}

    if "structure" in args.tasks:
        print(model)
    if "parameter" in args.tasks:
        counts = parameter_counts(model)
        result["parameters"] = counts
        print(parameter_count_table(model, max_depth=args.max_depth))
        print(
            f"parameters: {counts['total'] / 1e6:.2f} M ({counts['trainable'] / 1e6:.2f} M "
            f"trainable, {counts['frozen'] / 1e6:.2f} M frozen)"
        )
    if "flop" in args.tasks:
        missing = compiled_kernel_available(torch.device(args.device).type, torch.float32)
        if missing is not None:
            logger.warning(
                "the compiled deformable attention operator cannot run here (%s): its FLOPs "
                "are counted from the grid_sample path, bilinear sampling only (4/5 of the "
                "operator's count; see detr_ext/utils/flop_count.py)",
                missing,
            )
        if args.num_inputs is not None:
            batches = loader_inputs(cfg, args.num_inputs)
        else:
            batches = [blank_inputs(args.input_size or DEFAULT_INPUT_SIZE, args.device)]
        with torch.no_grad():
            flops = count_flops(model, batches, args.max_depth)
        print(flops.pop("table"))
        result["flops"] = flops
        if flops["not_counted_operators"]:
            print(
                "not counted (no FLOP rule): "
                + ", ".join(
                    f"{op} x{n}" for op, n in sorted(flops["not_counted_operators"].items())
                )
            )
        sizes = ", ".join(f"{h}x{w}" for h, w in flops["input_sizes"])
        spread = f" +- {flops['gflops_std']:.2f}" if flops["images"] > 1 else ""
        print(
            f"GFLOPs: {flops['gflops_mean']:.2f}{spread} per image "
            f"({flops['images']} image(s), network input {sizes})"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=list) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except AnalyzeError as error:
        print(f"analyze_model.py: error: {error}", file=sys.stderr)
        sys.exit(1)
