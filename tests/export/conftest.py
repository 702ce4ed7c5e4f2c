"""Exported artifacts shared by the export tests: one torch.export program and one ONNX file
per project, made once per session (tracing is the slow part)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from detr_ext.export import OnnxRunner, export_model, export_program, load_exported

from .models import EXAMPLE_SIZE, PROJECTS, tiny_model


@dataclass
class Exported:
    project: str
    model: nn.Module
    program: torch.export.ExportedProgram
    onnx_path: Path
    onnx: OnnxRunner


_CACHE: dict[str, Exported] = {}


def exported_project(project: str, directory: Path) -> Exported:
    if project not in _CACHE:
        model = tiny_model(project)
        program = export_program(model, example_size=EXAMPLE_SIZE)
        onnx_path = directory / f"{project}.onnx"
        export_model(model, onnx_path, "onnx", program=program, example_size=EXAMPLE_SIZE)
        _CACHE[project] = Exported(project, model, program, onnx_path, load_exported(onnx_path))
    return _CACHE[project]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session", params=PROJECTS)
def exported(request, export_dir) -> Exported:
    """Each project's tiny model, its ExportedProgram and its ONNX model."""
    return exported_project(request.param, export_dir)


@pytest.fixture(scope="session")
def exported_dino(export_dir) -> Exported:
    return exported_project("dino", export_dir)
