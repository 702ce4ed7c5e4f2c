"""``build_info()``: what `make setup`, the benchmarks and bug reports print about the build
(found by `make mutate`: no test read its fields)."""

import pytest
import torch

from detr_ext.ops import build_info
from detr_ext.ops._extension import load_extension


@pytest.mark.skipif(load_extension() is not None, reason="detr_ext._C not loaded")
def test_build_info_reports_the_loaded_extension_and_its_kernels():
    info = build_info()
    assert info["extension_loaded"] is True and info["error"] is None
    expected = [
        key.lower()
        for key in ("CPU", "CUDA")
        if torch._C._dispatch_has_kernel_for_dispatch_key("detr_ext::ms_deform_attn", key)
    ]
    assert info["kernels"] == expected and "cpu" in info["kernels"]
    assert info["build"] == torch.ops.detr_ext.build_info()
    assert (info["torch"], info["torch_cuda"]) == (torch.__version__, torch.version.cuda)
