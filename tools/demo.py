#!/usr/bin/env python
"""Run a trained detector on image files and folders; save drawn detections and a json.

    python tools/demo.py --config-file projects/dino/configs/dino_shapes.py \
        --weights output/dino_shapes/model_final.pth \
        --input photo.jpg more_photos/ --output output/demo [--confidence-threshold 0.3] \
        [--device cpu] [key=value ...]

Writes ``<output>/<image stem>.png`` per image (boxes, class names and scores drawn by
detectron2's ``Visualizer``) and ``<output>/detections.json``: one entry per image with
``file``, ``height``, ``width``, ``visualization`` and ``detections`` (``bbox_xyxy`` in pixels,
``score``, ``category_id`` as in the dataset's json, ``category_name``). Images go through the
config's test-time augmentation; ``key=value`` overrides apply to the config as in
``tools/train_net.py``.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--weights", required=True, help="checkpoint, e.g. model_final.pth")
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
    parser.add_argument("opts", nargs="*", help="config overrides, key=value", default=[])
    return parser


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """The image files named in ``inputs``: files as given, folders as their image files
    (by extension, sorted, not recursive). Raises :class:`DemoError` for a missing path, a file
    that is not a readable image, or when no image is found at all."""
    from PIL import Image

    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
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
    for path in images:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # PIL raises several types for broken / non-image files
            raise DemoError(f"--input: cannot read {str(path)!r} as an image ({error})") from error
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


def load_config(config_file: str, opts: Sequence[str]):
    from detectron2.config import LazyConfig

    if not os.path.isfile(config_file):
        raise DemoError(f"--config-file: expected a LazyConfig .py file, got {config_file!r}")
    malformed = [opt for opt in opts if "=" not in opt]
    if malformed:
        raise DemoError(f"expected config overrides as key=value, got {malformed}")
    cfg = LazyConfig.load(config_file)
    return LazyConfig.apply_overrides(cfg, list(opts))


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the demo; returns what was written to ``detections.json``."""
    args = build_parser().parse_args(argv)
    images = collect_images(args.input)
    if not os.path.isfile(args.weights) and "://" not in args.weights:
        raise DemoError(f"--weights: expected a checkpoint file, got missing path {args.weights!r}")
    cfg = load_config(args.config_file, args.opts)

    from detectron2.utils.logger import setup_logger
    from PIL import Image

    from detr_ext.engine.predictor import Predictor, draw_predictions, instances_to_dicts

    setup_logger(name="detr_ext", abbrev_name="detr")
    # The checkpointer reports what it loaded, and any missing / unexpected keys, here.
    setup_logger(name="fvcore")
    setup_logger(name="detectron2", abbrev_name="d2")
    predictor = Predictor(cfg, args.weights, device=args.device)
    output_dir = Path(args.output)
    output_dir.mkdir(parents=True, exist_ok=True)

    records = []
    for path, name in zip(images, output_names(images), strict=True):
        image = predictor.read_image(path)
        instances = predictor(image)
        drawn = draw_predictions(
            predictor.to_rgb(image), instances, predictor.metadata, args.confidence_threshold
        )
        Image.fromarray(drawn).save(output_dir / name)
        detections = instances_to_dicts(instances, predictor.metadata, args.confidence_threshold)
        records.append(
            {
                "file": str(path),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "visualization": name,
                "detections": detections,
            }
        )
        logger.info("%s: %d detections -> %s", path, len(detections), output_dir / name)
    with open(output_dir / "detections.json", "w") as f:
        json.dump(records, f, indent=1)
    logger.info("Wrote %d images and detections.json to %s", len(records), output_dir)
    return records


if __name__ == "__main__":
    try:
        main()
    except DemoError as error:
        sys.exit(f"tools/demo.py: error: {error}")
