# tpt_ops set-up. Two commands do everything on a fresh machine:
#   make demo   the main job (see README)
#   make test   the test suite (what CI runs)
# The extensions are built with `pip install --no-build-isolation`, against
# the torch in the virtual environment (an isolated build would fetch another).

PYTHON ?= python3
VENV ?= .venv
# Which torch to install when the environment has none. Override e.g.
#   make test TORCH_SPEC='torch==2.11.0'
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEPS := numpy tqdm matplotlib pytest pytest-benchmark nbclient nbformat ipykernel setuptools wheel
SOURCES := $(wildcard csrc/*/*.c csrc/*/*.h csrc/*/*.inc csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh) setup.py pyproject.toml

.PHONY: all venv build demo test bench clean

all: build

# The environment: a venv that also sees the chosen Python's packages, so a
# torch already installed there is used as is and not installed again.
$(VENV)/.deps:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "using the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		$(PY) -m pip install "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install $(DEPS)
	touch $@

venv: $(VENV)/.deps

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

demo: build
	$(PY) -m tpt_ops.demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pytest benchmarks --benchmark-columns=median,iqr,rounds --benchmark-sort=name -q -s

clean:
	rm -rf build $(VENV) *.egg-info tpt_ops/*.so .pytest_cache .benchmarks
