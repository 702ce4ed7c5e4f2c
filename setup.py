"""Builds detr_ext and its compiled extension detr_ext._C from csrc/.

The repository's shared LazyConfig files (``configs/``, e.g. ``configs/common/train.py``) are
copied into the built package as ``detr_ext/config/configs/`` (as detectron2 ships
``model_zoo/configs``), so that ``detr_ext.config.get_config("common/...")`` works from an
installed wheel. In a source checkout or an editable install, ``configs/`` in the repository is
read directly and stays the only copy.

The C++ CPU kernels are built unless switched off. The CUDA kernels are built whenever a CUDA
toolkit with nvcc is found, even when no GPU is visible. Environment switches:

- ``DETR_EXT_BUILD_EXTENSION=0``: build no extension at all (pure-PyTorch MSDA path; a fast
  install for packaging checks and machines without a compiler). Default ``1``.
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
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# The shared configs and where they go in the built package (read by detr_ext.config).
CONFIGS_SOURCE = ROOT / "configs"
CONFIGS_PACKAGE_PATH = ("detr_ext", "config", "configs")


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


def _build_extension() -> bool:
    value = os.environ.get("DETR_EXT_BUILD_EXTENSION", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"DETR_EXT_BUILD_EXTENSION must be 0 or 1, got {value!r}")
    return value == "1"


BUILD_EXTENSION = _build_extension()
CUDA_MODE = _cuda_mode()
CUDA_HOME = find_cuda_home() if CUDA_MODE != "0" and BUILD_EXTENSION else None
if CUDA_HOME:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
    os.environ["CUDA_HOME"] = CUDA_HOME

if BUILD_EXTENSION:
    import torch  # noqa: E402
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402
else:
    # A build without the extension does not import torch (a few seconds per setup.py run);
    # BuildWithFallback below is then defined but never used.
    from setuptools.command.build_ext import build_ext as BuildExtension  # noqa: E402


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


def shared_libstdcxx() -> list[str]:
    """The shared libstdc++ that this process loaded (with torch), as a link argument (Linux).

    Named by its path after the objects, it provides the C++ runtime of _C.so even where the
    compiler would link libstdc++ statically: /opt/gcc/bin/g++ on the GPU machine of 2026-12-04
    is a wrapper whose -B directory holds libstdc++.a only, so even an explicit -lstdc++ found
    the archive. A static copy inside _C.so shares none of the shared one's locale and iostream
    state: there every failed TORCH_CHECK that formats a number crashed the process (SIGSEGV in
    std::basic_ostream::_M_insert<long>) or dropped the number, instead of raising.
    """
    if not sys.platform.startswith("linux"):
        return []
    import torch  # noqa: F401 - its libraries load libstdc++.so.6

    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "/libstdc++.so" in line]
    except OSError:
        return []
    return paths[:1] if paths and os.path.isfile(paths[0]) else []


def make_extension(with_cuda: bool):
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is header code that only runs in parallel when the extension
    # itself is compiled with OpenMP (torch's wheels use OpenMP; libgomp.so.1 then resolves to
    # the copy torch has already loaded). It also honours `#pragma omp simd` (vectorized
    # reductions without -ffast-math).
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno"]
    link_flags = ["-fopenmp", *shared_libstdcxx()]
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


class BuildPyWithConfigs(build_py):
    """build_py that also copies ``configs/**/*.py`` into the package (see the module doc).

    Editable installs skip the copy: their ``detr_ext`` is the checkout's, next to ``configs/``.
    """

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (CONFIGS_SOURCE / "common").is_dir():
            raise FileNotFoundError(
                f"setup.py: expected the shared configs in {CONFIGS_SOURCE / 'common'} (they "
                "ship inside detr_ext); is this a complete source tree? (MANIFEST.in grafts "
                "configs/ into source distributions)"
            )
        target = Path(self.build_lib, *CONFIGS_PACKAGE_PATH)
        for source in sorted(CONFIGS_SOURCE.rglob("*.py")):
            destination = target / source.relative_to(CONFIGS_SOURCE)
            self.mkpath(str(destination.parent))
            self.copy_file(str(source), str(destination))


cmdclass = {"build_py": BuildPyWithConfigs}
if BUILD_EXTENSION:
    ext_modules = [make_extension(with_cuda=want_cuda())]
    cmdclass["build_ext"] = BuildWithFallback.with_options(use_ninja=True)
else:
    _log("DETR_EXT_BUILD_EXTENSION=0: no compiled extension; detr_ext uses the pure-PyTorch path")
    ext_modules = []

setup(
    name="detr_ext",
    version="0.1.0",
    description="DETR-family detectors for detectron2 with a compiled multi-scale deformable "
    "attention operator",
    python_requires=">=3.10",
    packages=find_packages(include=["detr_ext", "detr_ext.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
