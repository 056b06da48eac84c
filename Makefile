# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= runs/demo

.PHONY: demo test lint install install-dev bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Pretrain the tiny demo model on the bundled corpus (a few minutes on a laptop CPU).
demo: $(VENV)/.installed
	$(PY) -m bert_jax.pretrain --config configs/demo.py --workdir $(WORKDIR)

## Install the test peers and run the whole suite (what CI runs).
test: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs build *.egg-info
