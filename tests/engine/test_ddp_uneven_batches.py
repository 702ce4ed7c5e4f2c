"""Distributed training (2 gloo processes on the CPU) when the ranks' batches differ: one rank
with objects, the other with none.

Every rank must run the same collectives whatever its batch holds: the criterion's box count
is all-reduced once per forward (also without targets or denoising queries), and every
parameter stays in the autograd graph (``find_unused_parameters=False``, the default in
``configs/common/train.py``), else the next iteration fails or hangs. For each project's
shapes model (shrunk, see ``tests/projects/tiny_shapes.py``), wrapped like ``do_train``
wraps it (``wrap_ddp`` with ``train.ddp``), three optimizer steps run with uneven batches;
both ranks must finish with finite losses and identical parameters. A hang fails the test
through the gloo timeout and the join deadline instead of blocking the suite.

Batches with only crowd objects are covered by the empty ones: the dataset mapper drops crowd
annotations, so such an image reaches the model without instances.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import instantiate

from detr_ext.engine.defaults import wrap_ddp
from tests.gloo import gloo_group
from tests.projects.tiny_shapes import SHAPES_CONFIGS, synthetic_batch, tiny_shapes_config

WORLD_SIZE = 2
COLLECTIVE_TIMEOUT_S = 60  # gloo gives up on a collective the other rank never joins
JOIN_DEADLINE_S = 300  # all projects, imports included, on a busy 2-core machine

# Objects per image, per step, per rank (2 images per rank). Step 0: rank 1 has no objects
# at all (so no denoising queries either); step 1: rank 0 has none; step 2: both ranks have
# objects, each with one empty image. A parameter left out of the graph on one rank in step
# i makes step i + 1 fail; the parameter comparison after step 2 covers the last step.
STEP_OBJECT_COUNTS = (
    ([3, 0], [0, 0]),
    ([0, 0], [2, 1]),
    ([1, 0], [0, 2]),
)


def _num_boxes_of_uneven_ranks(criterion, rank: int) -> float:
    """``get_num_boxes`` with 3 boxes on rank 0 and none on rank 1 (a collective)."""
    count = 3 if rank == 0 else 0
    targets = [
        {"labels": torch.zeros(count, dtype=torch.int64), "boxes": torch.full((count, 4), 0.5)}
    ]
    return criterion.get_num_boxes(targets, torch.device("cpu"))


def _train_project(rank: int, project: str) -> dict:
    """On one rank: build the project's model, check the box count, train the uneven steps;
    the losses and the largest parameter difference to rank 0."""
    cfg = tiny_shapes_config(project)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    num_boxes = _num_boxes_of_uneven_ranks(model.criterion, rank)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    ddp_model = wrap_ddp(model, cfg, **cfg.train.ddp)
    assert isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel)

    step_losses = []
    for step, counts in enumerate(STEP_OBJECT_COUNTS):
        loss_dict = ddp_model(synthetic_batch(counts[rank], seed=10 * step + rank))
        optimizer.zero_grad()
        sum(loss_dict.values()).backward()
        optimizer.step()
        step_losses.append({key: value.item() for key, value in loss_dict.items()})

    params = torch.cat([param.detach().flatten() for param in model.parameters()])
    gathered = [torch.empty_like(params) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, params)
    return {
        "num_boxes": num_boxes,
        "losses": step_losses,
        "max_param_difference": (gathered[rank] - gathered[0]).abs().max().item(),
        "params_finite": bool(torch.isfinite(params).all()),
    }


# Gradient accumulation (Trainer(accumulation_steps=2)): DDP's no_sync on the first batch of a
# step, the all-reduce on the second, with the uneven batches above as the 4 batches of 2
# steps (the object counts of steps 0, 1, 2, 0 again).
ACCUMULATION_PROJECT = "dino"


def _train_accumulated(rank: int, project: str) -> dict:
    """On one rank: 2 trainer steps of 2 accumulated uneven batches each; the largest
    parameter difference to rank 0 and the skipped-step count."""
    from detr_ext.engine import Trainer

    cfg = tiny_shapes_config(project)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    ddp_model = wrap_ddp(model, cfg, **cfg.train.ddp)
    counts = [STEP_OBJECT_COUNTS[step % len(STEP_OBJECT_COUNTS)][rank] for step in range(4)]
    batches = [synthetic_batch(count, seed=10 * step + rank) for step, count in enumerate(counts)]
    trainer = Trainer(ddp_model, batches, optimizer, accumulation_steps=2)
    trainer.train(0, 2)
    params = torch.cat([param.detach().flatten() for param in model.parameters()])
    gathered = [torch.empty_like(params) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, params)
    return {
        "iterations": trainer.iter,
        "skipped": trainer.nonfinite_skipped_steps,
        "max_param_difference": (gathered[rank] - gathered[0]).abs().max().item(),
        "params_finite": bool(torch.isfinite(params).all()),
    }


def _worker(rank: int, projects: list[str], init_file: str, result_dir: str) -> None:
    """One DDP rank: :func:`_train_project` for every project in turn, each result written to
    ``{project}_rank{rank}.json``. One process group for all projects: starting the
    processes (importing torch, detectron2) costs more than the training."""
    torch.set_num_threads(1)  # two processes share the cores
    with gloo_group(rank, WORLD_SIZE, init_file, timeout_s=COLLECTIVE_TIMEOUT_S):
        for project in projects:
            if project.endswith("+accumulation"):
                result = _train_accumulated(rank, project.split("+")[0])
            else:
                result = _train_project(rank, project)
            (Path(result_dir) / f"{project}_rank{rank}.json").write_text(json.dumps(result))


def run_two_ranks(projects: list[str], result_dir: Path) -> None:
    """Run :func:`_worker` on 2 spawned processes. Raises what a rank raised (torch's
    ``ProcessRaisedException`` / ``ProcessExitedException``), or ``TimeoutError`` when the
    deadline passes (then both processes are killed)."""
    context = mp.start_processes(
        _worker,
        args=(projects, str(result_dir / "rendezvous"), str(result_dir)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + JOIN_DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"the 2 DDP ranks did not finish within {JOIN_DEADLINE_S} s")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict[str, list[dict] | str]:
    """Project -> the 2 ranks' results, or the error that stopped it.

    The projects share a process group; when one fails, the run starts again (fresh
    processes) with the projects after it, so each project's outcome is its own.
    """
    outcomes: dict[str, list[dict] | str] = {}
    remaining = [*sorted(SHAPES_CONFIGS), f"{ACCUMULATION_PROJECT}+accumulation"]
    while remaining:
        result_dir = tmp_path_factory.mktemp("ddp_uneven_batches")
        error = None
        try:
            run_two_ranks(remaining, result_dir)
        except (mp.ProcessRaisedException, mp.ProcessExitedException, TimeoutError) as raised:
            error = f"{type(raised).__name__}: {raised}"
        for project in list(remaining):
            files = [result_dir / f"{project}_rank{rank}.json" for rank in range(WORLD_SIZE)]
            remaining.remove(project)
            if all(file.is_file() for file in files):
                outcomes[project] = [json.loads(file.read_text()) for file in files]
            else:
                outcomes[project] = error or "no results written"
                break
    return outcomes


def test_default_ddp_settings_do_not_look_for_unused_parameters():
    """The runs below use the configs' DDP settings; they test the strict default."""
    for project in SHAPES_CONFIGS:
        assert tiny_shapes_config(project).train.ddp.find_unused_parameters is False, project


@pytest.mark.parametrize("project", sorted(SHAPES_CONFIGS))
def test_uneven_batches_train_in_step(project, ddp_runs):
    results = ddp_runs[project]
    if isinstance(results, str):
        pytest.fail(f"{project}: the 2-process run failed (see the captured stderr): {results}")

    # 3 boxes on rank 0, 0 on rank 1: the mean over the 2 workers on both.
    assert [result["num_boxes"] for result in results] == [1.5, 1.5]
    for rank, result in enumerate(results):
        assert len(result["losses"]) == len(STEP_OBJECT_COUNTS), rank
        for step, losses in enumerate(result["losses"]):
            assert losses.keys() == results[0]["losses"][step].keys(), (rank, step)
            assert all(torch.isfinite(torch.tensor(list(losses.values())))), (rank, step, losses)
        assert result["params_finite"], rank
        assert result["max_param_difference"] == 0.0, rank
    # The steps did train: rank 0's first step has objects, so a positive box loss.
    assert results[0]["losses"][0]["loss_bbox"] > 0
    assert results[1]["losses"][0]["loss_bbox"] == 0


def test_accumulated_uneven_batches_train_in_step(ddp_runs):
    """2 steps of 2 accumulated batches, some without objects on one rank: no collective
    mismatch between no_sync and the synced backward, no step skipped, both ranks with the
    same finite parameters."""
    results = ddp_runs[f"{ACCUMULATION_PROJECT}+accumulation"]
    if isinstance(results, str):
        pytest.fail(f"the 2-process accumulation run failed (see the captured stderr): {results}")
    for rank, result in enumerate(results):
        assert (result["iterations"], result["skipped"]) == (2, 0), rank
        assert result["params_finite"] and result["max_param_difference"] == 0.0, rank


@pytest.mark.parametrize("project", sorted(SHAPES_CONFIGS))
def test_a_batch_without_objects_reaches_every_trainable_parameter(project):
    """The single-process root of the DDP condition above, with the parameter named: a batch
    in which no image has objects (no matches, no denoising queries) must still give every
    trainable parameter a gradient (zero is fine). Grounding DINO's phrase ``label_enc`` is a
    ``Linear``; keeping only its weight in the graph (as DINO's ``Embedding``) left its bias
    out, and 2-process training failed on the step after such a batch."""
    torch.manual_seed(0)
    model = instantiate(tiny_shapes_config(project).model).train()
    losses = model(synthetic_batch([0, 0], seed=3))
    sum(losses.values()).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{project}: no gradient from a batch without objects: {missing}"
