"""ResumableTrainingSampler: detectron2's TrainingSampler stream, started anywhere."""

import itertools

import pytest
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from detr_ext.data.samplers import ResumableTrainingSampler


def take(sampler, count: int) -> list[int]:
    return list(itertools.islice(iter(sampler), count))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("position", [0, 1, 6, 7, 8, 13, 14, 30])
def test_stream_from_a_position_is_the_tail_of_detectron2s_stream(shuffle, position):
    stream = take(TrainingSampler(7, shuffle=shuffle, seed=3), 60)
    sampler = ResumableTrainingSampler(7, shuffle=shuffle, seed=3)
    assert take(sampler, 60) == stream  # position 0: detectron2's stream itself
    sampler.start_at(position)
    assert sampler.position == position
    assert take(sampler, 60 - position) == stream[position:]


def test_each_rank_takes_its_share_of_the_stream_from_the_position(monkeypatch):
    """Rank r of W yields stream[position + r], stream[position + r + W], ...: the ranks
    together read the stream from the position, each index once."""
    stream = take(TrainingSampler(5, seed=11), 80)
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        sampler = ResumableTrainingSampler(5, seed=11)
        sampler.start_at(12)
        shares.append(take(sampler, 20))
    assert [index for triple in zip(*shares, strict=True) for index in triple] == stream[12:72]


def test_start_at_can_change_the_seed_and_checks_its_arguments():
    sampler = ResumableTrainingSampler(9, seed=1)
    sampler.start_at(4, seed=2)
    assert sampler.seed == 2
    assert take(sampler, 10) == take(TrainingSampler(9, seed=2), 14)[4:]
    for position in (-1, 1.5, "3", True, None):
        with pytest.raises(ValueError, match="expected a position >= 0"):
            sampler.start_at(position)
    with pytest.raises(ValueError, match="expected an int seed, got '7'"):
        sampler.start_at(0, seed="7")
    assert (sampler.position, sampler.seed, sampler.size, sampler.shuffle) == (4, 2, 9, True)
