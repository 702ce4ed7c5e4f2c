"""DINO, ResNet-50, 4 feature levels, 900 queries, 100 denoising queries (detrex's model).

The shared recipe ``configs/common/models/dino_r50.py`` (DINO's network and criterion) built as
this project's registered ``DINO``. Parameter names and shapes equal detrex's
``dino_r50_4scale``; the 5-scale configs add the res2 level on this model.
"""

from detr_ext.config import get_config
from projects.dino.modeling import DINO

model = get_config("common/models/dino_r50.py").model
model._target_ = DINO
