# Developer entry points for shiftnas. Everything runs inside $(VENV), which
# is created on first use. Targets: install, test, demo, bench, clean.
#
#   make test                      # build (incl. shiftnas._C) and run the tests
#   make install TORCH_SPEC='torch==2.14.1 torchvision==0.29.1'
#   make test VENV=/path/to/venv

VENV ?= .venv
PYTHON ?= python3
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
# Only installed when the venv cannot `import torch`; an existing torch is kept.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP = $(VENV)/.shiftnas-installed
CSRC := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

# Build the CUDA ops against the toolkit matching torch's CUDA when present.
ifeq ($(origin CUDA_HOME),undefined)
ifneq ($(wildcard /usr/local/cuda-13.0),)
CUDA_HOME := /usr/local/cuda-13.0
endif
endif
ifneq ($(CUDA_HOME),)
export CUDA_HOME
endif

.PHONY: install test demo bench bench-ln clean distclean

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
	$(PIP) install -q 'setuptools>=64' wheel ninja
	@echo "building shiftnas._C (CUDA_HOME=$(if $(CUDA_HOME),$(CUDA_HOME),<unset>))"
	$(PIP) install --no-build-isolation -e '.[dev]'
	@$(PY) -c 'from shiftnas import _ext; m = _ext.load(); \
		print("shiftnas._C:", "ok" if m else _ext.unavailable_reason(), "| CUDA ops:", _ext.has_cuda_ops())'
	@touch $@

test: install
	$(PY) -m pytest -q -x -p no:cacheprovider tests

demo: install
	$(PY) -m shiftnas.demo

bench: install
	$(PY) bench/bench_supernet.py

# Compiled LayerNorm vs PyTorch on CPU; writes bench/results/layer_norm_cpu.json.
bench-ln: install
	$(PY) bench/bench_layer_norm_cpu.py

# Keeps the venv (torch is a large download); `make distclean` removes it too.
clean:
	rm -rf build dist *.egg-info shiftnas/_C*.so .pytest_cache .ruff_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
