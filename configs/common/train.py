"""Training options read by ``tools/train_net.py`` (``detr_ext.engine.do_train``).

Iteration counts are optimizer steps. Override on the command line, e.g.
``train.max_iter=1000 train.device=cpu``.
"""

train = dict(
    output_dir="./output",
    # A checkpoint to initialize from (path or detectron2:// / https:// URL); "" = none.
    init_checkpoint="",
    max_iter=90000,
    # float16 autocast + GradScaler (CUDA only; falls back to float32 on CPU with a warning).
    # An overflow skips the step and halves the scale; this many in a row stop training
    # (gradients NaN/inf at any scale: divergence), as max_consecutive_nonfinite below.
    amp=dict(enabled=False, max_consecutive_overflows=30),
    # bfloat16 autocast (CUDA or CPU); takes precedence over amp.
    bf16=False,
    # Arguments of DistributedDataParallel (through detectron2's create_ddp_model).
    ddp=dict(
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    # Save every `period` iterations, keep the last `max_to_keep` periodic checkpoints (None:
    # all), counting those of the runs before a --resume; model_final.pth is always kept.
    checkpointer=dict(period=5000, max_to_keep=100),
    # Evaluate every `eval_period` iterations (0 = only after the last iteration).
    eval_period=5000,
    log_period=20,
    device="cuda",
    # torch.nn.utils.clip_grad_norm_ over all parameters, after unscaling under AMP.
    clip_grad=dict(
        enabled=False,
        params=dict(max_norm=0.1, norm_type=2),
    ),
    # A step whose loss or gradient is NaN/inf is skipped (no optimizer step, a warning, the
    # count in metrics as "nonfinite_skipped_steps"); this many skipped steps in a row stop
    # training with an error naming the last good checkpoint (1 = stop at the first one).
    # Float16 GradScaler overflows are counted apart (amp.max_consecutive_overflows).
    max_consecutive_nonfinite=5,
    # Gradient accumulation: each optimizer step (iteration) runs this many batches of
    # dataloader.train.total_batch_size images, each loss scaled by 1/N, so that fewer or
    # smaller GPUs train with the recipe's total batch (e.g. 8 GPUs x 2 images = 16 as
    # 4 GPUs x 2 images x 2 steps). Under DDP the gradients are all-reduced once per step.
    grad_accumulation_steps=1,
    # EMA of the weights; evaluation then reports both the raw and the EMA weights (the latter
    # under the "ema" key). With use_ema_weights_for_eval_only, --eval-only evaluates the EMA
    # weights alone (enabled=True and a checkpoint with EMA weights needed, else an error).
    # The decay of update t ramps up as decay * (1 - exp(-t / warmup)) (YOLOX; warmup=0: the
    # decay from the first update, as detrex's 0.999). device: where the EMA copy lives
    # (None: with the model; "cpu" saves accelerator memory).
    ema=dict(
        enabled=False,
        decay=0.9998,
        warmup=2000,
        device=None,
        use_ema_weights_for_eval_only=False,
    ),
    # < 0: a new seed per run, drawn at setup and written to config.yaml and the log (pass it
    # back as train.seed=N to repeat the run); >= 0: seed + rank on every process.
    seed=-1,
)
