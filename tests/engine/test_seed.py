"""A negative ``train.seed`` means "a new seed each run": ``setup`` draws one before detectron2's
``default_setup`` seeds the process and writes ``config.yaml``, so that every run names its seed
and can be repeated (``make train`` no longer fixes its seed)."""

import argparse

import pytest
from detectron2.config import LazyConfig
from detectron2.utils import comm
from omegaconf import OmegaConf

from detr_ext.config import get_config
from detr_ext.engine import defaults, draw_seed, recorded_seed, seeds
from tests.tool_runs import REPO_ROOT

DINO_SHAPES = REPO_ROOT / "projects" / "dino" / "configs" / "dino_shapes.py"


def test_negative_seed_is_replaced_by_a_drawn_one():
    cfg = LazyConfig.load(str(DINO_SHAPES))
    cfg.train.seed = -1
    seed = draw_seed(cfg)
    assert cfg.train.seed == seed and 0 <= seed < 2**31
    cfg.train.seed = -1
    # Another run draws another seed (the chance of a repeat is ~1e-9).
    assert draw_seed(cfg) != seed


def test_a_given_seed_is_kept():
    cfg = LazyConfig.load(str(DINO_SHAPES))
    cfg.train.seed = 0
    assert draw_seed(cfg) == 0 and cfg.train.seed == 0


def test_setup_draws_the_seed_before_default_setup_saves_and_uses_it(tmp_path, monkeypatch):
    seen = {}

    def fake_default_setup(cfg, args):  # detectron2's writes config.yaml and seeds from cfg
        seen["seed"] = cfg.train.seed

    monkeypatch.setattr(defaults, "default_setup", fake_default_setup)
    args = argparse.Namespace(
        config_file=str(DINO_SHAPES), opts=[f"train.output_dir={tmp_path}", "train.seed=-1"]
    )
    cfg = defaults.setup(args)
    assert seen["seed"] == cfg.train.seed >= 0


def test_dino_shapes_recipe_fixes_no_seed():
    """The main job must reach its AP with any seed (issue 17), so its config fixes none."""
    assert get_config("common/dino_shapes.py").train.seed < 0
    assert LazyConfig.load(str(DINO_SHAPES)).train.seed < 0


@pytest.mark.parametrize("mode", ["resume", "eval_only"])
def test_resuming_or_evaluating_keeps_the_recorded_seed(tmp_path, monkeypatch, mode):
    """--resume / --eval-only of a run with train.seed=-1 used to draw a new seed and let
    default_setup overwrite config.yaml with it: a seed nothing was trained with."""
    seen = {}
    monkeypatch.setattr(defaults, "default_setup", lambda cfg, args: seen.update(s=cfg.train.seed))
    # As detectron2 saves it: Python objects as tags, which are not run when read.
    (tmp_path / "config.yaml").write_text(
        "model: {_target_: !!python/name:builtins.dict ''}\ntrain:\n  seed: 1234\n"
    )
    out = f"train.output_dir={tmp_path}"

    def run(opts, edit=None, **flags):
        args = argparse.Namespace(config_file=str(DINO_SHAPES), opts=opts, **flags)
        return defaults.setup(args, edit).train.seed

    assert run([out], **{mode: True}) == seen["s"] == 1234  # the config's seed is -1
    # A config file with a fixed seed: the run was started with another on its command line.
    fixed = lambda cfg: cfg.train.update(seed=0)  # noqa: E731
    assert run([out], edit=fixed, **{mode: True}) == 1234
    # A seed given on the command line gives way to the recorded one (it would change nothing
    # but the record); a new run draws one.
    assert run([out, "train.seed=7"], **{mode: True}) == 1234
    assert "train.seed=7 from the command line is ignored: keeping seed 1234" in (
        (tmp_path / "log.txt").read_text()
    )
    assert run([out, "train.seed=-1"]) != 1234
    # Nothing recorded: a drawn seed, as before.
    (tmp_path / "config.yaml").write_text("train: {}\n")
    assert run([out], **{mode: True}) >= 0


def test_several_processes_keep_the_seed_read_before_launching(tmp_path, monkeypatch):
    """In several processes keep_recorded_seed reads no file (process 0 may be rewriting it):
    it keeps what the entry point read before launching, and without that draws as before."""
    (tmp_path / "config.yaml").write_text("train:\n  seed: 99\n")
    out = f"train.output_dir={tmp_path}"
    args = argparse.Namespace(config_file=str(DINO_SHAPES), opts=[out], eval_only=True)
    assert seeds.read_recorded_seed_before_launch(args) == args.recorded_seed == 99
    new_run = argparse.Namespace(config_file=str(DINO_SHAPES), opts=[out], resume=False)
    assert seeds.read_recorded_seed_before_launch(new_run) is None
    given = argparse.Namespace(
        config_file=str(DINO_SHAPES), opts=[out, "train.seed=3"], resume=True
    )
    assert seeds.read_recorded_seed_before_launch(given) == 99  # an override gives way

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    (tmp_path / "config.yaml").write_text("train:\n  seed: 5\n")  # rewritten meanwhile
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(DINO_SHAPES)), [out])
    assert seeds.keep_recorded_seed(cfg, args) == cfg.train.seed == 99
    unread = argparse.Namespace(config_file=str(DINO_SHAPES), opts=[out], eval_only=True)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(DINO_SHAPES)), [out])
    assert seeds.keep_recorded_seed(cfg, unread) is None and cfg.train.seed < 0


def test_runs_that_continue_nothing_keep_no_seed(tmp_path):
    """A command line without --resume / --eval-only (another tool's), a config without a
    train section or seed: nothing is read or kept, a seed is drawn only where one is asked."""
    (tmp_path / "config.yaml").write_text("train:\n  seed: 99\n")
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(str(DINO_SHAPES)), [f"train.output_dir={tmp_path}"]
    )
    plain = argparse.Namespace(config_file=str(DINO_SHAPES), opts=[])
    assert seeds.keep_recorded_seed(cfg, plain) is None and cfg.train.seed < 0
    assert seeds.read_recorded_seed_before_launch(plain) is None and plain.recorded_seed is None
    evaluating = argparse.Namespace(eval_only=True, opts=[])
    for no_seed in ({}, {"train": {"output_dir": str(tmp_path)}}):
        assert seeds.keep_recorded_seed(OmegaConf.create(no_seed), evaluating) is None
        assert draw_seed(OmegaConf.create(no_seed)) is None


def test_recorded_seed_reads_only_a_valid_seed(tmp_path):
    path = tmp_path / "config.yaml"
    assert recorded_seed(path) is None  # no file
    for text, expected in [
        ("train: {seed: 5}\n", 5),
        ("train: {seed: -1}\n", None),
        ("train: {seed: true}\n", None),
        ("train: [1]\n", None),
        ("{{{", None),
    ]:
        path.write_text(text)
        assert recorded_seed(path) == expected, text
