"""Exported models give the eager model's detections: the ExportedProgram and the ONNX model
of every project, at two padded sizes other than the traced one (and another batch size)."""

from __future__ import annotations

import onnx
import pytest
import torch

from detr_ext.layers import MultiScaleDeformableAttention

from .models import (
    DEFORMABLE_PROJECTS,
    EXAMPLE_SIZE,
    TEST_SIZES,
    assert_matches,
    assert_well_conditioned,
    detections_per_image,
    eager_outputs,
    make_batch,
)

# (padded size, batch): sizes differ from the traced EXAMPLE_SIZE, batches from its 2.
CASES = [(TEST_SIZES[0], 2), (TEST_SIZES[1], 3)]


@pytest.mark.parametrize(("size", "batch"), CASES)
def test_exported_program_gives_the_eager_detections(exported, size, batch):
    assert size != EXAMPLE_SIZE
    images, image_sizes = make_batch(size, seed=1, batch=batch)
    assert_well_conditioned(exported.model, images, image_sizes)
    with torch.no_grad():
        actual = exported.program.module()(images, image_sizes)
    expected = eager_outputs(exported.model, images, image_sizes)
    # Two-stage models at 64 x 64: 84 positions < 100 queries, so 252 detections, not 300.
    assert expected[1].shape == (batch, detections_per_image(exported.project, size))
    assert_matches(expected, actual)


@pytest.mark.parametrize(("size", "batch"), CASES)
def test_onnx_model_gives_the_eager_detections(exported, size, batch):
    images, image_sizes = make_batch(size, seed=1, batch=batch)
    assert_well_conditioned(exported.model, images, image_sizes)
    assert_matches(
        eager_outputs(exported.model, images, image_sizes), exported.onnx(images, image_sizes)
    )


def test_deformable_attention_is_one_operator_node_per_module(exported):
    """torch.export keeps detr_ext::ms_deform_attn whole: one node per attention module, and
    no grid_sample decomposition of it."""
    graph = exported.program.graph
    msda_nodes = graph.find_nodes(
        op="call_function", target=torch.ops.detr_ext.ms_deform_attn.default
    )
    modules = [m for m in exported.model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(msda_nodes) == len(modules)
    if exported.project in DEFORMABLE_PROJECTS:
        assert len(modules) == 3  # 1 encoder + 2 decoder layers
    targets = {str(node.target) for node in graph.nodes}
    assert not any("grid_sampler" in target for target in targets)


def test_onnx_model_is_standard_onnx_with_grid_sample(exported):
    model = onnx.load(str(exported.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert {opset.domain for opset in model.opset_import} <= {"", "ai.onnx"}
    assert (
        max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= 16
    )
    grid_samples = [node for node in model.graph.node if node.op_type == "GridSample"]
    levels = 3 if exported.project in DEFORMABLE_PROJECTS else 0
    attentions = 3 if exported.project in DEFORMABLE_PROJECTS else 0
    assert len(grid_samples) == levels * attentions
    for node in grid_samples:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes == {"mode": b"bilinear", "padding_mode": b"zeros", "align_corners": 0}
    # Batch, height and width stay dynamic; channels are fixed.
    images = model.graph.input[0]
    dims = images.type.tensor_type.shape.dim
    assert images.name == "images"
    assert [d.dim_value for d in dims][1] == 3
    assert all(dims[axis].dim_param for axis in (0, 2, 3))
    assert [output.name for output in model.graph.output] == ["boxes", "scores", "classes"]
