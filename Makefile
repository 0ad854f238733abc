# Everything a fresh machine needs, in one virtual environment: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip install --disable-pip-version-check -c constraints.txt
PY     := $(VENV)/bin/python

.PHONY: setup demo test benchmark gpu-check clean

setup: $(VENV)/.installed

# torch first (the local CPU wheel, pinned in constraints.txt so nothing can pull a CUDA build), then fairseq
# built against it (--no-build-isolation), then this package with its test and plot extras.
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q "torch==2.13.0" numpy cython setuptools wheel
	$(PIP) -q --no-build-isolation -e ".[test,plot]"
	$(PY) -c "import torch, fairseq, fairseq_bahdanau; assert torch.version.cuda is None, 'a CUDA torch was installed'"
	touch $@

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo/run.sh

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/benchmark/run.sh

# On a CUDA machine: GPU tests and the benchmark in float32, --amp and --fp16. GPU_PYTHON: a Python whose torch
# is a CUDA build, with fairseq installed (this Makefile's own set-up pins the CPU build).
GPU_PYTHON ?= python3
gpu-check:
	PYTHON="$(GPU_PYTHON)" bash examples/gpu/check.sh

clean:
	rm -rf $(VENV) *.egg-info
