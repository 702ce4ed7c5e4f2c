"""Export a detector's inference graph: ``torch.export`` (``.pt2``), AOTInductor (a compiled
``.pt2`` package) and ONNX.

All three start from one ``ExportedProgram`` of :class:`~detr_ext.export.ExportableDetector`
(:func:`export_program`), traced with dynamic batch size, height and width; the multi-scale
deformable attention stays one ``detr_ext::ms_deform_attn`` node in it. AOTInductor compiles
that program (the node becomes a call into ``detr_ext._C``); ONNX translates it, the operator
through :func:`~detr_ext.export.onnx_ops.ms_deform_attn_onnx` (``GridSample``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import detr_ext

from .metadata import FORMATS, METADATA_KEY, ExportMetadata
from .onnx_ops import MIN_OPSET, translation_table
from .wrapper import ExportableDetector, ExportError

__all__ = [
    "DEFAULT_EXAMPLE_SIZE",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZE",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "build_metadata",
    "example_inputs",
    "export_aoti",
    "export_model",
    "export_onnx",
    "export_program",
    "save_program",
]

logger = logging.getLogger(__name__)

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "classes")
# Above the backbones' largest stride (32; DINO's extra level: 64 -> a 1x1 map at 64 px):
# a feature map of size 1 would be specialized by torch.export.
DEFAULT_MIN_SIZE = 64
DEFAULT_MAX_SIZE = 4096
DEFAULT_MAX_BATCH = 64
DEFAULT_EXAMPLE_SIZE = (320, 416)


def _check_size_options(
    min_size: int, max_size: int, size_multiple: int, max_batch: int, example_size: Sequence[int]
) -> None:
    if size_multiple < 1:
        raise ValueError(f"export: expected size_multiple >= 1, got {size_multiple}")
    if not 2 <= min_size <= max_size:
        # 0 and 1 are special to torch.export (broadcasting), so a dynamic size starts at 2.
        raise ValueError(
            f"export: expected 2 <= min_size <= max_size, got min_size={min_size}, "
            f"max_size={max_size}"
        )
    if max_batch < 1:
        raise ValueError(f"export: expected max_batch >= 1, got {max_batch}")
    if len(example_size) != 2 or not all(
        min_size <= size <= max_size and size % size_multiple == 0 for size in example_size
    ):
        raise ValueError(
            f"export: expected example_size (H, W), multiples of size_multiple={size_multiple} "
            f"in [{min_size}, {max_size}], got {tuple(example_size)}"
        )


def example_inputs(
    model: nn.Module, example_size: Sequence[int], batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random normalized batch ``[batch, C, H, W]`` on the model's device and its image sizes
    ``[batch, 2]`` (the second image smaller, so that the traced graph sees padding)."""
    height, width = example_size
    generator = torch.Generator().manual_seed(0)
    channels = model.pixel_mean.shape[0]
    images = torch.randn(batch, channels, height, width, generator=generator)
    sizes = torch.tensor([[height, width]] * batch, dtype=torch.int64)
    if batch > 1:
        sizes[1] = torch.tensor([max(1, height * 3 // 4), max(1, width * 5 // 6)])
    return images.to(model.device), sizes.to(model.device)


def _size_dim(name: str, min_size: int, max_size: int, size_multiple: int) -> Any:
    if size_multiple == 1:
        return torch.export.Dim(name, min=min_size, max=max_size)
    blocks = torch.export.Dim(
        f"{name}_div_{size_multiple}",
        min=math.ceil(min_size / size_multiple),
        max=max_size // size_multiple,
    )
    return size_multiple * blocks


def export_program(
    model: nn.Module,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    size_multiple: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    example_size: Sequence[int] = DEFAULT_EXAMPLE_SIZE,
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``ExportableDetector(model)`` with dynamic batch, height and width.

    Args:
        model: a :class:`~detr_ext.modeling.DetectorBase` (put in eval mode).
        min_size, max_size: range of the padded height and width.
        size_multiple: heights and widths are multiples of this (1: any size). A multiple of
            the backbone's largest stride (e.g. 32) makes the shape arithmetic simpler and the
            export about twice as fast, at the price of padding every image up to it.
        max_batch: largest batch; 1 exports a graph for single images (static batch).
        example_size: ``(H, W)`` of the example batch (values do not matter, only the sizes,
            which must be typical: not 1, inside the range).

    Returns:
        the ``ExportedProgram``: ``(images [B, 3, H, W], image_sizes [B, 2]) -> (boxes
        [B, D, 4], scores [B, D], classes [B, D])`` (see :class:`ExportableDetector`).

    Raises:
        ExportError: the model cannot be exported (names the model and the reason).
    """
    _check_size_options(min_size, max_size, size_multiple, max_batch, example_size)
    wrapper = ExportableDetector(model)
    name = type(model).__name__
    batch = 2 if max_batch > 1 else 1
    images, image_sizes = example_inputs(model, example_size, batch)
    height = _size_dim("height", min_size, max_size, size_multiple)
    width = _size_dim("width", min_size, max_size, size_multiple)
    batch_dim = torch.export.Dim("batch", min=1, max=max_batch) if max_batch > 1 else None
    dynamic_shapes = ({0: batch_dim, 2: height, 3: width}, {0: batch_dim})
    logger.info("torch.export of %s (example batch %s) ...", name, tuple(images.shape))
    try:
        with torch.no_grad():
            return torch.export.export(
                wrapper, (images, image_sizes), dynamic_shapes=dynamic_shapes
            )
    except Exception as error:
        raise ExportError(
            f"torch.export could not trace {name} with a dynamic batch in [1, {max_batch}] and "
            f"height / width in [{min_size}, {max_size}] (multiples of {size_multiple}): "
            f"{_min_size_hint(error, min_size)}{type(error).__name__}: {_summary(error)}"
        ) from error


_SUGGESTED_MIN = re.compile(r"Dim\('(?:height|width)[^']*', min=(\d+)")


def _min_size_hint(error: Exception, min_size: int) -> str:
    """A sentence naming the smallest image size torch.export suggests, when the model cannot
    handle ``min_size`` (e.g. DINO-R50 4-scale: its stride-64 level is a 1x1 map at 64 px)."""
    suggested = [int(n) for n in _SUGGESTED_MIN.findall(str(error))]
    if not suggested or max(suggested) <= min_size:
        return ""
    low = max(suggested)
    return (
        f"the model needs images of at least {low} px: pass min_size={low} "
        f"(tools/export_model.py --min-size {low}). "
    )


def _summary(error: Exception, limit: int = 800) -> str:
    """The informative head of an exception message (torch.export's are long)."""
    text = str(error).strip()
    text = text.split("\nThe error above occurred", 1)[0].strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def build_metadata(
    model: nn.Module,
    format: str,
    program: torch.export.ExportedProgram,
    *,
    min_size: int,
    max_size: int,
    size_multiple: int,
    max_batch: int,
    example_size: Sequence[int],
    **extra: Any,
) -> ExportMetadata:
    """The :class:`ExportMetadata` of ``model`` exported as ``program``; ``extra`` fills the
    optional fields (``config_file``, ``weights``, ``test_resize``, ``thing_classes``,
    ``opset``)."""
    boxes = program.graph_module.graph.find_nodes(op="output")[0].args[0][0].meta["val"]
    detections = boxes.shape[1]
    return ExportMetadata(
        format=format,
        meta_architecture=type(model).__name__,
        num_classes=int(model.num_classes),
        # Symbolic for two-stage models (fewer detections for tiny inputs): the usual count.
        detections_per_image=int(
            detections if isinstance(detections, int) else model.select_box_nums_for_evaluation
        ),
        input_format=model.input_format,
        pixel_mean=[float(v) for v in model.pixel_mean.flatten().tolist()],
        pixel_std=[float(v) for v in model.pixel_std.flatten().tolist()],
        size_divisibility=int(model.size_divisibility),
        size_multiple=size_multiple,
        min_size=min_size,
        max_size=max_size,
        max_batch=max_batch,
        example_size=list(example_size),
        device=str(model.device),
        torch_version=torch.__version__,
        detr_ext_version=detr_ext.__version__,
        **extra,
    )


def save_program(
    program: torch.export.ExportedProgram, path: str | os.PathLike, metadata: ExportMetadata
) -> Path:
    """Save ``program`` with ``torch.export.save`` (``.pt2``), metadata as an extra file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={METADATA_KEY: metadata.to_json()})
    return path


def export_aoti(
    program: torch.export.ExportedProgram, path: str | os.PathLike, metadata: ExportMetadata
) -> Path:
    """Compile ``program`` with AOTInductor for its device into a package (``.pt2``).

    Loading it needs ``detr_ext._C`` (the operator's kernels) but no Python model code: from
    Python ``torch._inductor.aoti_load_package`` after ``import detr_ext.ops``; from C++
    ``torch::inductor::AOTIModelPackageLoader`` with the extension library loaded (see
    docs/export.md). Compilation takes minutes for a full-size model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        output = torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(path),
            inductor_configs={"aot_inductor.metadata": {METADATA_KEY: metadata.to_json()}},
        )
    except Exception as error:
        raise ExportError(
            f"AOTInductor could not compile {metadata.meta_architecture}: "
            f"{type(error).__name__}: {_summary(error)}"
        ) from error
    return Path(output)


def export_onnx(
    program: torch.export.ExportedProgram,
    path: str | os.PathLike,
    metadata: ExportMetadata,
    *,
    opset: int = MIN_OPSET,
    check: bool = True,
) -> Path:
    """Translate ``program`` to ONNX (one file), validated with ``onnx.checker`` if ``check``.

    ``detr_ext::ms_deform_attn`` becomes ``GridSample`` and friends
    (:mod:`detr_ext.export.onnx_ops`); the dynamic batch / height / width stay dynamic.
    Needs ``onnx`` and ``onnxscript`` (``pip install detr_ext[export]``).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"export_onnx: expected opset >= {MIN_OPSET}, got {opset}")
    try:
        import onnx
    except ImportError as error:
        raise ExportError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'detr_ext[export]' "
            f"({error})"
        ) from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        onnx_program = torch.onnx.export(
            program,  # an ExportedProgram needs no example arguments
            dynamo=True,
            custom_translation_table=translation_table(),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            # onnxscript 0.7.2's optimizer leaves a Clip reading a value no node produces (from
            # inverse_sigmoid's clamps); onnxruntime optimizes the graph when it loads it.
            optimize=False,
            verbose=False,
        )
    except Exception as error:
        raise ExportError(
            f"ONNX export of {metadata.meta_architecture} failed: {type(error).__name__}: "
            f"{_summary(error)}"
        ) from error
    onnx_program.model.metadata_props[METADATA_KEY] = metadata.to_json()
    onnx_program.save(str(path), external_data=False)
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    format: str,
    *,
    program: torch.export.ExportedProgram | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    size_multiple: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    example_size: Sequence[int] = DEFAULT_EXAMPLE_SIZE,
    opset: int = MIN_OPSET,
    **metadata_fields: Any,
) -> ExportMetadata:
    """Export ``model`` to ``path`` in ``format`` (one of :data:`~detr_ext.export.FORMATS`).

    Args:
        model: a :class:`~detr_ext.modeling.DetectorBase` with its weights loaded.
        path: the file to write (``.pt2`` for ``torch_export`` / ``aoti``, ``.onnx``).
        format: ``"torch_export"``, ``"aoti"`` or ``"onnx"``.
        program: an ``ExportedProgram`` of this model from :func:`export_program` with the
            same size options, to reuse (exporting twice costs twice); traced if None.
        min_size, max_size, size_multiple, max_batch, example_size: see
            :func:`export_program`.
        opset: ONNX opset (>= 18).
        **metadata_fields: ``config_file``, ``weights``, ``test_resize``, ``thing_classes``
            for the metadata.

    Returns:
        the :class:`ExportMetadata` stored in the file.
    """
    if format not in FORMATS:
        raise ValueError(f"export_model: expected format in {FORMATS}, got {format!r}")
    sizes = dict(
        min_size=min_size,
        max_size=max_size,
        size_multiple=size_multiple,
        max_batch=max_batch,
        example_size=tuple(example_size),
    )
    if program is None:
        program = export_program(model, **sizes)
    if format == "onnx":
        metadata_fields["opset"] = opset
    metadata = build_metadata(model, format, program, **sizes, **metadata_fields)
    if format == "torch_export":
        save_program(program, path, metadata)
    elif format == "aoti":
        export_aoti(program, path, metadata)
    else:
        export_onnx(program, path, metadata, opset=opset)
    logger.info("Exported %s as %s to %s", metadata.meta_architecture, format, path)
    return metadata
