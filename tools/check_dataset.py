#!/usr/bin/env python
"""Check a dataset's image files before training: every image readable to its end and of the
size its annotations were drawn for (EXIF orientation included). Training meets a broken image
only when the data stream reaches it, hours in; this finds all of them in one pass.

    python tools/check_dataset.py --json my_data/train.json --image-root my_data/images
    python tools/check_dataset.py --config-file my_dino.py          # its train and test sets
    python tools/check_dataset.py --dataset coco_2017_val --headers-only --report report.json

A COCO json given with ``--json`` (or registered by the ``--config-file``) goes through
``register_coco_format_dataset`` first, so its annotation problems are reported (logged) too;
an image file missing under the image folder, which registration refuses, is reported here as
one more image problem (``missing``) while the other images are still checked. With
``--config-file`` each dataset is checked as its split's mapper reads it (the mapper's
``apply_exif_orientation``; ``--no-exif`` overrides), and a training set in which no image has
an annotation left is a problem too (training would stop at once: detectron2's
``filter_empty`` leaves it no image). Exit status: 0 when every image is fine, 1 when some are
not (listed by kind), 2 for a usage error (no such json or folder, an unusable json, bad
arguments).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class UsageError(Exception):
    """Bad arguments, reported without a traceback (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="a COCO instances json (with --image-root)")
    source.add_argument("--dataset", nargs="+", help="registered detectron2 dataset name(s)")
    source.add_argument("--config-file", help="a LazyConfig: its train and test datasets")
    parser.add_argument("--image-root", help="folder the json's file_name values are under")
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="read image headers only (fast; sizes and EXIF, but truncated files go unnoticed)",
    )
    parser.add_argument(
        "--no-exif",
        action="store_true",
        help="check against the stored pixels, as a mapper with apply_exif_orientation=False "
        "(default: as the --config-file's mappers read the images, else with EXIF)",
    )
    parser.add_argument("--workers", type=int, default=8, help="threads reading images")
    parser.add_argument("--report", help="write every problem to this JSON file")
    parser.add_argument("--max-listed", type=int, default=10, help="problems printed per kind")
    return parser


def json_records(args: argparse.Namespace) -> list[dict]:
    """The image records of ``--json``, registered to check its annotations too."""
    from detectron2.data import DatasetCatalog

    from detr_ext.data import register_coco_format_dataset

    if not args.image_root:
        raise UsageError("--json needs --image-root (the folder of its images)")
    name = f"check_dataset:{Path(args.json).resolve()}"
    try:
        register_coco_format_dataset(name, args.json, args.image_root)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    except ValueError as error:
        # Registration refuses image files missing under image_root; here they are image
        # problems like the others, listed while every other image is still checked. When
        # the json is refused without the file check too, registration's first error (which
        # names the missing files and the other problems) is the usage error.
        try:
            register_coco_format_dataset(
                name, args.json, args.image_root, require_image_files=False
            )
        except ValueError:
            raise UsageError(str(error)) from error
    try:
        return DatasetCatalog.get(name)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"{args.json}: {error}") from error


def dataset_names(args: argparse.Namespace) -> list[tuple[str, str | None, bool]]:
    """The registered datasets to check (for ``--dataset`` or ``--config-file``), loading the
    config as needed: ``(name, split, apply_exif_orientation)``, the split (``"train"``,
    ``"test"``) and EXIF option of the config's mapper that reads it (``None`` and the
    command line's option for ``--dataset``)."""
    if args.image_root:
        raise UsageError("--image-root goes with --json")
    if args.dataset:
        return [(name, None, not args.no_exif) for name in args.dataset]
    from detr_ext.config import ConfigUsageError, load_config
    from detr_ext.data.datasets import image_files_not_required
    from detr_ext.engine.checks import config_dataset_names

    try:
        # Loading the config registers its datasets: a missing json fails here; missing image
        # files are registered, to be listed with the other image problems.
        with image_files_not_required():
            cfg = load_config(args.config_file)
    except (ConfigUsageError, FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    from detr_ext.engine.input_format import mapper_image_options

    checks = []
    for split in ("train", "test"):
        exif = not args.no_exif
        if exif:
            try:
                exif = mapper_image_options(cfg, split=split)[1]
            except KeyError:  # a loader without a mapper: read as detectron2 reads by default
                pass
            except ValueError as error:
                raise UsageError(f"{args.config_file}: {error}") from error
        for name in config_dataset_names(cfg, splits=(split,)):
            if (name, split, exif) not in checks:
                checks.append((name, split, exif))
    if not checks:
        raise UsageError(f"{args.config_file}: no dataloader.<split>.dataset.names to check")
    return checks


def has_annotations(records: list[dict]) -> bool:
    """Whether some record keeps an object after detectron2's ``filter_empty`` (an annotation
    that is not a crowd region), i.e. whether a training loader can be built from them."""
    return any(
        not annotation.get("iscrowd", 0)
        for record in records
        for annotation in record.get("annotations", ())
    )


def registered_records(name: str) -> list[dict]:
    """The records of a registered dataset."""
    from detectron2.data import DatasetCatalog

    if name not in DatasetCatalog.list():
        raise UsageError(f"dataset {name!r} is not registered (known: {DatasetCatalog.list()})")
    try:
        return DatasetCatalog.get(name)
    except (FileNotFoundError, ValueError) as error:  # registration's refusals
        raise UsageError(f"dataset {name!r}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    from detr_ext.data.image_check import PROBLEM_KINDS, check_image_files

    setup_logger(name="detr_ext", abbrev_name="detr")  # the json's annotation warnings
    if args.workers < 1 or args.max_listed < 0:
        raise UsageError("--workers must be >= 1 and --max-listed >= 0")
    report: dict = {"datasets": {}, "decode": not args.headers_only}
    total_problems = 0
    checks = [(args.json, None, not args.no_exif)] if args.json else dataset_names(args)
    for name, split, exif in checks:
        records = json_records(args) if args.json else registered_records(name)
        label = name if split is None else f"{name} ({split}, EXIF {'on' if exif else 'off'})"
        begin = time.perf_counter()
        problems = check_image_files(
            records,
            decode=not args.headers_only,
            apply_exif_orientation=exif,
            workers=args.workers,
        )
        seconds = time.perf_counter() - begin
        counts = Counter(problem.kind for problem in problems)
        print(
            f"{label}: {len(records)} images checked in {seconds:.1f} s, "
            f"{len(problems)} with problems"
            + "".join(f", {counts[kind]} {kind}" for kind in PROBLEM_KINDS if counts[kind])
        )
        annotated = has_annotations(records)
        if split == "train" and not annotated:
            total_problems += 1
            print(
                f"  no_annotations: none of the {len(records)} images has an annotation that "
                "is not a crowd region, so training on this set stops at once (detectron2's "
                "filter_empty leaves no image); expected a json with annotations"
            )
        elif not annotated:
            print(f"  note: none of the {len(records)} images has an annotation")
        for kind in PROBLEM_KINDS:
            listed = [problem for problem in problems if problem.kind == kind]
            for problem in listed[: args.max_listed]:
                where = f"{problem.file_name} (image_id={problem.image_id!r})"
                print(f"  {kind}: {where}: {problem.detail}")
            if len(listed) > args.max_listed:
                print(f"  ... and {len(listed) - args.max_listed} more {kind}")
        report["datasets"][label] = {
            "images": len(records),
            "exif": exif,
            "no_annotations": not annotated,
            "seconds": round(seconds, 3),
            "problems": [problem.to_dict() for problem in problems],
        }
        total_problems += len(problems)
    if args.report:
        from detr_ext.utils import atomic_write_json

        atomic_write_json(args.report, report, indent=2, default=str)
        print(f"wrote {args.report}")
    return 1 if total_problems else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    try:
        sys.exit(main())
    except UsageError as error:
        print(f"tools/check_dataset.py: error: {error}", file=sys.stderr)
        sys.exit(2)
