"""cfg.train keys that train_net would ignore (misspelt, or detrex's names) are errors naming
the nearest known key."""

from __future__ import annotations

import pytest
from detectron2.config import LazyConfig

from detr_ext.config import ConfigUsageError, get_config
from detr_ext.engine import setup
from detr_ext.engine.train_options import check_train_options, known_train_options
from tests.tool_runs import SHAPES_CONFIGS, load_script


def _train(*overrides: str):
    cfg = get_config("common/train.py")
    return LazyConfig.apply_overrides(cfg, list(overrides)).train


def test_the_documented_options_pass():
    check_train_options(_train())
    known = known_train_options()
    assert known["ema"]["warmup"] == 2000 and known["amp"]["max_consecutive_overflows"] == 30


@pytest.mark.parametrize(
    "override, message",
    [
        # The audit's run: each of these switched nothing on, silently.
        (
            "train.clip_grad.enable=True",
            "train.clip_grad.enable (did you mean train.clip_grad.enabled?)",
        ),
        ("train.amp.enable=True", "train.amp.enable (did you mean train.amp.enabled?)"),
        ("train.model_ema.enabled=True", "train.model_ema (detrex's name; here: train.ema"),
        ("train.ema.decy=0.5", "train.ema.decy (did you mean train.ema.decay?)"),
        ("train.max_iters=10", "train.max_iters (did you mean train.max_iter?)"),
        ("train.wandb.enabled=False", "train.wandb (detrex's name; here: TensorBoard"),
        ("train.zzz=1", "train.zzz (known under train: amp, bf16,"),
    ],
)
def test_unknown_options_are_named(override, message):
    with pytest.raises(ConfigUsageError, match="unknown training options") as info:
        check_train_options(_train(override))
    assert message in str(info.value)


def test_every_unknown_option_is_listed_once():
    with pytest.raises(ConfigUsageError) as info:
        check_train_options(_train("train.amp.enable=True", "train.ema.decy=0.5"))
    text = str(info.value)
    assert text.count("train.amp.enable ") == 1 and text.count("train.ema.decy ") == 1


def test_keyword_groups_are_left_to_their_callables():
    """DDP's, the checkpointer's and clip_grad_norm_'s own arguments are checked by them."""
    check_train_options(
        _train(
            "train.ddp.gradient_as_bucket_view=True",
            "train.checkpointer.file_prefix=run",
            "train.clip_grad.params.foreach=False",
        )
    )


def test_train_net_setup_refuses_them(tmp_path):
    parser = load_script("tools/train_net.py").build_parser()
    args = parser.parse_args(
        ["--config-file", str(SHAPES_CONFIGS["detr"]), f"train.output_dir={tmp_path}"]
        + ["train.model_ema.enabled=True"]
    )
    with pytest.raises(ConfigUsageError, match="train.model_ema"):
        setup(args)
    assert not (tmp_path / "config.yaml").exists()
