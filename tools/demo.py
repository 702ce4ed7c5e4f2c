#!/usr/bin/env python
"""Run a trained detector on image files and folders; save drawn detections and a json.

    python tools/demo.py --config-file projects/dino/configs/dino_shapes.py \
        --weights output/dino_shapes/model_final.pth \
        --input photo.jpg more_photos/ --output output/demo [--confidence-threshold 0.3] \
        [--device cpu] [key=value ...]

or, with a model exported by ``tools/export_model.py`` instead of ``--weights`` (same
drawings and detections, up to the exported graph's float rounding)::

    python tools/demo.py --config-file projects/dino/configs/dino_shapes.py \
        --exported output/export/dino_shapes.onnx --input photo.jpg --output output/demo

Writes ``<output>/<image stem>.png`` per image (boxes, class names and scores drawn by
detectron2's ``Visualizer``, with the instance masks of a mask model such as DETRSegm; for a
panoptic model its panoptic segmentation, things and stuff, instead) and
``<output>/detections.json``: one entry per image with ``file``, ``height``, ``width``,
``visualization`` and ``detections`` (``bbox_xyxy`` in pixels, ``score``, ``category_id`` as in
the dataset's json, ``category_name``, ``segmentation`` (COCO RLE, ``counts`` a string) for a
mask model, and for text-prompted models such as Grounding DINO ``phrase``;
``--prompt "red circle . triangle"`` chooses the phrases, drawn next to each box); for a
panoptic model also ``panoptic_segments``, every segment of its panoptic segmentation, things
and stuff (``id``, ``isthing``, ``category_id`` as in the dataset's json, ``category_name``,
``score``, ``area`` in pixels, ``segmentation`` as COCO RLE). Images go
through the config's test-time augmentation; ``key=value`` overrides apply to the config as in
``tools/train_net.py``.

An image that cannot be read (truncated, corrupt, not an image) or run is skipped with a
warning; the rest are processed. Skipped images are listed at the end and in
``<output>/skipped.json`` (``file`` and ``error`` each; ``[]`` when none), so
``detections.json`` keeps one schema. Both files are written even when the run stops midway
(an error, Ctrl-C), with the images done so far. The exit status is 1 when no image could be
processed, or on a usage error: a missing input path, a checkpoint that does not fit the
config's model (e.g. a class head trained with another ``model.num_classes``), or a
``model.num_classes`` smaller than the dataset's number of categories.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

logger = logging.getLogger("detr_ext.demo")


class DemoError(Exception):
    """A problem with the command line or the inputs, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Detect objects in images with a detr_ext model and save the drawings.",
        epilog="Config overrides (key=value) may come anywhere; after --input, put them "
        "behind '--' or another option.",
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file of the model")
    parser.add_argument("--weights", help="checkpoint, e.g. model_final.pth")
    parser.add_argument(
        "--ema-weights",
        action="store_const",
        const=True,
        default=None,
        help="run the checkpoint's EMA weights (a run with train.ema.enabled); default: as "
        "--eval-only, i.e. the EMA weights when the config sets train.ema.enabled and "
        "train.ema.use_ema_weights_for_eval_only",
    )
    parser.add_argument(
        "--exported",
        help="run an exported model instead of --weights: a .pt2 or .onnx file from "
        "tools/export_model.py (the config still gives the test resizing and class names)",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files and/or folders of images"
    )
    parser.add_argument("--output", required=True, help="folder for the PNGs and the json")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn / saved detection (default: 0.5)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="text-prompted models (Grounding DINO): phrases to detect, separated by ' . ', "
        "e.g. 'red circle . triangle' (default: the model's category names)",
    )
    parser.add_argument("opts", nargs="*", help="config overrides, key=value", default=[])
    return parser


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """The image files named in ``inputs``: files as given, folders as their image files
    (by extension, sorted, not recursive; the other files of a folder are named in a log
    line). Raises :class:`DemoError` for a missing path or when no image is found at all.
    Whether a file really is a readable image is found out when it is processed (an
    unreadable one is skipped and reported)."""
    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            images.extend(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
            others = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if others:
                logger.info(
                    "%s: ignoring %d file(s) without an image extension (%s): %s",
                    path,
                    len(others),
                    ", ".join(IMAGE_EXTENSIONS),
                    ", ".join(others[:10]) + (" ..." if len(others) > 10 else ""),
                )
        elif path.is_file():
            images.append(path)
        else:
            hint = " (a key=value override? put it after '--')" if "=" in item else ""
            raise DemoError(
                f"--input: expected an image file or a folder, got missing path {item!r}{hint}"
            )
    if not images:
        raise DemoError(
            f"--input: expected at least one image ({', '.join(IMAGE_EXTENSIONS)}), found none "
            f"in {list(inputs)}"
        )
    return images


def output_names(images: Sequence[Path]) -> list[str]:
    """``<stem>.png`` per image; repeated stems (``a.jpg``, ``a.png``) get ``-1``, ``-2``, ..."""
    names, used = [], set()
    for path in images:
        name, index = f"{path.stem}.png", 0
        while name in used:
            index += 1
            name = f"{path.stem}-{index}.png"
        used.add(name)
        names.append(name)
    return names


def check_output(output: str, images: Sequence[Path], names: Sequence[str]) -> Path:
    """The ``--output`` folder, refused (:class:`DemoError`) when it is an existing file or
    when a drawing would be written over one of the input images (``--output`` the input
    folder: ``photo.png`` would be replaced by its drawing)."""
    output_dir = Path(output)
    if output_dir.exists() and not output_dir.is_dir():
        raise DemoError(f"--output: expected a folder, got the existing file {output!r}")
    inputs = {path.resolve() for path in images}
    planned = [output_dir / name for name in names]
    planned += [output_dir / "detections.json", output_dir / "skipped.json"]
    clashes = [str(path) for path in planned if path.resolve() in inputs]
    if clashes:
        raise DemoError(
            f"--output {output!r} would overwrite input images {clashes[:5]} with their "
            "drawings; expected an output folder other than the images' own"
        )
    return output_dir


def check_device(device: str | None) -> None:
    """Refuse (:class:`DemoError`) a ``--device`` torch does not know or cannot use, before
    the model is loaded (a traceback from deep inside torch otherwise)."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise DemoError(f"--device: expected cpu, cuda, cuda:1, ..., got {device!r}") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise DemoError(f"--device {device}: torch sees no GPU here; expected --device cpu")


def predict_outputs(predictor, image, prompt: str | None) -> dict:
    """The model's outputs for one image: ``{"instances", "phrases"?, "panoptic_seg"?}``
    (``Predictor.predict_outputs``; an exported model gives instances only)."""
    if hasattr(predictor, "predict_outputs"):
        return predictor.predict_outputs(image, prompt)
    instances, phrases = predictor.predict(image, prompt)
    return {"instances": instances, "phrases": phrases}


def load_config(config_file: str, opts: Sequence[str]):
    from detr_ext.config import ConfigUsageError
    from detr_ext.config import load_config as load_with_overrides

    try:
        return load_with_overrides(config_file, opts)
    except ConfigUsageError as error:
        raise DemoError(str(error)) from error


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the demo; returns what was written to ``detections.json``."""
    args = build_parser().parse_args(argv)
    images = collect_images(args.input)
    names = output_names(images)
    output_dir = check_output(args.output, images, names)
    check_device(args.device)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise DemoError(
            f"--confidence-threshold: expected a score in [0, 1], got {args.confidence_threshold:g}"
        )
    if (args.weights is None) == (args.exported is None):
        raise DemoError(
            "expected exactly one of --weights (a checkpoint) and --exported (an exported "
            f"model), got {'both' if args.weights else 'neither'}"
        )
    if args.exported is not None and not os.path.isfile(args.exported):
        raise DemoError(
            f"--exported: expected a .pt2 or .onnx file, got missing path {args.exported!r}"
        )
    if args.exported is not None and getattr(args, "prompt", None) is not None:
        raise DemoError("--prompt needs --weights: exported models take no text prompt")
    if args.weights is not None and not os.path.isfile(args.weights) and "://" not in args.weights:
        raise DemoError(f"--weights: expected a checkpoint file, got missing path {args.weights!r}")
    cfg = load_config(args.config_file, args.opts)

    from detectron2.utils.logger import setup_logger
    from PIL import Image

    from detr_ext.checkpoint import CheckpointMismatchError, UnreadableCheckpointError
    from detr_ext.engine.checks import NumClassesError
    from detr_ext.engine.predictor import (
        Predictor,
        draw_predictions,
        instances_to_dicts,
        panoptic_to_dicts,
    )
    from detr_ext.utils import atomic_write_json

    setup_logger(name="detr_ext", abbrev_name="detr")
    # The checkpointer reports what it loaded, and any missing / unexpected keys, here.
    setup_logger(name="fvcore")
    setup_logger(name="detectron2", abbrev_name="d2")
    try:
        if args.exported is not None:
            from detr_ext.export import ExportedPredictor

            predictor = ExportedPredictor(args.exported, cfg)
        else:
            predictor = Predictor(
                cfg, args.weights, device=args.device, ema_weights=args.ema_weights
            )
    except (
        CheckpointMismatchError,
        UnreadableCheckpointError,
        FileNotFoundError,
        NumClassesError,
        ValueError,
    ) as error:  # weights missing, unreadable or of another model: one line, no traceback
        raise DemoError(str(error)) from error
    if args.prompt is not None and not hasattr(predictor.model, "default_prompt"):
        raise DemoError(
            f"--prompt: {type(predictor.model).__name__} does not read text prompts; expected "
            "a text-prompted model such as GroundingDINO, or no --prompt"
        )
    if args.prompt is not None:
        from detr_ext.modeling.language import parse_prompt

        try:
            parse_prompt(args.prompt)  # before any image: a prompt without phrases is an error
        except ValueError as error:
            raise DemoError(f"--prompt: {error}") from error
    output_dir.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    skipped: list[dict] = []
    try:
        for path, name in zip(images, names, strict=True):
            try:
                image = predictor.read_image(path)  # ImageReadError (OSError) names the file
                outputs = predict_outputs(predictor, image, args.prompt)
                instances, phrases = outputs["instances"], outputs.get("phrases")
                drawn = draw_predictions(
                    predictor.to_rgb(image),
                    instances,
                    predictor.metadata,
                    args.confidence_threshold,
                    phrases=phrases,
                    panoptic_seg=outputs.get("panoptic_seg"),
                )
                Image.fromarray(drawn).save(output_dir / name)
            except Exception as error:  # one bad image must not lose the others' results
                reason = (
                    str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
                )
                logger.warning(
                    "Skipping %s: %s", path, reason, exc_info=not isinstance(error, OSError)
                )
                skipped.append({"file": str(path), "error": reason})
                continue
            detections = instances_to_dicts(
                instances, predictor.metadata, args.confidence_threshold, phrases=phrases
            )
            record = {
                "file": str(path),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "visualization": name,
                "detections": detections,
            }
            if outputs.get("panoptic_seg") is not None:
                record["panoptic_segments"] = panoptic_to_dicts(
                    outputs["panoptic_seg"], predictor.metadata
                )
            records.append(record)
            logger.info("%s: %d detections -> %s", path, len(detections), output_dir / name)
    finally:
        # Also on an error or Ctrl-C: keep what was done.
        atomic_write_json(output_dir / "detections.json", records, indent=1)
        atomic_write_json(output_dir / "skipped.json", skipped, indent=1)
        logger.info("Wrote %d images and detections.json to %s", len(records), output_dir)
    if skipped:
        listing = "\n".join(f"  {item['file']}: {item['error']}" for item in skipped)
        logger.warning("Skipped %d of %d images:\n%s", len(skipped), len(images), listing)
    if not records:
        raise DemoError(
            f"none of the {len(images)} images could be processed; see "
            f"{output_dir / 'skipped.json'}"
        )
    return records


if __name__ == "__main__":
    try:
        main()
    except DemoError as error:
        sys.exit(f"tools/demo.py: error: {error}")
