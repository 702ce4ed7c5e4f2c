"""Fixtures of the pretraining tool's tests: the tool loaded as a module, a folder of a few
random images, and an isolated in-process run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ..tool_runs import load_script


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/pretrain_backbone.py")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 255, (40 + 8 * index, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def isolated_run(tmp_path, monkeypatch):
    """One thread (deterministic sums), datasets under tmp_path, and the tool's log handlers
    closed afterwards."""
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    threads = torch.get_num_threads()
    loggers = [logging.getLogger(name) for name in ("detectron2", "detr_ext")]
    handlers = [list(logger.handlers) for logger in loggers]
    yield
    torch.set_num_threads(threads)
    for logger, before in zip(loggers, handlers, strict=True):
        for handler in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(handler)
            handler.close()
