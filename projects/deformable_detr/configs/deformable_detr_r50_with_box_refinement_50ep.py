"""Deformable DETR R50 with iterative bounding box refinement on COCO, 50 epochs.

detrex reports 47.0 box AP on COCO val2017 for this recipe (Zhu et al., ICLR 2021, Table 1:
45.4 with the authors' recipe).
"""

# Re-exported: a LazyConfig file's config is its top-level names.
from .deformable_detr_r50_50ep import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.with_box_refine = True

train.output_dir = "./output/deformable_detr_r50_with_box_refinement_50ep"
