"""Build script for shiftnas: packages plus the compiled extension ``shiftnas._C``.

Project metadata (name, version, dependencies, scripts) lives in pyproject.toml;
this file only supplies what setuptools cannot express declaratively there:
the package layout (``kernels/`` is installed as ``shiftnas.kernels``, the run configs
``configs/*.yaml`` as package data ``shiftnas/configs/``) and the C++/CUDA extension.

One rule decides whether the CUDA sources are compiled (``SHIFTNAS_BUILD_CUDA``):
  * ``SHIFTNAS_BUILD_CUDA=1``: always (CI keeps compile coverage on GPU-less machines); an
    error when torch is not a CUDA build or no nvcc is found,
  * ``SHIFTNAS_BUILD_CUDA=0``: never (``SHIFTNAS_SKIP_CUDA_BUILD=1``, the old switch, means the same),
  * unset: only when a GPU is visible (``torch.cuda.is_available()``) and nvcc is found.
The toolkit is ``$CUDA_HOME``/``$CUDA_PATH``, else the /usr/local/cuda* matching torch's CUDA.
Otherwise a CPU-only extension is built (the *_cuda ops are missing) and a note says why.

Build with:  pip install --no-build-isolation -e '.[dev]'
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Default CUDA arch list: Hopper SASS plus PTX (JIT-compiled on newer GPUs), to keep
# CI compile times short.
# Override with e.g. TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0".
DEFAULT_CUDA_ARCH_LIST = "9.0+PTX"


def _log(msg: str) -> None:
    print(f"[shiftnas setup] {msg}", file=sys.stderr)


def _has_nvcc(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc"))


def _find_cuda_home(torch_cuda: str) -> str | None:
    """CUDA_HOME/CUDA_PATH if set, else the /usr/local/cuda* best matching torch's CUDA."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if _has_nvcc(home):
                return home
            _log(f"warning: {var}={home} has no bin/nvcc; ignoring it")
    wanted = f"/usr/local/cuda-{torch_cuda}"
    candidates = [wanted, "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for home in candidates:
        if _has_nvcc(home):
            return home
    return None


def _cuda_wanted() -> bool | None:
    """SHIFTNAS_BUILD_CUDA as True/False, or None when unset (decide by the visible GPUs)."""
    value = os.environ.get("SHIFTNAS_BUILD_CUDA")
    if value is None and os.environ.get("SHIFTNAS_SKIP_CUDA_BUILD") == "1":
        return False
    if value in (None, ""):
        return None
    if value not in ("0", "1"):
        raise SystemExit(
            f"[shiftnas setup] error: SHIFTNAS_BUILD_CUDA={value!r}; allowed: 0 (CPU-only), "
            "1 (with CUDA), unset (CUDA when a GPU is visible)"
        )
    return value == "1"


def _cuda_home_for_build() -> str | None:
    """The toolkit to build the CUDA sources with, or None for a CPU-only build."""
    import torch

    wanted = _cuda_wanted()
    if wanted is False:
        _log("SHIFTNAS_BUILD_CUDA=0: building CPU-only shiftnas._C")
        return None
    if wanted is None and not torch.cuda.is_available():
        _log("no GPU visible: building CPU-only shiftnas._C (SHIFTNAS_BUILD_CUDA=1 compiles the CUDA sources anyway)")
        return None
    why = "SHIFTNAS_BUILD_CUDA=1" if wanted else "a GPU is visible"
    if torch.version.cuda is None:  # e.g. a ROCm build sees a GPU but has no CUDA
        if wanted:
            raise SystemExit(f"[shiftnas setup] error: {why}, but torch {torch.__version__} is not a CUDA build")
        _log(f"{why}, but torch is not a CUDA build: building CPU-only shiftnas._C")
        return None
    home = _find_cuda_home(torch.version.cuda)
    if home is None:
        msg = f"{why}, but no CUDA toolkit (nvcc) was found via CUDA_HOME, CUDA_PATH or /usr/local/cuda*"
        if wanted:
            raise SystemExit(f"[shiftnas setup] error: {msg}")
        _log(f"warning: {msg}; building CPU-only shiftnas._C (the *_cuda ops will be missing)")
    return home


def _extensions():
    # Imported lazily so `setup.py --help` or metadata-only queries need no torch.
    cuda_home = _cuda_home_for_build()
    if cuda_home is not None:
        # torch.utils.cpp_extension resolves CUDA_HOME when first imported.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    from torch.utils import cpp_extension

    if cuda_home is not None and cpp_extension.CUDA_HOME != cuda_home:
        cpp_extension.CUDA_HOME = cuda_home  # it was imported earlier with another value

    import torch

    sources = sorted(glob.glob("csrc/*.cpp"))
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True))
    # No -std flag: BuildExtension adds the standard the installed torch's headers
    # require (C++17 for older releases, C++20 for torch >= 2.10); the sources are
    # valid C++17. Passing -std=c++17 would break the build against current torch.
    cxx_flags = ["-O3"]
    link_flags = []
    # With torch's OpenMP backend, at::parallel_for is an inline `#pragma omp parallel`
    # that silently runs serially unless the extension itself is built with -fopenmp.
    # The resulting libgomp.so.1 dependency resolves to the copy torch has already loaded.
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    ext_modules = []
    if cuda_home is not None:
        _log(
            f"building shiftnas._C with CUDA from {cuda_home} "
            f"(TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})"
        )
        ext_modules.append(
            cpp_extension.CUDAExtension(
                name="shiftnas._C",
                sources=sources + sorted(glob.glob("csrc/cuda/*.cu")),
                depends=depends,
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
                extra_link_args=link_flags,
            )
        )
    else:
        ext_modules.append(
            cpp_extension.CppExtension(
                name="shiftnas._C",
                sources=sources,
                depends=depends,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=link_flags,
            )
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return ext_modules, cmdclass


def main() -> None:
    os.chdir(ROOT)  # sources are given relative to the repository root
    ext_modules, cmdclass = _extensions()
    setup(
        # configs/ has no __init__.py: it ships as data (shiftnas/configs/*.yaml), read through
        # importlib.resources by shiftnas.train.cli.
        packages=[*find_packages(include=["shiftnas", "shiftnas.*"]), "shiftnas.kernels", "shiftnas.configs"],
        package_dir={"shiftnas.kernels": "kernels", "shiftnas.configs": "configs"},
        package_data={"shiftnas.configs": ["*.yaml"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
