"""What cannot be exported, or run, says so: the model and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from detr_ext.export import (
    ExportError,
    ExportMetadata,
    check_exportable,
    detect_format,
    export_program,
)
from detr_ext.layers import MultiScaleDeformableAttention
from detr_ext.modeling.meta_arch import DetectorBase
from detr_ext.ops.ms_deform_attn import BACKEND_ENV
from projects.detr.modeling import DETR
from tests.tool_runs import load_script, run_tool

from .models import detections_per_image, tiny_config, tiny_model


def test_a_module_that_is_not_a_detector_is_refused():
    with pytest.raises(
        ExportError, match=r"cannot export Linear: expected a detr_ext DetectorBase"
    ):
        export_program(nn.Linear(2, 2))


class _NoTensors(DetectorBase):
    """A detector that implements inference() only."""

    def inference(self, outputs, image_sizes):
        return self.inference_softmax(outputs["pred_logits"], outputs["pred_boxes"], image_sizes)


def test_a_detector_without_inference_tensors_is_refused():
    model = _NoTensors(
        backbone=nn.Identity(), num_classes=3, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3
    )
    with pytest.raises(
        ExportError, match="cannot export _NoTensors: it does not implement inference_tensors"
    ):
        check_exportable(model)


class _RescoredDETR(DETR):
    """DETR with its own scoring in inference(): the inherited inference_tensors() would not
    be what it does."""

    def inference(self, outputs, image_sizes):
        return self.inference_sigmoid_topk(
            outputs["pred_logits"], outputs["pred_boxes"], image_sizes
        )


def test_a_detector_overriding_inference_alone_is_refused():
    cfg = tiny_config("detr")
    cfg.model._target_ = _RescoredDETR
    with pytest.raises(
        ExportError,
        match=r"_RescoredDETR overrides inference\(\) but inference_tensors\(\) comes from "
        r"DETRDetectorBase",
    ):
        check_exportable(instantiate(cfg.model))


class _PromptedDETR(DETR):
    """A detector whose forward() is its own (as text-prompted models have)."""

    def forward(self, batched_inputs):
        return super().forward(batched_inputs)


def test_a_detector_with_its_own_forward_is_refused():
    cfg = tiny_config("detr")
    cfg.model._target_ = _PromptedDETR
    with pytest.raises(ExportError, match=r"cannot export _PromptedDETR: .*overrides forward\(\)"):
        check_exportable(instantiate(cfg.model))


def test_the_pytorch_deformable_attention_backend_is_refused(monkeypatch):
    model = tiny_model("dino")
    check_exportable(model)  # the compiled operator: fine
    monkeypatch.setenv(BACKEND_ENV, "pytorch")
    with pytest.raises(ExportError, match=r"cannot export DINO: .*PyTorch backend is selected"):
        check_exportable(model)
    monkeypatch.delenv(BACKEND_ENV)
    next(
        m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)
    ).backend = "pytorch"
    with pytest.raises(ExportError, match="detr_ext::ms_deform_attn"):
        export_program(model)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size_multiple": 0}, "size_multiple >= 1"),
        ({"min_size": 1}, "2 <= min_size <= max_size"),
        ({"min_size": 500, "max_size": 400}, "2 <= min_size <= max_size"),
        ({"max_batch": 0}, "max_batch >= 1"),
        ({"size_multiple": 32, "example_size": (96, 100)}, "multiples of size_multiple=32"),
        ({"example_size": (32, 128)}, r"in \[64, 4096\]"),
    ],
)
def test_bad_size_options_are_refused_before_tracing(options, message):
    with pytest.raises(ValueError, match=message):
        export_program(tiny_model("detr"), **options)


def test_runners_refuse_inputs_outside_the_exported_range(exported_dino):
    runner = exported_dino.onnx
    sizes = torch.tensor([[48, 80]])
    with pytest.raises(ValueError, match=r"padded height in \[64, 4096\], a multiple of 1; got 48"):
        runner(torch.zeros(1, 3, 48, 80), sizes)
    with pytest.raises(ValueError, match="batches of at most 64 images, got 65"):
        runner(torch.zeros(65, 3, 64, 64), torch.tensor([[64, 64]] * 65))
    with pytest.raises(ValueError, match=r"expected image_sizes \[2, 2\]"):
        runner(torch.zeros(2, 3, 64, 64), torch.tensor([[64, 64]]))
    with pytest.raises(ValueError, match="expected float32 images"):
        runner(torch.zeros(1, 3, 64, 64, dtype=torch.float64), torch.tensor([[64, 64]]))


def test_predict_pads_images_smaller_than_the_exported_range(exported_dino):
    image = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    (instances,) = exported_dino.onnx.predict([image])
    assert instances.image_size == (40, 70)
    assert len(instances) == detections_per_image("dino", (64, 70))  # padded to 64 rows


def test_metadata_errors_name_the_file():
    with pytest.raises(ValueError, match="model.onnx: expected detr_ext export metadata"):
        ExportMetadata.from_json("not json", "model.onnx")
    metadata = ExportMetadata(
        format="onnx", meta_architecture="DINO", num_classes=3, detections_per_image=10,
        input_format="RGB", pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, size_divisibility=0,
        size_multiple=1, min_size=64, max_size=4096, max_batch=64, example_size=[96, 128],
    )  # fmt: skip
    assert ExportMetadata.from_json(metadata.to_json()) == metadata
    newer = metadata.to_json().replace('"schema_version": 1', '"schema_version": 99')
    with pytest.raises(ValueError, match="version 99 is newer"):
        ExportMetadata.from_json(newer, "x.pt2")
    with pytest.raises(ValueError, match="expected format in"):
        ExportMetadata.from_json(metadata.to_json().replace('"onnx"', '"tflite"'), "x.pt2")


def test_detect_format_refuses_what_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected an exported model file"):
        detect_format(tmp_path / "missing.pt2")
    not_zip = tmp_path / "model.pt2"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="expected a .onnx file or a .pt2 archive"):
        detect_format(not_zip)


def test_min_size_hint_names_the_size_torch_export_suggests():
    """DINO-R50 4-scale at the default min size: torch.export's constraint violation suggests
    a larger minimum, which the ExportError turns into an option to pass."""
    from detr_ext.export.exporters import _min_size_hint

    message = (
        "Constraints violated (height, width)!\nSuggested fixes:\n"
        "  height = Dim('height', min=65, max=4096)\n  width = Dim('width', min=65, max=4096)"
    )
    hint = _min_size_hint(RuntimeError(message), 64)
    assert "at least 65 px" in hint and "--min-size 65" in hint
    assert _min_size_hint(RuntimeError(message), 128) == ""
    assert _min_size_hint(RuntimeError("some other failure"), 64) == ""


def _export_tool():
    """``tools/export_model.py`` as a module."""
    return load_script("tools/export_model.py")


@pytest.mark.parametrize("problem", ["truncated", "missing", "other_classes"])
def test_export_tool_names_weights_it_cannot_use(tmp_path, problem):
    """Weights cut short, missing, or of another class head stop tools/export_model.py with a
    one-line error (ExportToolError) naming the file, before anything is traced."""
    from detectron2.config import LazyConfig

    tool = _export_tool()
    config = tool._REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py"
    weights = tmp_path / "model_final.pth"
    if problem != "missing":
        cfg = LazyConfig.load(str(config))
        if problem == "other_classes":
            cfg.model.num_classes = 5
        torch.save({"model": instantiate(cfg.model).state_dict()}, weights)
    if problem == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    argv = ["--config-file", str(config), "--weights", str(weights), "--format", "onnx"]
    with pytest.raises(tool.ExportToolError) as info:
        tool.main([*argv, "--output", str(tmp_path / "model.onnx"), "--device", "cpu"])
    expected = {
        "truncated": "Cannot read checkpoint",
        "missing": "missing path",
        "other_classes": "does not fit the model",
    }[problem]
    assert expected in str(info.value) and str(weights) in str(info.value)
    assert not (tmp_path / "model.onnx").exists()


def test_onnx_export_without_the_compiled_extension(tmp_path, monkeypatch):
    """Without detr_ext._C (DETR_EXT_BUILD_EXTENSION=0 or a failed build) DETR, which has no
    deformable attention, exports to ONNX (it failed: the translation table named the missing
    operator); DINO is refused before tracing, saying it needs the extension."""
    monkeypatch.setenv("DETR_EXT_DISABLE_EXTENSION", "1")
    configs = Path(__file__).resolve().parents[2] / "projects"
    results = {}
    for project, config in (("detr", "detr_shapes.py"), ("dino", "dino_shapes.py")):
        argv = [
            "--config-file", str(configs / project / "configs" / config), "--random-weights",
            "--format", "onnx", "--output", str(tmp_path / f"{project}.onnx"), "--device", "cpu",
        ]  # fmt: skip
        results[project] = run_tool("export_model.py", argv, cwd=tmp_path, datasets=tmp_path)
    detr, dino = results["detr"], results["dino"]
    assert detr.returncode == 0, detr.stdout[-2000:] + detr.stderr[-4000:]
    assert (tmp_path / "detr.onnx").is_file()
    assert dino.returncode != 0 and not (tmp_path / "dino.onnx").exists()
    assert "must run the compiled operator detr_ext::ms_deform_attn" in dino.stderr
