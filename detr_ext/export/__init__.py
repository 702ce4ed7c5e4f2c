"""Deployment: export a detector's inference graph and run it without the model code.

- :class:`ExportableDetector`: the graph, ``(images [B, 3, H, W], image_sizes [B, 2]) ->
  (boxes [B, D, 4], scores [B, D], classes [B, D])``, normalization / padding and
  ``Instances`` left to Python;
- :func:`export_program` (``torch.export``, dynamic batch / height / width, the deformable
  attention one ``detr_ext::ms_deform_attn`` node), :func:`export_model` to a ``.pt2``, an
  AOTInductor package or ONNX (``GridSample``), each with its :class:`ExportMetadata`;
- :func:`load_exported` / :class:`ExportedPredictor`: run them and get detectron2
  ``Instances``, as the eager model and :class:`~detr_ext.engine.predictor.Predictor` give.

``tools/export_model.py`` and ``docs/export.md`` show the whole path.
"""

from .checks import build_model, compare_outputs, config_metadata, verify_runner
from .exporters import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    build_metadata,
    example_inputs,
    export_aoti,
    export_model,
    export_onnx,
    export_program,
    save_program,
)
from .metadata import FORMATS, METADATA_KEY, ExportMetadata
from .onnx_ops import ms_deform_attn_onnx
from .predictor import ExportedPredictor
from .runners import (
    AOTIRunner,
    ExportedRunner,
    OnnxRunner,
    TorchExportRunner,
    detect_format,
    load_exported,
)
from .wrapper import ExportableDetector, ExportError, check_exportable, padding_mask_from_sizes

__all__ = [
    "FORMATS",
    "INPUT_NAMES",
    "METADATA_KEY",
    "OUTPUT_NAMES",
    "AOTIRunner",
    "ExportError",
    "ExportMetadata",
    "ExportableDetector",
    "ExportedPredictor",
    "ExportedRunner",
    "OnnxRunner",
    "TorchExportRunner",
    "build_metadata",
    "build_model",
    "check_exportable",
    "compare_outputs",
    "config_metadata",
    "detect_format",
    "example_inputs",
    "export_aoti",
    "export_model",
    "export_onnx",
    "export_program",
    "load_exported",
    "ms_deform_attn_onnx",
    "padding_mask_from_sizes",
    "save_program",
    "verify_runner",
]
