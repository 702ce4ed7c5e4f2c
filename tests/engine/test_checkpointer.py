"""SafeCheckpointer: refuses non-finite weights, writes checkpoints and last_checkpoint
atomically, and loads like detectron2's DetectionCheckpointer."""

import os

import pytest
import torch
from torch import nn

from detr_ext.engine import ModelEMA, NonFiniteCheckpointError, SafeCheckpointer
from detr_ext.engine.checkpointer import nonfinite_keys


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def files(directory) -> set[str]:
    return set(os.listdir(directory))


def test_nonfinite_keys_names_nested_entries():
    state = {
        "a": torch.ones(2),
        "b": torch.tensor([1.0, float("inf")]),
        "n": torch.tensor([3]),  # integer tensors are never non-finite
        "nested": {"c": [torch.zeros(1), torch.tensor([float("nan")])]},
    }
    assert nonfinite_keys(state) == ["b", "nested.c.1"]
    assert nonfinite_keys(state, limit=1) == ["b"]
    assert nonfinite_keys({"x": torch.zeros(2)}) == []


def test_save_load_round_trip_and_iteration(tmp_path):
    model = tiny_model()
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    assert files(tmp_path) == {"model_0000004.pth", "last_checkpoint"}
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"

    other = tiny_model()
    with torch.no_grad():
        other[0].weight.zero_()
    extra = SafeCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    assert torch.equal(other[0].weight, model[0].weight)


@pytest.mark.parametrize("where", ["model", "ema"])
def test_nonfinite_weights_are_never_saved(tmp_path, where):
    model = tiny_model()
    ema = ModelEMA(model, decay=0.5)
    checkpointer = SafeCheckpointer(model, str(tmp_path), ema=ema)
    checkpointer.save("model_0000001", iteration=1)

    poisoned = model[1].running_mean if where == "model" else ema.state["0.weight"]
    poisoned.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteCheckpointError) as error:
        checkpointer.save("model_0000003", iteration=3)
    key = "model: 1.running_mean" if where == "model" else "ema: state.0.weight"
    message = str(error.value)
    assert f"Refusing to save {tmp_path / 'model_0000003.pth'} at iteration 3" in message
    assert key in message
    assert f"last good checkpoint is still {tmp_path / 'model_0000001.pth'}" in message
    assert files(tmp_path) == {"model_0000001.pth", "last_checkpoint"}
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def _crash_after_some_bytes(obj, file, *args, **kwargs):
    """Stands in for ``torch.save`` being killed mid-write: some bytes, then an error."""
    file.write(b"PK\x03\x04 partial checkpoint")
    file.flush()
    raise OSError(28, "No space left on device")


def test_a_crash_while_saving_leaves_no_partial_file(tmp_path, monkeypatch):
    model = tiny_model()
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    good_bytes = (tmp_path / "model_0000001.pth").read_bytes()

    monkeypatch.setattr(torch, "save", _crash_after_some_bytes)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000003", iteration=3)
    # Overwriting an existing checkpoint (e.g. model_final) must not truncate it either.
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000001", iteration=1)
    monkeypatch.undo()

    assert files(tmp_path) == {"model_0000001.pth", "last_checkpoint"}  # no temp file left
    assert (tmp_path / "model_0000001.pth").read_bytes() == good_bytes
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert SafeCheckpointer(tiny_model(), str(tmp_path)).resume_or_load("")["iteration"] == 1


def test_a_crash_while_tagging_keeps_the_previous_last_checkpoint(tmp_path, monkeypatch):
    checkpointer = SafeCheckpointer(tiny_model(), str(tmp_path))
    checkpointer.save("model_0000001")

    def crash(*args, **kwargs):
        raise OSError("killed")

    # The bytes of the new tag are written, then the process dies before the rename.
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        checkpointer.tag_last_checkpoint("model_0000003.pth")
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert files(tmp_path) == {"model_0000001.pth", "last_checkpoint"}
