"""Optimizers. ``params`` is filled in by the trainer (``optimizer.params.model = model``).

Per-module learning rates, detrex style: set ``lr_factor_func``, a function from a parameter's
full name to a learning-rate multiplier (it needs ``base_lr``, which both optimizers set), e.g.
a backbone trained at a tenth of the base rate::

    optimizer = get_config("common/optim.py").AdamW
    optimizer.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1

Normalization layers get no weight decay (``weight_decay_norm=0.0``).
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # lr of the optimizer, so that lr_factor_func has a base to multiply.
        base_lr="${..lr}",
        weight_decay_norm=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay_norm=0.0,
    ),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
