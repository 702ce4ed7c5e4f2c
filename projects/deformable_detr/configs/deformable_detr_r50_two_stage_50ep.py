"""Two-stage Deformable DETR R50 (with iterative box refinement) on COCO, 50 epochs.

detrex reports 48.2 box AP on COCO val2017 for this recipe (Zhu et al., ICLR 2021, Table 1:
46.2 with the authors' recipe).
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
model.as_two_stage = True

train.output_dir = "./output/deformable_detr_r50_two_stage_50ep"
