"""Run mutmut over chosen detr_ext modules against only the tests that exercise them.

Used by ``make mutate`` (see README, "Tests"). mutmut 3 reads its settings from
``[tool.mutmut]`` in pyproject.toml; this wrapper narrows two of them per run, because they
decide the cost of a run on a 2-core machine:

- ``only_mutate``: the modules given with ``--paths`` (files or folders under ``detr_ext`` or
  ``projects``, e.g. a project's ``checkpoint.py`` converter rules). mutmut still copies all
  of ``detr_ext`` and ``projects`` into ``mutants/`` so that imports work.
- ``pytest_add_cli_args_test_selection``: the tests given with ``--tests``, or the ones listed
  for each path in ``DEFAULT_TESTS``. mutmut runs them once under coverage, then runs each
  mutant against only the tests that reached the mutated function.

``--timeout-multiplier`` / ``--timeout-constant`` bound each mutant (its CPU-time limit is
``(time of its tests + constant) * multiplier * 2`` seconds); ``make mutate`` bounds the whole
run with ``timeout`` (mutmut stops cleanly on SIGINT and keeps the results it has).

Import isolation: the venv's ``detr_ext-repo.pth`` puts the repository root on ``sys.path``.
mutmut removes that entry and puts ``mutants/`` first, and pytest runs from ``mutants/``
(``pythonpath = ["."]``), so tests import the mutated copy. Were it otherwise, no mutant
would be killed; the per-module table printed at the end shows the killed count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Module (prefix) -> tests that exercise it quickly. Longest prefix wins.
DEFAULT_TESTS: dict[str, list[str]] = {
    "detr_ext/layers/box_ops.py": ["tests/layers/test_box_ops.py"],
    "detr_ext/layers/denoising.py": ["tests/layers/test_denoising.py"],
    "detr_ext/modeling/matchers": [
        "tests/modeling/test_matcher.py",
        "tests/modeling/test_many_to_one_matcher.py",
    ],
    "detr_ext/modeling/losses": [
        "tests/modeling/test_focal_loss.py",
        "tests/modeling/test_ia_bce_loss.py",
        "tests/modeling/test_loss_precision.py",
    ],
    "detr_ext/modeling/criterions": [
        "tests/modeling/test_criterion.py",
        "tests/projects/test_dino.py",
        "tests/projects/test_align_detr.py",
    ],
    "detr_ext/ops": ["tests/ops"],
    "detr_ext/engine": ["tests/engine"],
    "detr_ext/engine/trainer.py": [
        "tests/engine/test_trainer.py",
        "tests/engine/test_grad_accumulation.py",
        "tests/engine/test_nonfinite.py",
        "tests/engine/test_nonfinite_do_train.py",
        "tests/engine/test_checks.py",
    ],
    "detr_ext/engine/nonfinite.py": [
        "tests/engine/test_nonfinite.py",
        "tests/engine/test_nonfinite_do_train.py",
        "tests/engine/test_grad_accumulation.py",
    ],
    # The resumed data stream: unit tests, then the end-to-end resume (train_net runs).
    "detr_ext/engine/data_stream.py": [
        "tests/engine/test_data_stream.py",
        "tests/engine/test_train_net.py",
    ],
    "detr_ext/data/samplers.py": ["tests/data/test_samplers.py"],
    "detr_ext/checkpoint/reading.py": ["tests/engine/test_checkpointer.py"],
    "detr_ext/engine/ema.py": ["tests/engine/test_ema.py"],
    "detr_ext/utils/flop_count.py": ["tests/tools/test_analyze_model.py"],
    "detr_ext/modeling/language/prompts.py": ["tests/modeling/language/test_prompts.py"],
    "detr_ext/data": ["tests/data"],
    "detr_ext/data/dataset_mapper.py": [
        "tests/data/test_dataset_mapper.py",
        "tests/data/test_image_io.py",
    ],
    "detr_ext/checkpoint": ["tests/checkpoint"],
    # Loading weights into a model: exercised by the predictor and --eval-only tests.
    "detr_ext/checkpoint/loading.py": [
        "tests/engine/test_predictor.py",
        "tests/engine/test_train_net.py",
    ],
    # The converters: the shared engine in detr_ext/checkpoint, one rule set per project.
    "projects/detr/checkpoint.py": [
        "tests/projects/test_detr_converter.py",
        "tests/projects/test_detr_dc5.py",
    ],
    "projects/deformable_detr/checkpoint.py": ["tests/projects/test_deformable_detr.py"],
    "projects/dino/checkpoint.py": ["tests/projects/test_dino.py"],
    "projects/align_detr/checkpoint.py": ["tests/projects/test_align_detr.py"],
}

# The modules where a silent bug costs most (the list); `make mutate` default.
DEFAULT_PATHS = [
    "detr_ext/layers/box_ops.py",
    "detr_ext/modeling/matchers",
    "detr_ext/modeling/losses",
    "detr_ext/modeling/criterions",
    "detr_ext/layers/denoising.py",
    "detr_ext/ops",
    "detr_ext/engine/trainer.py",
    "detr_ext/engine/nonfinite.py",
    "detr_ext/engine/ema.py",
    "detr_ext/engine/data_stream.py",
    "detr_ext/data/samplers.py",
    "detr_ext/data/dataset_mapper.py",
    "detr_ext/checkpoint/convert.py",
    "detr_ext/checkpoint/loading.py",
    "projects/detr/checkpoint.py",
    "projects/deformable_detr/checkpoint.py",
    "projects/dino/checkpoint.py",
    "projects/align_detr/checkpoint.py",
]


# Tests that cannot run under mutmut: its trampolines (the Python wrapper around each mutated
# function) are frames torch.compile(fullgraph=True) refuses to trace, so this test fails
# on the unmutated code there. torch.compile without fullgraph still runs (test_compile_*).
DESELECT = ["tests/ops/test_ms_deform_attn_cpu.py::test_compile_fullgraph_forward_and_backward"]


def _tests_for(path: str) -> list[str]:
    best = max((p for p in DEFAULT_TESTS if path.startswith(p)), key=len, default=None)
    if best is None:
        raise SystemExit(
            f"mutate: no default tests for {path!r}; expected one of {sorted(DEFAULT_TESTS)} "
            "or pass --tests / MUTATE_TESTS explicitly"
        )
    return DEFAULT_TESTS[best]


def _only_mutate_patterns(paths: list[str]) -> list[str]:
    patterns = []
    for p in paths:
        path = REPO / p
        if not path.exists() or not p.startswith(("detr_ext", "projects")):
            raise SystemExit(
                f"mutate: expected a file or folder under detr_ext/ or projects/, got {p!r}"
            )
        patterns.append(p if path.is_file() else p.rstrip("/") + "/*")
    return patterns


def summary() -> int:
    """Print killed / survived / timeout / no-tests / not-checked per mutated module."""
    import json

    from mutmut.stats import status_by_exit_code

    cols = ["killed", "survived", "timeout", "no tests", "not checked", "other"]
    print(f"{'module':<52}" + "".join(f"{c:>12}" for c in cols))
    for meta in sorted(Path(REPO / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = dict.fromkeys(cols, 0)
        for code in codes.values():
            status = status_by_exit_code[code]
            counts[status if status in counts else "other"] += 1
        module = str(meta.relative_to(REPO / "mutants"))[: -len(".meta")]
        print(f"{module:<52}" + "".join(f"{counts[c]:>12}" for c in cols))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", nargs="*", default=None, help="modules/folders to mutate")
    ap.add_argument("--tests", nargs="*", default=None, help="test files to select from")
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutant workers")
    ap.add_argument("--timeout-multiplier", type=float, default=None)
    ap.add_argument("--timeout-constant", type=float, default=None)
    ap.add_argument("--summary", action="store_true", help="print the per-module table only")
    ap.add_argument("mutmut_args", nargs="*", help="mutant names (globs) passed to mutmut run")
    args = ap.parse_args(argv)
    if args.summary:
        return summary()

    paths = args.paths or DEFAULT_PATHS
    tests = args.tests or sorted({t for p in paths for t in _tests_for(p)})

    import os
    import shutil

    os.chdir(REPO)
    # mutmut 3 assumes a stable selection: a file copied unmutated by one run counts as
    # "already mutated" in the next, and a new test selection resets every result. So the
    # state in mutants/ belongs to one (paths, tests) selection; a different one starts over.
    selection = repr((sorted(paths), sorted(tests)))
    marker = Path("mutants/.mutate-selection")
    if Path("mutants").exists() and (not marker.exists() or marker.read_text() != selection):
        print("[mutate] new selection: removing the previous run's mutants/")
        shutil.rmtree("mutants")
    Path("mutants").mkdir(exist_ok=True)
    marker.write_text(selection)

    from mutmut import configuration

    cfg = configuration.config()
    cfg.only_mutate = _only_mutate_patterns(paths)
    cfg.pytest_add_cli_args_test_selection = list(tests)
    cfg.pytest_add_cli_args = list(cfg.pytest_add_cli_args) + [
        f"--deselect={t}" for t in DESELECT if any(t.startswith(s) for s in tests)
    ]
    if args.timeout_multiplier is not None:
        cfg.timeout_multiplier = args.timeout_multiplier
    if args.timeout_constant is not None:
        cfg.timeout_constant = args.timeout_constant
    print(
        f"[mutate] mutating {cfg.only_mutate}\n"
        f"[mutate] tests {cfg.pytest_add_cli_args_test_selection}"
    )

    from mutmut.__main__ import cli

    run_args = ["run", "--max-children", str(args.max_children), *args.mutmut_args]
    return cli.main(run_args, standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
