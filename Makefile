# Quick start: `make demo` (the main job) and `make test` (the whole suite). Each creates .venv when it
# is missing, installs the requirements, builds fastrec._C against the installed torch, then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export CUDA_HOME ?= /usr/local/cuda
SOURCES := $(wildcard setup.py pyproject.toml csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh csrc/*/*.h)

.PHONY: install demo test bench lint clean gpu-check compat-check

$(VENV)/.requirements: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.requirements $(SOURCES)
	$(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $@

install: $(VENV)/.built

demo: install
	$(VENV)/bin/fastrec demo

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) -m pytest benchmarks --benchmark-only -q

lint: install
	$(VENV)/bin/ruff check fastrec kernels tests benchmarks scripts setup.py

# On a machine with one CUDA GPU, with its own python3 (no venv, no network): build fastrec._C in place for
# that GPU, fastrec bench --device cuda --quick --kernels, compute-sanitizer memcheck, pytest -m cuda, and
# Nsight Compute in the time left; writes gpu-check.md, bench.csv, kernels.csv, ncu.txt and gpu-check.log
# under $$OUT (default results/gpu-check/). See docs/gpu.md.
gpu-check:
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh

# The CPU suite, the CUDA build and the offline `pip install -e .` under the GPU machine's package stack (python
# 3.12, torch 2.11, triton 3.6, transformers 5.17) in .venv-compat: see scripts/compat_check.sh. Needs PyPI once.
compat-check:
	bash scripts/compat_check.sh

clean:
	rm -rf build fastrec/_C*.so $(VENV)/.built
