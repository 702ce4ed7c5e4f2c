"""detr_ext.ops.gpu_timing: byte counts here; graph timing and copy bandwidth on a GPU."""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops.gpu_timing import copy_bandwidth, graph_seconds, nbytes


def test_nbytes_counts_every_element_in_its_dtype():
    assert nbytes(torch.empty(3, 5), torch.empty(7, dtype=torch.bfloat16)) == 3 * 5 * 4 + 7 * 2


@pytest.mark.cuda
def test_graph_timing_replays_every_launch_and_rotates_the_sets():
    calls = []
    buffers = [torch.zeros(4, device="cuda") for _ in range(3)]

    def launch(i):
        calls.append(i)
        buffers[i].add_(1)

    seconds, method = graph_seconds(launch, sets=3, launches=6, replays=4)
    torch.cuda.synchronize()
    assert method == "graph" and seconds > 0
    # Python runs: 3 warm-ups, 1 on the side stream, 6 captured; replays run on the GPU only.
    assert calls == [0, 1, 2, 0] + [0, 1, 2, 0, 1, 2]
    # Each set: its warm-up(s), plus 2 per replay of the graph (5 replays: 1 warm, 4 timed).
    assert [int(b[0]) for b in buffers] == [2 + 2 * 5, 1 + 2 * 5, 1 + 2 * 5]


@pytest.mark.cuda
def test_copy_bandwidth_reports_its_fastest_measurement():
    result = copy_bandwidth(1)
    rates = [m["bytes_per_s"] for m in result["measurements"]]
    assert len(rates) == 4 and result["bandwidth_bytes_per_s"] == max(rates) > 0
    assert result["copy_bytes_read_plus_written"] == 2 * 2**30
