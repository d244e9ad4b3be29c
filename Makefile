# Developer entry points for shiftnas. Everything runs inside $(VENV), which
# is created on first use. Targets: install, test, test-slow, demo, bench, gpu-check, clean.
#
#   make test                      # build (incl. shiftnas._C) and run the tests (not the slow ones)
#   make test-slow                 # the slow tests: build the wheel, install it in a fresh venv, train
#   make install TORCH_SPEC='torch==2.14.1 torchvision==0.29.1'
#   make test VENV=/path/to/venv
#   make install SHIFTNAS_BUILD_CUDA=1   # compile the CUDA sources too, GPU or not (CI)
#   make clean install EDITABLE_MODE=strict   # an editable install editors and linters resolve
#
# The CUDA sources of shiftnas._C are compiled only when a GPU is visible or
# SHIFTNAS_BUILD_CUDA=1 (=0: never); see setup.py. The C++ (CPU) part is always
# built: 3 files; about 8 min on 2 busy cores was measured here with a 4th (6 CPU-minutes), the
# CPU bias+GELU kernel since removed, so a little less now.
# After changing SHIFTNAS_BUILD_CUDA, `make clean install` rebuilds.
#
# EDITABLE_MODE: setuptools' editable mode. Unset, `pip install -e` puts an import hook on
# sys.path that maps shiftnas.kernels to kernels/; Python follows it, static tools (pyright,
# pylint, mypy, editors) do not. `strict` instead links every file into
# build/__editable__.*/ (shiftnas/kernels/ included), a plain path the tools read; re-run
# `make clean install EDITABLE_MODE=strict` after adding or removing a module.
EDITABLE_MODE ?=

VENV ?= .venv
PYTHON ?= python3
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
# Only installed when the venv cannot `import torch`; an existing torch is kept.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP = $(VENV)/.shiftnas-installed
CSRC := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

# The toolkit the CUDA ops are built with, when they are built (a GPU or SHIFTNAS_BUILD_CUDA=1).
ifeq ($(origin CUDA_HOME),undefined)
ifneq ($(wildcard /usr/local/cuda-13.0),)
CUDA_HOME := /usr/local/cuda-13.0
endif
endif
ifneq ($(CUDA_HOME),)
export CUDA_HOME
endif
export SHIFTNAS_BUILD_CUDA

.PHONY: install test test-slow demo bench bench-ln bench-kernels bench-gpu gpu-check clean distclean

install: $(STAMP)

# Rebuilt whenever the build files or any C++/CUDA source change. The build
# uses --no-build-isolation (compile against the torch installed here), so the
# build tools are installed into the venv first.
$(STAMP): setup.py pyproject.toml kernels/__init__.py $(CSRC)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c 'import torch' >/dev/null 2>&1; then \
		echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "installing $(TORCH_SPEC)"; $(PIP) install $(TORCH_SPEC); \
	fi
	$(PIP) install -q 'setuptools>=77' wheel ninja
	@echo "building shiftnas._C (SHIFTNAS_BUILD_CUDA=$(if $(SHIFTNAS_BUILD_CUDA),$(SHIFTNAS_BUILD_CUDA),<unset: CUDA when a GPU is visible>))"
	$(PIP) install --no-build-isolation -e '.[dev]' $(if $(EDITABLE_MODE),--config-settings editable_mode=$(EDITABLE_MODE))
	@$(PY) -c 'from shiftnas import _ext; m = _ext.load(); \
		print("shiftnas._C:", "ok" if m else _ext.unavailable_reason(), "| CUDA ops:", _ext.has_cuda_ops())'
	@touch $@

FMNIST_SRC ?= /usr/share/datasets/fashion-mnist
SHIFTNAS_DATA ?= $(HOME)/.cache/shiftnas
export SHIFTNAS_DATA

.PHONY: data bench-loader

# Fashion-MNIST (Debian dataset-fashion-mnist) -> $(SHIFTNAS_DATA)/fashion-mnist; a no-op when done.
data: install
	@if [ ! -f $(FMNIST_SRC)/train-images-idx3-ubyte.gz ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing dataset-fashion-mnist"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist || \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }; \
		else \
			echo "Fashion-MNIST is missing from $(FMNIST_SRC): run 'sudo apt-get install dataset-fashion-mnist'" \
			     "or set FMNIST_SRC to a folder holding the four IDX .gz files" >&2; exit 1; \
		fi; \
	fi
	$(PY) -m shiftnas.cli prepare fashion-mnist --source $(FMNIST_SRC) --out $(SHIFTNAS_DATA)/fashion-mnist

bench-loader: install data
	$(PY) bench/bench_loader.py

# One pytest-xdist worker per core, at most 4 (each worker and its subprocesses use one
# torch thread, see tests/conftest.py): 9.5-11 min for the suite on a 2-core Xeon (README).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: install data
	$(PY) -m pytest -q -x -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal -m "not slow" tests

# The wheel test compiles shiftnas._C once more (C++ only): several minutes on 2 cores.
test-slow: install data
	$(PY) -m pytest -q -x -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal -m slow tests

demo: install data
	$(PY) -m shiftnas.demo

bench: install
	$(PY) bench/bench_supernet.py

# Compiled LayerNorm vs PyTorch on CPU; writes bench/results/layer_norm_cpu.json.
bench-ln: install
	$(PY) bench/bench_layer_norm_cpu.py

# Kernels vs slicing / full-width masking / the dense op; CPU: the cpu backend's ops.
bench-kernels: install
	$(PY) bench/bench_kernels.py --device cpu --repeats 20

# The GPU suite (Triton + CUDA ops, bf16, AutoFormer-T/S/B shapes, whole-step check) in < 5 min
# on one H200; writes bench/results/kernels_cuda.{json,png}.
bench-gpu: install
	$(PY) bench/bench_kernels.py --device cuda --budget-s 270

# Everything a CUDA machine can check, in one command (< 8 min on one H200): builds shiftnas._C
# with its CUDA ops (offline: --no-build-isolation --no-deps --no-index), runs every test file that
# runs CUDA code, then the GPU suite of bench-gpu; writes bench/results/gpu_check.json. It uses
# this venv when there is one, else the machine's python3 (a GPU image with torch installed).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py

# Keeps the venv (torch is a large download); `make distclean` removes it too.
clean:
	rm -rf build dist *.egg-info shiftnas/_C*.so .pytest_cache .ruff_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
