"""Dataset metadata a config needs when the model is built (e.g. the category names that
form a grounding detector's default prompt)."""

from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["dataset_category_names"]


def dataset_category_names(dataset_name: str) -> list[str]:
    """The ``thing_classes`` of a registered dataset, in contiguous class order.

    COCO-format datasets fill their metadata when first loaded, so the dataset is loaded
    when its metadata has no ``thing_classes`` yet. Use it lazily in a config so the names
    follow the data::

        model.category_names = L(dataset_category_names)(dataset_name="my_dataset_train")

    Raises:
        KeyError: ``dataset_name`` is not registered (the message lists registered names).
        ValueError: the dataset has no ``thing_classes`` even after loading.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset_category_names: dataset {dataset_name!r} is not registered; expected one "
            f"of {sorted(DatasetCatalog.list())}"
        )
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_classes"):
        DatasetCatalog.get(dataset_name)
    names = metadata.get("thing_classes")
    if not names:
        raise ValueError(
            f"dataset_category_names: dataset {dataset_name!r} has no thing_classes in its "
            "metadata, even after loading it; expected a detection dataset with categories"
        )
    return [str(name) for name in names]
