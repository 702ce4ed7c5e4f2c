"""A picture of what a trained detector finds: its predictions on the first test images of a
config drawn in one grid and saved as a PNG (``tools/train_shapes_demo.py``'s
``predictions.png``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .checks import config_dataset_names

__all__ = ["save_prediction_grid"]


def save_prediction_grid(
    cfg,
    weights: str,
    path: Path,
    num_images: int = 6,
    columns: int = 3,
    threshold: float = 0.5,
    title: str = "",
) -> list[str]:
    """Draw the predictions of ``weights`` on the first ``num_images`` test images in a grid of
    ``columns`` columns and save it as a PNG; returns the image files used."""
    from detectron2.data import DatasetCatalog
    from matplotlib.figure import Figure

    from .predictor import Predictor, draw_predictions

    predictor = Predictor(cfg, weights, device=cfg.train.device)
    name = config_dataset_names(cfg, splits=("test",))[0]
    files = [record["file_name"] for record in DatasetCatalog.get(name)[:num_images]]
    if not files:
        raise ValueError(f"save_prediction_grid: test dataset {name!r} has no images")

    columns = min(columns, len(files))
    rows = math.ceil(len(files) / columns)
    figure = Figure(figsize=(4 * columns, 4 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, file_name in zip(axes, files, strict=False):
        image = predictor.read_image(file_name)
        instances = predictor(image)
        drawn = draw_predictions(predictor.to_rgb(image), instances, predictor.metadata, threshold)
        num_shown = int((instances.scores >= threshold).sum())
        axis.imshow(drawn)
        axis.set_title(f"{os.path.basename(file_name)}: {num_shown} detections", fontsize=10)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(f"{title}{': ' if title else ''}predictions with score >= {threshold}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return files
