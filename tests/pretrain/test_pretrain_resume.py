"""``tools/pretrain_backbone.py --resume``, in-process on a folder of a few random images:
a resumed run equals the uninterrupted one bitwise, and a checkpoint refuses other model
options or a ``max_iter`` below its iteration, and warns about other training options."""

from __future__ import annotations

import shutil

import pytest
import torch

from detr_ext.engine import ResumeError

from .runs import load, pretrain

pytestmark = pytest.mark.usefixtures("isolated_run")


@pytest.fixture(scope="module")
def uninterrupted(tool, images, tmp_path_factory):
    """4 iterations in one go (checkpoints after iterations 1 and 3)."""
    output = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETR_EXT_DATASETS", str(output / "datasets"))
        pretrain(tool, images, output, "--max-iter", "4")
    return output


def _resumable_copy(uninterrupted, output, checkpoint="model_0000001.pth"):
    output.mkdir()
    shutil.copy(uninterrupted / checkpoint, output / checkpoint)
    (output / "last_checkpoint").write_text(checkpoint)
    return output


def test_resumed_run_equals_the_uninterrupted_one(tool, images, uninterrupted, tmp_path):
    resumed = _resumable_copy(uninterrupted, tmp_path / "resumed")
    pretrain(tool, images, resumed, "--max-iter", "4", "--resume")
    expected, got = load(uninterrupted / "model_final.pth"), load(resumed / "model_final.pth")
    assert got["iteration"] == expected["iteration"] == 3
    for part in ("model", "dino_loss"):
        assert expected[part].keys() == got[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=0, atol=0, msg=key)
    # The checkpoint records the options and the generators (as plain tensors / values).
    saved = got["pretrain_run"]
    assert saved["options"]["hidden_dim"] == 32 and saved["options"]["max_iter"] == 4
    assert {"torch", "numpy", "python", "loader"} <= saved["rng"].keys()
    torch.load(resumed / "model_final.pth", weights_only=True)


def test_resumed_run_without_saved_generators_draws_new_crops(
    tool, images, uninterrupted, tmp_path
):
    """A checkpoint from before the generators were saved: the resumed run must not replay
    the crops of iteration 0 (seeded anew from seed and start iteration)."""
    resumed = _resumable_copy(uninterrupted, tmp_path / "resumed")
    state = load(resumed / "model_0000001.pth")
    state.pop("pretrain_run", None)  # (old checkpoints have none)
    torch.save(state, resumed / "model_0000001.pth")
    rng_states = []  # torch's generator when each image is cropped
    original = tool.PretrainImageDataset.__getitem__

    def recording_getitem(dataset, index):
        rng_states.append(torch.get_rng_state())
        return original(dataset, index)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tool.PretrainImageDataset, "__getitem__", recording_getitem)
        pretrain(tool, images, tmp_path / "fresh", "--max-iter", "1")
        first = rng_states[0]
        rng_states.clear()
        pretrain(tool, images, resumed, "--max-iter", "3", "--resume")
    assert len(rng_states) == 2  # iteration 2's two images
    assert not torch.equal(rng_states[0], first)


def test_resume_refuses_other_model_options(tool, images, uninterrupted, tmp_path):
    resumed = _resumable_copy(uninterrupted, tmp_path / "resumed")
    with pytest.raises(ResumeError, match=r"out_dim: 32 -> 64; hidden_dim: 32 -> 48\. "):
        options = ["hidden_dim=48", "out_dim=64"]
        pretrain(tool, images, resumed, "--max-iter", "4", "--resume", options=options)
    with pytest.raises(ResumeError, match=r"hidden_dim: 32 -> 48"):
        pretrain(tool, images, resumed, "--max-iter", "4", "--resume", options=["hidden_dim=48"])


def test_resume_refuses_max_iter_below_the_checkpoint(tool, images, uninterrupted, tmp_path):
    resumed = _resumable_copy(uninterrupted, tmp_path / "resumed", "model_final.pth")
    with pytest.raises(ResumeError, match=r"after iteration 4 .*past max_iter=2.*--max-iter 4"):
        pretrain(tool, images, resumed, "--max-iter", "2", "--resume")
    assert not (resumed / "backbone.pth").exists()


def test_resume_warns_about_changed_schedule_options(tool, images, uninterrupted, tmp_path):
    resumed = _resumable_copy(uninterrupted, tmp_path / "resumed")
    pretrain(tool, images, resumed, "--max-iter", "5", "--resume", options=["lr=0.001"])
    log = (resumed / "log.txt").read_text()
    assert "training options differ from the checkpoint's" in log
    assert "max_iter: 4 -> 5" in log and "lr: 0.0005 -> 0.001" in log
    assert load(resumed / "model_final.pth")["iteration"] == 4
