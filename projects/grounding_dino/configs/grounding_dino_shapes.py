"""A small Grounding DINO for the bundled shapes data, trained from scratch on the CPU with
colour prompts ("red circle . blue square .") and category prompts ("circle . square .
triangle .").

The network is ``configs/common/dino_shapes.py``'s (ResNet-18 at half width, 3 levels, width
128, 2 encoder and 3 decoder layers, 100 queries, 30 denoising queries) with the grounding parts
at the same scale (fusion width 256, 4 heads; frozen all-MiniLM-L6-v2 text encoder); its
optimizer, schedule and input sizes are DINO's shapes recipe too. The data
(``configs/common/data/shapes_grounding.py``) is evaluated twice: box AP on ``shapes_val`` with
the category prompt, and colour-phrase grounding recall (R@1, R@5) on ``shapes_grounding_val``::

    python tools/train_net.py --config-file projects/grounding_dino/configs/grounding_dino_shapes.py
    python tools/demo.py --config-file projects/grounding_dino/configs/grounding_dino_shapes.py \\
        --weights output/grounding_dino_shapes/model_final.pth --input datasets/shapes/val \\
        --output output/grounding_demo --prompt "red circle . triangle"
"""

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.data.metadata import dataset_category_names

from .models.grounding_dino_r50 import model

_shapes = get_config("common/dino_shapes.py")
_shapes_model = _shapes.model
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train

dataloader = get_config("common/data/shapes_grounding.py").dataloader
# DINO's shapes input sizes (the grounding test follows the main test's mapper).
dataloader.train.mapper = _shapes.dataloader.train.mapper
dataloader.test.mapper = _shapes.dataloader.test.mapper

for part in ("backbone", "position_embedding", "neck", "embed_dim", "num_queries", "dn_number"):
    model[part] = _shapes_model[part]
model.select_box_nums_for_evaluation = _shapes_model.select_box_nums_for_evaluation
model.category_names = L(dataset_category_names)(dataset_name="shapes_train")
model.text_encoder.max_text_len = 64
_transformer = model.transformer
_transformer.num_feature_levels = _shapes_model.transformer.num_feature_levels
# The small DINO's encoder and decoder sizes.
for part in ("encoder", "decoder"):
    _shapes_part = _shapes_model.transformer[part]
    for key in ("embed_dim", "num_heads", "feedforward_dim", "num_layers"):
        _transformer[part][key] = _shapes_part[key]
_transformer.encoder.update(text_feedforward_dim=256, fusion_embed_dim=256, fusion_drop_path=0.0)

# A grounding step costs about 1.5 DINO steps (text encoder, fusion, text attention): 900
# iterations take about as long as 1400 dino_shapes steps at 160-256 px did.
train.max_iter = 900
train.output_dir = "./output/grounding_dino_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
