# Set-up is two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?=
DEMO_FALLBACK ?= ../shared/data/cifar10-jpeg
DEMO_WORKDIR ?= runs/demo

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m sdarts_jax.demo --workdir=$(DEMO_WORKDIR) --data='$(DEMO_DATA)' --fallback='$(DEMO_FALLBACK)'

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/search_step.py

clean:
	rm -rf $(VENV) runs *.egg-info
