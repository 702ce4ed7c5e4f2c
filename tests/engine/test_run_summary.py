"""The demo's one-line summary (detr_ext.engine.run_summary.summary_line): what its time
covers, for a new run, a resumed one and an evaluation without training."""

from __future__ import annotations

import math

from detr_ext.engine.run_summary import summary_line


def test_summary_line_of_a_new_run():
    line = summary_line(41.23, 2000, 726.0, 744.0)
    assert line == (
        "box AP = 41.2 after 2000 iterations in 12.1 min (training and its evaluation), "
        "12.4 min in all"
    )


def test_summary_line_of_a_resumed_run_counts_what_its_time_covers():
    # Resumed at iteration 1200 of 2000: its 4.8 min trained 800 iterations, not 2000.
    line = summary_line(41.23, 2000, 288.0, start_iter=1200)
    assert line == (
        "box AP = 41.2 after 2000 iterations (800 of them in this run, from iteration 1200) "
        "in 4.8 min (training and its evaluation)"
    )
    line = summary_line(None, None, 288.0, start_iter=1200)
    assert "after an unknown number of iterations (in this run, from iteration 1200)" in line


def test_summary_line_without_training_or_an_ap():
    assert summary_line(math.nan, 3, None) == "box AP = n/a after 3 iterations (training skipped)"
