# Everything a fresh machine needs, in one virtual environment: `make demo` (the main job) and `make test`.
#
#   PYTHON       the Python to build the environment with (3.10 to 3.13; default python3)
#   VENV         where (default .venv)
#   TORCH_INDEX  a package index to take torch from, e.g. https://download.pytorch.org/whl/cpu for Linux's
#                CPU-only build (about 0.2 GB, against about 5 GB for PyPI's CUDA build, which also runs on CPUs)
PYTHON      ?= python3
VENV        ?= .venv
TORCH_INDEX ?=
PIP    := $(VENV)/bin/pip install --disable-pip-version-check -c constraints.txt
PY     := $(VENV)/bin/python

.PHONY: setup demo test test-ray matrix benchmark gpu-check wheelhouse clean

setup: $(VENV)/.installed

# torch first (whichever build pip resolves: a local file, PyPI's CUDA build, or TORCH_INDEX's), then fairseq
# built against it (--no-build-isolation: no second torch), then this package with its test, plot, serve and export
# extras (export: the ONNX exporter and ONNX Runtime).
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.13.0"
	$(PIP) -q numpy cython setuptools wheel
	$(PIP) -q --no-build-isolation -e ".[test,plot,serve,export]"
	$(PY) -c "import torch, fairseq, fairseq_bahdanau; print('set up: Python', __import__('platform').python_version(), '| torch', torch.__version__, '| fairseq', fairseq.__version__)"
	touch $@

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo/run.sh

# ruff: pyflakes, pycodestyle's errors and warnings, lines of at most 120 columns
test: setup
	$(VENV)/bin/ruff check --select E,F,W --line-length 120 fairseq_bahdanau tests examples
	bash tests/install_browser.sh
	$(PY) -m pytest -q tests

# The service on Ray Serve (tests/test_ray.py: a two-node local Ray cluster), with Ray in an environment of its own
# (.venv-ray: the deployment side's dependencies and Ray Serve, no torch or fairseq, about 0.6 GB; the package
# itself from the checkout), so that make test's stays as it is. The main environment's fairseq makes the
# translators it serves.
RAY_VENV ?= .venv-ray
test-ray: setup $(RAY_VENV)/.installed
	REQUIRE_RAY=1 RAY_PYTHON=$(CURDIR)/$(RAY_VENV)/bin/python $(PY) -m pytest -q tests/test_ray.py

$(RAY_VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt "ray[serve]>=2.40" \
	    "onnxruntime>=1.20" numpy sentencepiece "starlette>=0.37" "uvicorn>=0.29" "prometheus-client>=0.20"
	touch $@

# The suite on every Python 3.10-3.13 this machine has, each in its own environment (.venv-3.X), and a table.
matrix:
	bash tests/matrix.sh

benchmark: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/benchmark/run.sh

# What a CUDA machine with torch but without fairseq or a package registry needs for gpu-check (PY: its Python
# version): fairseq-fixed, its pure-Python dependencies and this package, as wheels in wheelhouse-$(PY)/.
PY_VERSION ?= 3.12
wheelhouse:
	bash examples/gpu/wheelhouse.sh $(PY_VERSION)

# On a CUDA machine: GPU tests and the benchmark in float32, --amp and --fp16 (installs fairseq from a wheelhouse
# when it is missing). GPU_PYTHON: a Python whose torch is a CUDA build.
GPU_PYTHON ?= python3
gpu-check:
	PYTHON="$(GPU_PYTHON)" bash examples/gpu/check.sh

clean:
	rm -rf $(VENV) *.egg-info
