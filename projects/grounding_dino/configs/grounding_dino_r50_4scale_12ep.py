"""Grounding DINO R50 4-scale trained on COCO detection with category-name prompts, 12 epochs
(90k iterations at batch 16), lr drop at epoch 11: DINO's COCO recipe with the text encoder
frozen. Prompt with other phrases at inference (``tools/demo.py --prompt``)."""

from detr_ext.config import get_config

from .models.grounding_dino_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep
train = get_config("common/train.py").train

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/grounding_dino_r50_4scale_12ep"
train.max_iter = 12 * 7500
train.eval_period = 5000
train.log_period = 20
train.checkpointer.period = 5000
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.device = "cuda"

optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1

dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 16

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
