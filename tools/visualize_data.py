#!/usr/bin/env python
"""Draw a config's training data: as annotated, or as the model sees it after augmentation.

    python tools/visualize_data.py --config-file my_dino.py --source dataloader \
        --output-dir output/vis_data [--num-images 20] [--split train|test] [--seed 0] \
        [key=value ...]

- ``--source annotation``: each image with its dataset annotations (boxes, class names, masks
  when the dataset has them), drawn by detectron2's ``Visualizer.draw_dataset_dict``, in the
  dataset's original frame. Shows wrong category ids, misplaced or swapped box coordinates,
  and images whose EXIF rotation does not match their annotations.
- ``--source dataloader``: each image after the config's mapper (resizing, flips, crops:
  ``dataloader.<split>.mapper``) with the boxes, classes and masks the model is trained on.
  Shows objects lost or cut by random crops and boxes that no longer fit after a transform.

The first ``--num-images`` images of ``dataloader.<split>.dataset`` are drawn, in the
dataset's order (``--shuffle`` draws a random sample instead, with ``--seed``), to
``<output-dir>/<image id or file stem>.png``; the mapper's random transforms use ``--seed``
too, so a run can be repeated. ``key=value`` overrides apply to the config as in
``tools/train_net.py``.

``--source annotation`` draws every image of the dataset, also those without annotations
(which training leaves out: ``filter_empty``); ``--source dataloader`` draws what the loader
holds, and says how many images its ``filter_empty`` left out. The test split's mapper keeps
no annotations (as in evaluation), so ``--source dataloader --split test`` draws the images
only. An image that cannot be read or does not fit its annotations (size, EXIF rotation) is
skipped and listed at the end, with the reason; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

SOURCES = ("annotation", "dataloader")


class VisualizeError(Exception):
    """A usage error, reported without a traceback."""


class SkippedImages(Exception):
    """Some images could not be drawn (listed on stderr); the others were written."""

    def __init__(self, written: list[Path], count: int) -> None:
        super().__init__(f"{count} image(s) skipped")
        self.written = written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file")
    parser.add_argument("--source", choices=SOURCES, required=True)
    parser.add_argument("--output-dir", required=True, help="folder for the PNGs")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--num-images", type=int, default=20, help="how many images to draw")
    parser.add_argument("--shuffle", action="store_true", help="a random sample of the images")
    parser.add_argument("--seed", type=int, default=0, help="sample and augmentation seed")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def _output_name(record: dict, used: set[str]) -> str:
    """``<image_id>.png`` (or the file's stem), made unique within one run."""
    stem = str(record.get("image_id", Path(record.get("file_name", "image")).stem))
    name, count = f"{stem}.png", 1
    while name in used:
        count += 1
        name = f"{stem}_{count}.png"
    used.add(name)
    return name


def draw_annotations(record: dict, metadata, apply_exif_orientation: bool = True):
    """The record's image with its annotations, as an RGB uint8 array. The image is read as
    the mappers read it (16-bit images scaled to 8 bit, the EXIF orientation applied or not as
    the config's mapper says)."""
    from detectron2.utils.visualizer import Visualizer

    from detr_ext.data.image_io import read_image_file

    image = read_image_file(
        record["file_name"],
        format="RGB",
        image_id=record.get("image_id"),
        apply_exif_orientation=apply_exif_orientation,
    )
    visualizer = Visualizer(image, metadata=metadata)
    # draw_dataset_dict takes masks from every annotation when the first has one (KeyError
    # on a box without): annotations with and without segmentation are drawn in two passes.
    annotations = record.get("annotations", [])
    with_masks = [a for a in annotations if "segmentation" in a]
    without = [a for a in annotations if "segmentation" not in a]
    visualizer.draw_dataset_dict({**record, "annotations": with_masks})
    if without:  # the segmentation maps were drawn by the first pass
        maps = ("sem_seg", "pan_seg", "sem_seg_file_name", "pan_seg_file_name")
        plain = {key: value for key, value in record.items() if key not in maps}
        visualizer.draw_dataset_dict({**plain, "annotations": without})
    return visualizer.output.get_image()


def draw_mapped(mapped: dict, metadata, image_format: str = "RGB"):
    """A mapper's output (``image`` CHW in ``image_format``, ``instances``) drawn with its
    ground truth, as an RGB uint8 array."""
    from detectron2.utils.visualizer import Visualizer

    image = mapped["image"].permute(1, 2, 0).numpy()
    if image_format == "BGR":
        image = image[:, :, ::-1]
    visualizer = Visualizer(image, metadata=metadata)
    instances = mapped.get("instances")
    if instances is None or len(instances) == 0:
        return visualizer.output.get_image()
    names = list(metadata.get("thing_classes", []))
    classes = instances.gt_classes.tolist()
    labels = [names[c] if 0 <= c < len(names) else str(c) for c in classes]
    masks = instances.gt_masks if instances.has("gt_masks") else None
    if masks is not None and hasattr(masks, "tensor"):
        masks = masks.tensor.numpy()
    elif masks is not None:  # PolygonMasks
        masks = [[p.reshape(-1) for p in polygons] for polygons in masks.polygons]
    return visualizer.overlay_instances(
        boxes=instances.gt_boxes.tensor.numpy(), labels=labels, masks=masks
    ).get_image()


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Draw the images; returns the files written."""
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch
    from detectron2.config import instantiate
    from detectron2.data import MetadataCatalog
    from detectron2.data.build import filter_images_with_only_crowd_annotations
    from PIL import Image

    from detr_ext.config import ConfigUsageError, load_config
    from detr_ext.engine.input_format import lazy_argument
    from detr_ext.engine.predictor import mapper_image_options

    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise VisualizeError(f"--output-dir: expected a folder, got the file {args.output_dir!r}")
    if args.num_images < 1:
        raise VisualizeError(f"--num-images: expected a positive count, got {args.num_images}")
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigUsageError as error:
        raise VisualizeError(str(error)) from error
    section = cfg.get("dataloader", {}).get(args.split)
    if section is None or "dataset" not in section:
        raise VisualizeError(f"the config has no dataloader.{args.split}.dataset")
    dataset_node = section.dataset
    # Unset, it is what the dataset function defaults to: get_detection_dataset_dicts
    # leaves images without annotations out (filter_empty=True).
    filter_empty = bool(lazy_argument(dataset_node, "filter_empty", False))
    if filter_empty:
        # Loaded once, every image, also those training leaves out for having no annotation;
        # the loader's filter is applied below for --source dataloader.
        dataset_node = dataset_node.copy()
        dataset_node.filter_empty = False
    try:
        records = instantiate(dataset_node)
    except (KeyError, FileNotFoundError, AssertionError) as error:
        raise VisualizeError(
            f"cannot load dataloader.{args.split}.dataset ({error}); is the dataset registered "
            "and on disk?"
        ) from error
    if len(records) == 0:
        raise VisualizeError(f"dataloader.{args.split}.dataset is empty")
    if filter_empty:
        # What get_detection_dataset_dicts(filter_empty=True) does.
        kept = filter_images_with_only_crowd_annotations(records)
        left_out = len(records) - len(kept)
        if args.source == "dataloader":
            if not kept:
                raise VisualizeError(
                    f"dataloader.{args.split}.dataset has no image with an annotation, so its "
                    "filter_empty leaves none; --source annotation draws them"
                )
            records = kept
            print(
                f"note: the dataset's filter_empty left out {left_out} image(s) without "
                "annotations (as training does); --source annotation draws them"
            )
        else:
            print(
                f"note: drawing all {len(records)} images; {left_out} have no annotation (crowd "
                "regions aside) and are left out of training by the dataset's filter_empty"
            )
    if args.source == "dataloader" and args.split == "test":
        print(
            "note: the test mapper keeps no annotations (as in evaluation): drawing the images "
            "only; --source annotation draws them with their annotations"
        )
    dataset_names = section.dataset.get("names", [])
    dataset_name = dataset_names if isinstance(dataset_names, str) else list(dataset_names)[0]
    metadata = MetadataCatalog.get(dataset_name)

    indices = list(range(len(records)))
    if args.shuffle:
        random.Random(args.seed).shuffle(indices)
    try:  # how the split's mapper reads files (EXIF orientation), for --source annotation
        apply_exif = mapper_image_options(cfg, split=args.split)[1]
    except (KeyError, AttributeError):  # no mapper in the config: the mappers' default
        apply_exif = True
    except ValueError as error:
        raise VisualizeError(str(error)) from error
    mapper = None
    if args.source == "dataloader":
        if "mapper" not in section:
            raise VisualizeError(f"the config has no dataloader.{args.split}.mapper")
        mapper = instantiate(section.mapper)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    used: set[str] = set()
    for index in indices[: args.num_images]:
        record = records[index]
        try:
            if mapper is None:
                drawing = draw_annotations(record, metadata, apply_exif)
            else:
                mapped = mapper(dict(record))
                if mapped is None:  # a mapper that skips unreadable images
                    raise ValueError("the mapper returned nothing")
                drawing = draw_mapped(mapped, metadata, getattr(mapper, "img_format", "RGB"))
        except (OSError, ValueError) as error:  # unreadable file, size / EXIF mismatch
            skipped.append(f"{record.get('file_name')}: {error}")
            continue
        path = output_dir / _output_name(record, used)
        Image.fromarray(drawing).save(path)
        written.append(path)
    print(f"wrote {len(written)} image(s) to {output_dir}")
    if skipped:
        listing = "\n".join(f"  {line}" for line in skipped)
        print(f"skipped {len(skipped)} image(s):\n{listing}", file=sys.stderr)
        raise SkippedImages(written, len(skipped))
    return written


if __name__ == "__main__":
    try:
        main()
    except VisualizeError as error:
        print(f"visualize_data.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    except SkippedImages:
        sys.exit(1)
