"""What an exported detector carries besides its graph: how to prepare its inputs and read its
outputs, so that a runner needs neither the model code nor the config.

Stored as JSON inside every artifact: an extra file of the ``.pt2`` archive
(``torch.export.save``), the AOTInductor package's metadata (``aot_inductor.metadata``), and a
``metadata_props`` entry of the ONNX model, each under the key :data:`METADATA_KEY`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ["FORMATS", "METADATA_KEY", "ExportMetadata"]

FORMATS = ("torch_export", "aoti", "onnx")
"""``torch_export``: an ``ExportedProgram`` saved as ``.pt2``; ``aoti``: an AOTInductor package
(``.pt2``); ``onnx``: an ONNX model."""

METADATA_KEY = "detr_ext_export.json"
SCHEMA_VERSION = 1


@dataclasses.dataclass
class ExportMetadata:
    """Inputs, outputs and provenance of an exported detector.

    Attributes:
        format: one of :data:`FORMATS`.
        meta_architecture: class name of the exported model (e.g. ``"DINO"``).
        num_classes: object classes ``K``; ``classes`` outputs are in ``[0, K)``.
        detections_per_image: ``D`` of the outputs for inputs large enough (two-stage models
            keep fewer when the feature maps have fewer positions than queries).
        input_format: channel order of the images before normalization, ``"RGB"``/``"BGR"``.
        pixel_mean, pixel_std: per-channel normalization, in ``input_format`` order.
        size_divisibility: pad batches to a multiple of this (the model's own setting).
        size_multiple: the exported graph accepts heights and widths that are multiples of
            this (1: any size); the runners pad up to it.
        min_size, max_size: the range of padded heights and widths the graph accepts.
        max_batch: the largest batch (1 when the batch size is not dynamic).
        example_size: ``(H, W)`` of the example batch the graph was traced with.
        device: the device the graph was traced for (an AOTInductor package runs there).
        box_format: ``"xyxy_absolute"``: pixels in each image's unpadded input frame.
        opset: ONNX opset (ONNX only).
        config_file, weights: where the model came from, when known.
        test_resize: ``{"short_edge_length", "max_size"}`` of the config's test-time
            ``ResizeShortestEdge``, when it is just that, so a runner can resize like the
            evaluation does without the config.
        thing_classes: class names, when the config's test dataset gives them.
        apply_exif_orientation: whether the config's test mapper turns images by their EXIF
            orientation (files exported before this field was recorded: True, the default).
        torch_version, detr_ext_version: the versions that exported it.
    """

    format: str
    meta_architecture: str
    num_classes: int
    detections_per_image: int
    input_format: str
    pixel_mean: list[float]
    pixel_std: list[float]
    size_divisibility: int
    size_multiple: int
    min_size: int
    max_size: int
    max_batch: int
    example_size: list[int]
    device: str = "cpu"
    box_format: str = "xyxy_absolute"
    opset: int | None = None
    config_file: str | None = None
    weights: str | None = None
    test_resize: dict[str, int] | None = None
    thing_classes: list[str] | None = None
    apply_exif_orientation: bool = True
    torch_version: str = ""
    detr_ext_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"ExportMetadata: expected format in {FORMATS}, got {self.format!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "exported model") -> ExportMetadata:
        """Parse :meth:`to_json`'s output; a ValueError names ``where`` if it is not that."""
        try:
            fields: dict[str, Any] = json.loads(text)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where}: expected detr_ext export metadata (JSON), got unreadable data ({error})"
            ) from error
        known = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or "format" not in fields:
            raise ValueError(f"{where}: expected detr_ext export metadata, got {str(fields)[:80]}")
        if fields.get("schema_version", 0) > SCHEMA_VERSION:
            raise ValueError(
                f"{where}: export metadata version {fields['schema_version']} is newer than this "
                f"detr_ext reads ({SCHEMA_VERSION}); upgrade detr_ext"
            )
        return cls(**{key: value for key, value in fields.items() if key in known})
