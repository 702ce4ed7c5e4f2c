"""AOTInductor: the tiny DINO compiled into a package, loaded and run from Python.

Slow (opt-in, ``pytest -m slow``): compiling the generated C++ takes 7 to 10 minutes on 2 CPU
cores, even for this tiny model; tools/benchmark_export.py compiles every model."""

from __future__ import annotations

import zipfile

import pytest

from detr_ext.export import AOTIRunner, export_model, load_exported

from .models import EXAMPLE_SIZE, TEST_SIZES, assert_matches, eager_outputs, make_batch


@pytest.mark.slow
def test_aoti_package_gives_the_eager_detections(exported_dino, tmp_path):
    path = tmp_path / "dino.aoti.pt2"
    metadata = export_model(
        exported_dino.model, path, "aoti", program=exported_dino.program, example_size=EXAMPLE_SIZE
    )
    with zipfile.ZipFile(path) as archive:
        assert any("/aotinductor/" in name for name in archive.namelist())
    runner = load_exported(path)
    assert isinstance(runner, AOTIRunner)
    assert runner.metadata == metadata
    for size, batch in ((TEST_SIZES[0], 2), (TEST_SIZES[1], 3)):
        images, image_sizes = make_batch(size, seed=1, batch=batch)
        assert_matches(
            eager_outputs(exported_dino.model, images, image_sizes), runner(images, image_sizes)
        )
