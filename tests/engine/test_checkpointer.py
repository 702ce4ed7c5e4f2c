"""SafeCheckpointer: refuses non-finite weights, writes checkpoints and last_checkpoint
atomically, loads like detectron2's DetectionCheckpointer, and names a file it cannot read."""

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from detr_ext.checkpoint import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    load_model_weights,
)
from detr_ext.checkpoint.reading import other_checkpoints
from detr_ext.engine import (
    ModelEMA,
    NonFiniteCheckpointError,
    PeriodicCheckpointer,
    SafeCheckpointer,
)
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


def test_a_truncated_last_checkpoint_is_named_with_the_ones_to_resume_from(tmp_path):
    """A checkpoint cut short fails inside torch.load with a bare OSError; the error names
    the file and the other checkpoints, and following its advice resumes from the newest."""
    model = tiny_model()
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    for iteration in (1, 3):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    checkpointer.save("model_final", iteration=4)
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[:200])

    with pytest.raises(UnreadableCheckpointError) as info:
        SafeCheckpointer(tiny_model(), str(tmp_path)).resume_or_load("", resume=True)
    message = str(info.value)
    assert f"Cannot read checkpoint {final}" in message
    assert "Other checkpoints in" in message and "model_0000003.pth, model_0000001.pth" in message
    assert f"`echo model_0000003.pth > {tmp_path / 'last_checkpoint'}`" in message
    assert info.value.__cause__ is not None  # torch's own error, chained

    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    extra = SafeCheckpointer(tiny_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 3


def test_other_checkpoints_are_listed_newest_first(tmp_path):
    for name in ("model_0000009.pth", "model_0000010.pth", "model_final.pth", "log.txt"):
        (tmp_path / name).write_bytes(b"")
    assert other_checkpoints(str(tmp_path / "model_0000009.pth")) == [
        "model_final.pth",
        "model_0000010.pth",
    ]


def test_load_model_weights_names_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match=r"Cannot read checkpoint .*weights\.pth"):
        load_model_weights(tiny_model(), path, where="train.init_checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="There is no other checkpoint"):
        load_model_weights(tiny_model(), path, where="train.init_checkpoint")


def test_load_model_weights_refuses_a_checkpoint_lacking_tensors(tmp_path):
    """Loading to use a model: every tensor must come from the checkpoint (detectron2 only
    warns and leaves the missing ones random); many missing keys are counted, not listed."""
    state = tiny_model().state_dict()
    del state["1.running_var"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match=r"lacks 1 of the model's tensors.*: 1\.run"):
        load_model_weights(tiny_model(), tmp_path / "partial.pth", where="--weights")

    wide = nn.Sequential(*(nn.Linear(1, 1) for _ in range(12)))
    state = wide.state_dict()
    partial = {key: value for key, value in state.items() if key.startswith("0.")}
    torch.save({"model": partial}, tmp_path / "first_layer.pth")
    with pytest.raises(CheckpointMismatchError, match=r"lacks 22 of .* and 14 more \(in 1, 10,"):
        load_model_weights(wide, tmp_path / "first_layer.pth", where="--weights")

    torch.save({"model": state}, tmp_path / "whole.pth")
    assert load_model_weights(wide, tmp_path / "whole.pth", where="--weights") == {}


def test_last_checkpoint_naming_a_deleted_file_lists_the_others(tmp_path):
    checkpointer = SafeCheckpointer(tiny_model(), str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    checkpointer.save("model_0000002", iteration=2)
    (tmp_path / "model_0000002.pth").unlink()
    with pytest.raises(FileNotFoundError, match="model_0000002.pth does not exist") as info:
        SafeCheckpointer(tiny_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert "Other checkpoints in" in str(info.value) and "model_0000001.pth" in str(info.value)


def periodic_run(save_dir, start_iter: int, last_iter: int, **options) -> list[str]:
    """Run PeriodicCheckpointer as the trainer does from ``start_iter`` to ``last_iter``
    (inclusive); return the .pth files left in ``save_dir``."""
    checkpointer = SafeCheckpointer(tiny_model(), str(save_dir))
    hook = PeriodicCheckpointer(checkpointer, **options)
    hook.trainer = SimpleNamespace(max_iter=100, start_iter=start_iter, iter=start_iter)
    hook.before_train()
    for iteration in range(start_iter, last_iter + 1):
        hook.trainer.iter = iteration
        hook.after_step()
    return sorted(name for name in os.listdir(save_dir) if name.endswith(".pth"))


def test_max_to_keep_counts_the_checkpoints_of_the_runs_before_a_resume(tmp_path):
    """detectron2's hook forgot the earlier runs' checkpoints at each --resume and never
    deleted them; here they count, oldest first, and model_final.pth is never deleted."""
    assert periodic_run(tmp_path, 0, 5, period=2, max_to_keep=2) == [
        "model_0000003.pth",
        "model_0000005.pth",
    ]
    (tmp_path / "model_final.pth").write_bytes(b"")
    (tmp_path / "model_0000011.pth").write_bytes(b"")  # past the resumed iteration: kept
    assert periodic_run(tmp_path, 6, 9, period=2, max_to_keep=2) == [
        "model_0000007.pth",
        "model_0000009.pth",
        "model_0000011.pth",
        "model_final.pth",
    ]
    # A smaller max_to_keep on resume trims the earlier ones down after the first save.
    assert periodic_run(tmp_path, 10, 13, period=2, max_to_keep=1) == [
        "model_0000013.pth",
        "model_final.pth",
    ]
    # None keeps everything.
    assert len(periodic_run(tmp_path, 14, 17, period=2, max_to_keep=None)) == 4


@pytest.mark.parametrize(
    "options, message",
    [
        ({"period": 2, "max_to_keep": 0}, r"max_to_keep: expected a positive number .* got 0"),
        ({"period": 0}, "period: expected a positive number of iterations, got 0"),
        ({"period": 2.5}, "got 2.5"),
    ],
)
def test_periodic_checkpointer_options_are_checked(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        PeriodicCheckpointer(SafeCheckpointer(tiny_model(), str(tmp_path)), **options)
