# Set-up and entry points. `make sample` and `make test` each install everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of PyTorch; on a GPU machine: make sample TORCH=torch==2.13.0 --index-url ...
TORCH ?= torch==2.13.0

.PHONY: setup sample test test-slow

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

sample: setup
	$(VENV)/bin/scaling run deployments/sweeps/sample.yaml

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow
