"""``build_info()``: what `make setup`, the benchmarks and bug reports print about the build;
the backend choice when no compiled kernel serves a tensor (both found by `make mutate`)."""

import importlib
import shutil
import subprocess
import warnings

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


def test_auto_falls_back_once_with_the_reason_and_compiled_refuses(monkeypatch):
    """A device without compiled kernels (here ``meta``, as when the fake kernel is not
    registered): "auto" takes the PyTorch path and warns once, naming why; "compiled" raises
    with the same reason (found by `make mutate`: only a subprocess test without the extension
    reached this path)."""
    front = importlib.import_module("detr_ext.ops.ms_deform_attn")  # the module, not the op
    extension = importlib.import_module("detr_ext.ops._extension")
    assert extension._kernel_table()["Meta"]  # the fake kernel serves meta tensors
    monkeypatch.setitem(extension._KERNEL_TABLE, "Meta", False)
    monkeypatch.setattr(front, "_warned", set())
    value = torch.empty(1, 4, 2, 8, device="meta")
    with pytest.warns(RuntimeWarning, match=r"falls back to the PyTorch path \(.*without meta"):
        assert front.resolve_backend("auto", value) == "pytorch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        assert front.resolve_backend("auto", value) == "pytorch"
    with pytest.raises(RuntimeError, match="backend='compiled' is unavailable: .*without meta"):
        front.resolve_backend("compiled", value)


@pytest.mark.skipif(load_extension() is not None, reason="detr_ext._C not loaded")
def test_a_failed_cpp_check_raises_with_its_numbers():
    """The extension shares the process's C++ runtime. Built by a compiler that links libstdc++
    statically (the GPU machine's /opt/gcc/bin/g++ of 2026-12-04), every failed TORCH_CHECK that
    formats a number crashed the process there (SIGSEGV) and here lost the number ("got " and
    nothing); setup.py now links libstdc++.so explicitly."""
    value = torch.zeros(1, 4, 2, 8)
    args = (
        value,
        torch.tensor([[2, 2]]),
        torch.tensor([0]),
        torch.rand(1, 3, 2, 1, 2, 2),
        torch.rand(1, 5, 2, 1, 2),  # 5 queries where the locations have 3
    )
    with pytest.raises(RuntimeError, match=r"attention_weights of shape \[1, 3, 2, 1, 2\]"):
        torch.ops.detr_ext.ms_deform_attn(*args)


@pytest.mark.skipif(load_extension() is not None, reason="detr_ext._C not loaded")
@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_the_extension_links_the_shared_libstdcxx():
    import detr_ext._C

    linked = subprocess.run(
        ["ldd", detr_ext._C.__file__], capture_output=True, text=True, check=True
    ).stdout
    assert "libstdc++.so" in linked, linked
