"""Build script for shiftnas: packages plus the compiled extension ``shiftnas._C``.

Project metadata (name, version, dependencies, scripts) lives in pyproject.toml;
this file only supplies what setuptools cannot express declaratively there:
the package layout (``kernels/`` is installed as ``shiftnas.kernels``) and the
C++/CUDA extension.

The CUDA sources are compiled only when all of these hold:
  * torch is a CUDA build (``torch.version.cuda`` is not None),
  * a CUDA toolkit with nvcc is found (``$CUDA_HOME``/``$CUDA_PATH`` or /usr/local/cuda*),
  * ``SHIFTNAS_SKIP_CUDA_BUILD`` is not "1".
Otherwise a CPU-only extension is built and a note is printed.

Build with:  CUDA_HOME=/usr/local/cuda-13.0 pip install --no-build-isolation -e '.[dev]'
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


def _cuda_home_for_build() -> str | None:
    """The toolkit to build the CUDA sources with, or None for a CPU-only build."""
    import torch

    if os.environ.get("SHIFTNAS_SKIP_CUDA_BUILD") == "1":
        _log("SHIFTNAS_SKIP_CUDA_BUILD=1: building CPU-only shiftnas._C")
        return None
    if torch.version.cuda is None:
        _log("torch is not a CUDA build: building CPU-only shiftnas._C")
        return None
    home = _find_cuda_home(torch.version.cuda)
    if home is None:
        _log(
            "warning: no CUDA toolkit (nvcc) found via CUDA_HOME, CUDA_PATH or /usr/local/cuda*; "
            "building CPU-only shiftnas._C (the *_cuda ops will be missing)"
        )
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
        packages=[*find_packages(include=["shiftnas", "shiftnas.*"]), "shiftnas.kernels"],
        package_dir={"shiftnas.kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
