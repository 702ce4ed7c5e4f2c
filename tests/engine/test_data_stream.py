"""build_train_loader and DataStreamState: the train loader's sampler and its place in the
stream across checkpoints (the end-to-end resume is in test_train_net.py)."""

import logging
from types import SimpleNamespace

import pytest
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from omegaconf import DictConfig, OmegaConf

from detr_ext.data.samplers import ResumableTrainingSampler
from detr_ext.engine import DataStreamState, build_train_loader
from tests.engine.tiny_project import TinyMapper


def tiny_cfg(**train_overrides) -> DictConfig:
    cfg = OmegaConf.create(
        {"dataloader": {"test": {"num_workers": 0}}}, flags={"allow_objects": True}
    )
    cfg.dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="tiny_train", filter_empty=False),
        mapper=L(TinyMapper)(),
        total_batch_size=4,
        aspect_ratio_grouping=False,
        num_workers="${..test.num_workers}",  # an interpolation that needs the whole tree
    )
    cfg.dataloader.train.update(train_overrides)
    return cfg


def test_default_sampler_becomes_resumable_and_the_config_is_left_as_it_was():
    cfg = tiny_cfg()
    before = OmegaConf.to_yaml(cfg)
    loader, sampler = build_train_loader(cfg)
    assert isinstance(sampler, ResumableTrainingSampler) and sampler.size == 16
    assert OmegaConf.to_yaml(cfg) == before  # no dataset object or sampler left behind
    sampler.start_at(6)
    stream = iter(TrainingSampler(16, seed=sampler.seed))
    expected = [next(stream) for _ in range(14)][6:14]  # two batches of 4 from index 6
    batches = iter(loader)
    seen = [item["image_id"] for _ in range(2) for item in next(batches)]
    assert seen == expected


def test_a_configured_sampler_is_kept_and_not_resumable():
    cfg = tiny_cfg(sampler=L(TrainingSampler)(size=16, seed=0))
    loader, sampler = build_train_loader(cfg)
    assert sampler is None
    assert len(next(iter(loader))) == 4


def fake_trainer(iteration: int, start_iter: int, started: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        iter=iteration, start_iter=start_iter, _data_loader_iter_obj=object() if started else None
    )


def test_position_counts_the_finished_iterations_of_all_processes():
    sampler = ResumableTrainingSampler(10, seed=4)
    sampler.start_at(8)
    state = DataStreamState(sampler, 4, fake_trainer(iteration=12, start_iter=10))
    assert state.position() == 8 + 3 * 4  # iterations 10, 11 and 12 finished
    assert state.state_dict() == {
        "seed": 4, "size": 10, "shuffle": True, "position": 20, "total_batch_size": 4
    }  # fmt: skip
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="total_batch_size"):
            DataStreamState(sampler, bad, fake_trainer(0, 0))


def test_load_starts_the_sampler_at_the_checkpoints_position_and_seed():
    sampler = ResumableTrainingSampler(10, seed=4)
    state = DataStreamState(sampler, 4, fake_trainer(0, 0))
    state.load_state_dict({"seed": 9, "size": 10, "shuffle": True, "position": 44})
    assert (sampler.position, sampler.seed, state.loaded) == (44, 9, True)


def test_a_changed_training_set_starts_a_new_stream_with_a_warning(caplog):
    sampler = ResumableTrainingSampler(10, seed=4)
    state = DataStreamState(sampler, 4, fake_trainer(0, 0))
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.data_stream"):
        state.load_state_dict({"seed": 9, "size": 12, "shuffle": True, "position": 44})
    assert "over 12 images (shuffle=True); the training set now has 10" in caplog.text
    assert (sampler.position, sampler.seed, state.loaded) == (0, 4, False)


def test_load_refuses_bad_states_and_a_started_loader():
    sampler = ResumableTrainingSampler(10, seed=4)
    with pytest.raises(ValueError, match=r"missing \['shuffle', 'position'\]"):
        DataStreamState(sampler, 4, fake_trainer(0, 0)).load_state_dict({"seed": 1, "size": 10})
    started = DataStreamState(sampler, 4, fake_trainer(3, 0, started=True))
    with pytest.raises(RuntimeError, match="already started reading the train loader"):
        started.load_state_dict({"seed": 9, "size": 10, "shuffle": True, "position": 4})


def test_a_training_set_without_annotations_is_named_not_a_bare_assertion():
    """detectron2's filter_empty leaves no image of a set without annotations and asserts 'No
    valid data found': the run stopped with a bare AssertionError."""
    from detectron2.data import DatasetCatalog

    from detr_ext.engine.data_stream import EmptyTrainingSetError

    name = "tiny_train_without_annotations"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name,
            lambda: [
                {"file_name": f"{i}.png", "image_id": i, "height": 8, "width": 8,
                 "annotations": [{"bbox": [0, 0, 2, 2], "bbox_mode": 1, "category_id": 0,
                                  "iscrowd": 1}] if i else []}
                for i in range(3)
            ],
        )  # fmt: skip
    for sampler in (None, L(TrainingSampler)(size=3)):  # our sampler, or the config's own
        cfg = tiny_cfg()
        cfg.dataloader.train.dataset.names = name
        cfg.dataloader.train.dataset.filter_empty = True
        cfg.dataloader.train.sampler = sampler
        with pytest.raises(EmptyTrainingSetError, match=rf"training set {name} has no image"):
            build_train_loader(cfg)
