# Set-up is two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?=
DEMO_FALLBACK ?= ../shared/data/cifar10-jpeg
DEMO_WORKDIR ?= runs/demo
# Test processes: most of the suite's time is XLA compiling, one core per compilation, and
# some tests wait on their subprocesses; on 2 cores, 3 workers kept both busier (quiet,
# 2026-11-29: 9.1 min, against about 13 for 2 workers by the summed test times).
TEST_WORKERS ?= 3
# With no data above, the demo downloads CIFAR-10's python archive once into
# ~/.cache/sdarts_jax; DEMO_URL (and DEMO_CHECKSUMS, md5:HEX and/or sha256:HEX, for a file
# other than the canonical one) point it elsewhere, e.g. file:///path/cifar-10-python.tar.gz.
DEMO_URL ?=
DEMO_CHECKSUMS ?=
# The side-by-side benchmark: REF is the root of the official SDARTS checkout; the official
# code runs in its own venv with PyTorch (pinned: here 2.13.0 is a local CPU wheel, while an
# unpinned torch would fetch a CUDA build of several GB; REF_PIP_ARGS can name a CPU index).
REF ?=
BENCH_ARGS ?=
REF_VENV ?= .venv-ref
TORCH ?= 2.13.0
REF_PIP_ARGS ?=
PAPER_SIZE := --layers=8 --channels=16 --batch=64

# The TPU compile check (sdarts_jax/tpu_check.py) runs in a venv of its own with libtpu:
# installed into the main venv, JAX would probe for a TPU at every start and libtpu would
# print warnings on every CPU run, demo and test.
TPU_VENV ?= .venv-tpu
TPU_PY := $(TPU_VENV)/bin/python
TOPOLOGY ?= v5e:2x2
CONFIG ?= configs/cifar10_adv.py
TPU_ARGS ?=

.PHONY: install demo test test-slow tpu-install tpu-check tpu-test bench bench-accel ref-given bench-reference bench-paper clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m sdarts_jax.demo --workdir=$(DEMO_WORKDIR) --data='$(DEMO_DATA)' --fallback='$(DEMO_FALLBACK)' \
	  $(if $(DEMO_URL),--url='$(DEMO_URL)') $(if $(DEMO_CHECKSUMS),--checksums='$(DEMO_CHECKSUMS)')

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow tests

$(TPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TPU_VENV)
	$(TPU_PY) -m pip install -q --upgrade pip
	$(TPU_PY) -m pip install -q -e '.[tpu,test]'
	touch $@

tpu-install: $(TPU_VENV)/.installed

# Compile CONFIG's programs for the TPU slice TOPOLOGY here (no TPU needed): per-chip
# memory, FLOPs, bytes and estimated times (docs/tpu.md).
tpu-check: tpu-install
	$(TPU_PY) -m sdarts_jax.tpu_check --config='$(CONFIG)' --topology='$(TOPOLOGY)' $(TPU_ARGS)

# The TPU compile tests (tests/test_tpu_compile.py; skipped in `make test`, which has no
# libtpu): .ci/run runs them after `make test`.
tpu-test: tpu-install
	$(TPU_PY) -m pytest -q -p no:cacheprovider tests/test_tpu_compile.py

bench: install
	$(PY) benchmarks/search_step.py

# Accelerator benchmark (GPU/TPU; runs on CPU too, marked as such) and roofline projection.
bench-accel: install
	$(PY) benchmarks/accel.py $(BENCH_ARGS)

$(REF_VENV)/.installed-torch-$(TORCH):
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install -q $(REF_PIP_ARGS) torch==$(TORCH) numpy
	touch $@

ref-given:
	@test -n '$(REF)' || { echo 'error: REF is not set: make bench-reference REF=path/to/SDARTS (the root of the official checkout)' >&2; exit 2; }

bench-reference: ref-given install $(REF_VENV)/.installed-torch-$(TORCH)
	$(PY) benchmarks/search_step.py --reference='$(REF)' --reference-python=$(REF_VENV)/bin/python $(BENCH_ARGS)

bench-paper:
	$(MAKE) bench-reference BENCH_ARGS='$(PAPER_SIZE) $(BENCH_ARGS)'

clean:
	rm -rf $(VENV) $(REF_VENV) $(TPU_VENV) runs *.egg-info
