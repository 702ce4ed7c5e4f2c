"""Shared pytest configuration: the ``cuda`` marker skips without a GPU; every test starts
with torch's seed 0 and leaves the package loggers as it found them."""

import logging

import pytest
import torch

# Loggers that tools configure with detectron2's setup_logger (own handlers, propagate=False).
_TOOL_LOGGERS = ("detr_ext", "detectron2", "fvcore")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_tool_loggers():
    """A tool's ``main()`` run in-process calls detectron2's ``setup_logger``, which gives
    ``detr_ext`` (...) its own handlers and stops propagation to the root logger, so later
    tests' ``caplog`` would see none of their records. Put them back after each test."""
    saved = {}
    for name in _TOOL_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)
