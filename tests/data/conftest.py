"""Fixtures shared by the data tests."""

import logging

import pytest


@pytest.fixture
def warnings_log():
    """Warning messages of the COCO registration module (its logger does not propagate to
    root once detectron2's setup_logger configured "detr_ext", so caplog alone misses them)."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("detr_ext.data.datasets.coco_format")
    handler, level = Collect(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)
