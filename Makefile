# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
WORKDIR ?= runs/demo
PIP     := -m pip install -q --disable-pip-version-check

.PHONY: demo test test-main test-tf test-tpu lint install install-dev bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) --upgrade pip
	$(PY) $(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) $(PIP) -e ".[dev]"
	touch $@

# TensorFlow (Google TF1 checkpoints) and libtpu (the TPU planner) live in their own
# environments, so the main one is exactly what users install.
.venv-tf/.installed: setup.cfg pyproject.toml
	test -x .venv-tf/bin/python || $(PYTHON) -m venv .venv-tf
	.venv-tf/bin/python $(PIP) -e ".[dev,tf]"
	touch $@

.venv-tpu/.installed: setup.cfg pyproject.toml
	test -x .venv-tpu/bin/python || $(PYTHON) -m venv .venv-tpu
	.venv-tpu/bin/python $(PIP) -e ".[tpu]" pytest
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Pretrain the tiny demo model on the bundled corpus (a few minutes on a laptop CPU).
demo: $(VENV)/.installed
	$(PY) -m bert_jax.pretrain --config configs/demo.py --workdir $(WORKDIR)
	$(PY) -m bert_jax.plot $(WORKDIR) --out $(WORKDIR)/curves.png

## Install everything and run the whole suite (what CI runs): lint, main suite, TF1 and TPU extras.
test: test-main test-tf test-tpu

test-main: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest tests

test-tf: .venv-tf/.installed
	.venv-tf/bin/python -m pytest tests/test_convert_tf1.py tests/test_untrusted_tf1.py

test-tpu: .venv-tpu/.installed
	.venv-tpu/bin/python -m pytest tests/test_plan.py

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .venv-tf .venv-tpu runs build *.egg-info
