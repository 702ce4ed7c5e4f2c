"""Builds detr_ext and its compiled extension detr_ext._C from csrc/.

The C++ CPU kernels are always built. The CUDA kernels are built whenever a CUDA toolkit with
nvcc is found, even when no GPU is visible. Environment switches:

- ``DETR_EXT_WITH_CUDA``: unset = build CUDA when a toolkit is found, and fall back to a CPU-only
  build (with a loud warning) if that fails; ``0`` = never; ``1`` = required (fail if impossible).
- ``DETR_EXT_BUILD_REQUIRED=1``: fail instead of installing the pure-PyTorch package when even
  the CPU extension cannot be built (by default the package then still installs and imports).
- ``TORCH_CUDA_ARCH_LIST``: architectures to compile; when unset and no GPU is visible we use
  ``8.0;9.0+PTX`` (A100, H100 and, through PTX, newer GPUs) instead of torch's "all archs".
- ``CUDA_HOME``: the toolkit; otherwise /usr/local/cuda, then the directory of ``nvcc`` on PATH.
  (torch alone guesses /usr/local from /usr/local/bin/nvcc on some machines, and the link then
  fails to find libcudart.)
- ``MAX_JOBS``: parallel compile jobs (honoured by ninja through torch's BuildExtension).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _is_toolkit(path: str | None) -> bool:
    """A usable toolkit has nvcc and the runtime library to link against."""
    if not path:
        return False
    root = Path(path)
    libs = [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib"]
    has_cudart = any(glob.glob(str(lib / "libcudart.so*")) for lib in libs)
    return (root / "bin" / "nvcc").is_file() and has_cudart


def find_cuda_home() -> str | None:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for candidate in candidates:
        if _is_toolkit(candidate):
            return str(Path(candidate).resolve())
    return None


def _cuda_mode() -> str:
    mode = os.environ.get("DETR_EXT_WITH_CUDA", "").strip().lower()
    if mode in ("", "auto"):
        return "auto"
    if mode in ("0", "1"):
        return mode
    raise ValueError(f"DETR_EXT_WITH_CUDA must be 0, 1 or unset, got {mode!r}")


CUDA_MODE = _cuda_mode()
CUDA_HOME = find_cuda_home() if CUDA_MODE != "0" else None
if CUDA_HOME:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _log(message: str) -> None:
    print(f"[detr_ext setup] {message}", file=sys.stderr, flush=True)


def want_cuda() -> bool:
    if CUDA_MODE == "0":
        _log("DETR_EXT_WITH_CUDA=0: building the CPU kernels only")
        return False
    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU-only build"
    elif CUDA_HOME is None:
        problem = "no CUDA toolkit with nvcc and libcudart found (set CUDA_HOME)"
    if problem:
        if CUDA_MODE == "1":
            raise RuntimeError(f"DETR_EXT_WITH_CUDA=1 but CUDA kernels cannot be built: {problem}")
        _log(f"building the CPU kernels only: {problem}")
        return False
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    _log(
        f"building CPU and CUDA kernels with {CUDA_HOME} for "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)')}"
    )
    return True


def make_extension(with_cuda: bool):
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is header code that only runs in parallel when the extension
    # itself is compiled with OpenMP (torch's wheels use OpenMP; libgomp.so.1 then resolves to
    # the copy torch has already loaded). It also honours `#pragma omp simd` (vectorized
    # reductions without -ffast-math).
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno"]
    link_flags = ["-fopenmp"]
    if not with_cuda:
        return CppExtension(
            "detr_ext._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DDETR_EXT_WITH_CUDA"]
    return CUDAExtension(
        "detr_ext._C",
        sources,
        extra_compile_args={"cxx": cxx_flags + ["-DDETR_EXT_WITH_CUDA"], "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


class BuildWithFallback(BuildExtension):
    """Builds detr_ext._C; a failed optional build degrades instead of breaking the install.

    auto mode: CUDA build fails -> CPU-only build; CPU build fails -> no extension, and the
    package runs the pure-PyTorch reference path (``detr_ext.ops.build_info()`` says why).
    """

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
            return
        except Exception as error:  # noqa: BLE001 - any compiler or toolkit failure
            has_cuda = any(s.endswith(".cu") for ext in self.extensions for s in ext.sources)
            if not has_cuda or CUDA_MODE == "1":
                self._give_up(error)
                return
            _log(f"WARNING: the CUDA build failed ({error}); retrying with the CPU kernels only")
        self.extensions = [make_extension(with_cuda=False)]
        try:
            super().build_extensions()
        except Exception as error:  # noqa: BLE001
            self._give_up(error)

    def _give_up(self, error: Exception) -> None:
        if os.environ.get("DETR_EXT_BUILD_REQUIRED") == "1" or CUDA_MODE == "1":
            raise error
        self.extensions = []  # nothing to copy in place or install
        _log(
            f"WARNING: building detr_ext._C failed ({error}); detr_ext will use the pure-PyTorch "
            "MSDA path. Set DETR_EXT_BUILD_REQUIRED=1 to make this an error."
        )


setup(
    name="detr_ext",
    version="0.1.0",
    description="DETR-family detectors for detectron2 with a compiled multi-scale deformable "
    "attention operator",
    python_requires=">=3.10",
    packages=find_packages(include=["detr_ext", "detr_ext.*"]),
    ext_modules=[make_extension(with_cuda=want_cuda())],
    cmdclass={"build_ext": BuildWithFallback.with_options(use_ninja=True)},
    zip_safe=False,
)
