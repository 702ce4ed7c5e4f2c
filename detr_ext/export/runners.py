"""Run exported detectors: the same detections as the eager model, without its code.

- :func:`load_exported` opens a ``.pt2`` (``torch.export``), an AOTInductor package (``.pt2``)
  or an ``.onnx`` file and returns an :class:`ExportedRunner`: tensors in, tensors out
  (``images [B, 3, H, W]``, ``image_sizes [B, 2]`` -> ``boxes``, ``scores``, ``classes``), plus
  :meth:`ExportedRunner.predict`, which normalizes and pads raw images as
  ``DetectorBase.preprocess_image`` does and returns detectron2 ``Instances`` resized to the
  requested sizes as ``DetectorBase.postprocess`` does.
- :class:`~detr_ext.export.predictor.ExportedPredictor` (in ``predictor.py``) is
  :class:`~detr_ext.engine.predictor.Predictor` for an exported model.

The ``.pt2`` and AOTInductor formats need ``detr_ext`` installed for the operator's kernels
(``detr_ext._C``), which importing this module loads; ONNX needs ``onnxruntime`` only.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor

import detr_ext.ops  # noqa: F401  (registers detr_ext::ms_deform_attn and its kernels)

from ..modeling.meta_arch.output_checks import check_finite_detections
from .metadata import METADATA_KEY, ExportMetadata
from .wrapper import ExportError

__all__ = [
    "AOTIRunner",
    "ExportedRunner",
    "OnnxRunner",
    "TorchExportRunner",
    "detect_format",
    "load_exported",
]


def detect_format(path: str | os.PathLike) -> str:
    """``"onnx"`` for ``.onnx``; for a ``.pt2`` zip, ``"aoti"`` when it holds an AOTInductor
    model, else ``"torch_export"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_exported: expected an exported model file, got {path}")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"load_exported: expected a .onnx file or a .pt2 archive, got {path} (not a zip)"
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return "aoti" if any("/aotinductor/" in name for name in names) else "torch_export"


class ExportedRunner:
    """An exported detector: call it on tensors, or :meth:`predict` on images.

    Attributes:
        path: the file.
        metadata: its :class:`ExportMetadata`.
    """

    def __init__(self, path: Path, metadata: ExportMetadata) -> None:
        self.path = path
        self.metadata = metadata
        # float32 [C, 1, 1], as DetectorBase's buffers: the same normalization arithmetic.
        self.pixel_mean = torch.tensor(metadata.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.tensor(metadata.pixel_std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def device(self) -> torch.device:
        """Where the graph runs: the device it was exported for (ONNX: the CPU side of
        onnxruntime, which takes and returns host arrays)."""
        return torch.device(self.metadata.device)

    def run(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The graph itself; implemented per format."""
        raise NotImplementedError

    def __call__(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the exported graph.

        Args:
            images: ``[B, 3, H, W]`` float32 normalized, padded batch.
            image_sizes: ``[B, 2]`` int64 ``(h, w)`` before padding.

        Returns:
            ``(boxes [B, D, 4], scores [B, D], classes [B, D])`` on the CPU: absolute ``xyxy``
            in each image's unpadded frame (see :class:`~detr_ext.export.ExportableDetector`).
        """
        self._check_inputs(images, image_sizes)
        boxes, scores, classes = self.run(images, image_sizes)
        return boxes.cpu(), scores.cpu(), classes.cpu()

    def _check_inputs(self, images: Tensor, image_sizes: Tensor) -> None:
        meta = self.metadata
        where = f"{type(self).__name__}({self.path.name})"
        if images.dim() != 4 or images.shape[1] != len(meta.pixel_mean):
            raise ValueError(
                f"{where}: expected images [B, {len(meta.pixel_mean)}, H, W], got "
                f"{list(images.shape)}"
            )
        if images.dtype != torch.float32:
            raise ValueError(f"{where}: expected float32 images, got {images.dtype}")
        batch, _, height, width = images.shape
        if image_sizes.shape != (batch, 2):
            raise ValueError(
                f"{where}: expected image_sizes [{batch}, 2], got {list(image_sizes.shape)}"
            )
        if batch > meta.max_batch:
            raise ValueError(
                f"{where}: the model was exported for batches of at most {meta.max_batch} "
                f"images, got {batch}"
            )
        for name, size in (("height", height), ("width", width)):
            if not meta.min_size <= size <= meta.max_size or size % meta.size_multiple:
                raise ValueError(
                    f"{where}: the model was exported for a padded {name} in "
                    f"[{meta.min_size}, {meta.max_size}], a multiple of {meta.size_multiple}; "
                    f"got {size}"
                )

    # ------------------------------------------------------------------ images

    @property
    def pad_multiple(self) -> int:
        """Padded heights and widths are multiples of this: the model's size_divisibility and
        the graph's size_multiple."""
        return math.lcm(max(1, self.metadata.size_divisibility), self.metadata.size_multiple)

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``[C, H_i, W_i]`` images (uint8 or float, ``metadata.input_format`` channel order)
        -> ``(images [B, C, H, W] normalized and zero-padded, image_sizes [B, 2])``, as
        ``DetectorBase.preprocess_image`` does (padding also up to ``min_size``, if needed)."""
        channels = len(self.metadata.pixel_mean)
        normalized = []
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != channels:
                got = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(
                    f"{type(self).__name__}.preprocess: images[{index}] must be a "
                    f"[{channels}, H, W] tensor, got {got}"
                )
            normalized.append((image.cpu() - self.pixel_mean) / self.pixel_std)
        padded = ImageList.from_tensors(normalized, self.pad_multiple)
        tensor = padded.tensor
        minimum = self.metadata.min_size
        if min(tensor.shape[-2:]) < minimum:
            # Smaller than the exported range: pad further (the model masks padding out).
            bottom = max(0, minimum - tensor.shape[-2])
            right = max(0, minimum - tensor.shape[-1])
            tensor = torch.nn.functional.pad(tensor, (0, right, 0, bottom))
        sizes = torch.tensor([list(size) for size in padded.image_sizes], dtype=torch.int64)
        return tensor, sizes

    def predict(
        self,
        images: Sequence[Tensor],
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Instances]:
        """Detect objects in network-input images (already resized by the test augmentation).

        Args:
            images: ``[C, H_i, W_i]`` tensors in ``metadata.input_format`` channel order.
            output_sizes: ``(height, width)`` to resize each image's detections to (the
                original image size); defaults to the input sizes.

        Returns:
            one ``Instances`` per image with ``pred_boxes`` (absolute ``xyxy``), ``scores`` and
            ``pred_classes``: what the eager model returns for ``[{"image", "height",
            "width"}]`` inputs, batched in chunks of ``metadata.max_batch``.
        """
        if output_sizes is not None and len(output_sizes) != len(images):
            raise ValueError(
                f"{type(self).__name__}.predict: expected {len(images)} output sizes, got "
                f"{len(output_sizes)}"
            )
        results: list[Instances] = []
        step = self.metadata.max_batch
        for start in range(0, len(images), step):
            chunk = list(images[start : start + step])
            batch, sizes = self.preprocess(chunk)
            boxes, scores, classes = self(batch, sizes)
            for offset, (height, width) in enumerate(sizes.tolist()):
                index = start + offset
                result = Instances((height, width))
                result.pred_boxes = Boxes(boxes[offset])
                result.scores = scores[offset]
                result.pred_classes = classes[offset]
                out_height, out_width = (
                    output_sizes[index] if output_sizes is not None else (height, width)
                )
                check_finite_detections(result, {"image_id": f"number {index} of the call"})
                results.append(detector_postprocess(result, out_height, out_width))
        return results


class TorchExportRunner(ExportedRunner):
    """A ``torch.export`` ``.pt2``: ``torch.export.load`` and the program's module."""

    def __init__(self, path: Path) -> None:
        extra_files = {METADATA_KEY: ""}
        program = torch.export.load(path, extra_files=extra_files)
        if not extra_files[METADATA_KEY]:
            raise ValueError(
                f"TorchExportRunner: {path} has no {METADATA_KEY}; expected a program saved by "
                "detr_ext.export (tools/export_model.py)"
            )
        super().__init__(path, ExportMetadata.from_json(extra_files[METADATA_KEY], str(path)))
        self.program = program
        self.module = program.module()

    def run(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            return self.module(images.to(self.device), image_sizes.to(self.device))


class AOTIRunner(ExportedRunner):
    """An AOTInductor package: ``torch._inductor.aoti_load_package`` (compiled code; the
    operator calls into ``detr_ext._C``)."""

    def __init__(self, path: Path) -> None:
        package = torch._inductor.aoti_load_package(str(path))
        text = package.get_metadata().get(METADATA_KEY)
        if not text:
            raise ValueError(
                f"AOTIRunner: {path} has no {METADATA_KEY}; expected a package exported by "
                "detr_ext.export (tools/export_model.py --format aoti)"
            )
        super().__init__(path, ExportMetadata.from_json(text, str(path)))
        self.package = package

    def run(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            return tuple(self.package(images.to(self.device), image_sizes.to(self.device)))


class OnnxRunner(ExportedRunner):
    """An ONNX model run by ``onnxruntime`` (CPU execution provider by default).

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers; default ``["CPUExecutionProvider"]``.
        threads: intra-op threads (default: onnxruntime's choice, one per core).
    """

    def __init__(
        self, path: Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportError(
                f"running an ONNX model needs onnxruntime: pip install 'detr_ext[export]' ({error})"
            ) from error
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if not text:
            raise ValueError(
                f"OnnxRunner: {path} has no {METADATA_KEY} metadata; expected a model exported "
                "by detr_ext.export (tools/export_model.py --format onnx)"
            )
        super().__init__(path, ExportMetadata.from_json(text, str(path)))
        self.session = session

    def run(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.session.run(
            ["boxes", "scores", "classes"],
            {"images": images.cpu().numpy(), "image_sizes": image_sizes.cpu().numpy()},
        )
        return tuple(torch.from_numpy(output) for output in outputs)


def load_exported(path: str | os.PathLike, **options: Any) -> ExportedRunner:
    """Open an exported detector; the format comes from the file (:func:`detect_format`).

    ``options`` go to the runner (``providers`` and ``threads`` for ONNX).
    """
    path = Path(path)
    runner_class = {
        "torch_export": TorchExportRunner,
        "aoti": AOTIRunner,
        "onnx": OnnxRunner,
    }[detect_format(path)]
    return runner_class(path, **options)
