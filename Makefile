# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install the pinned dependencies, run the default pipeline offline
#   make test   same set-up, then the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-quick ui bench venv clean lock

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipeline run pipeline.yaml

# Two pytest workers (pytest-xdist), one test file per worker: many tests wait on subprocesses,
# servers and clusters, so two at once finish the suite in about half the time on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# For development: the tests not marked slow (a few minutes); `make test` is what CI runs.
test-quick: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

ui: $(STAMP)
	$(PY) -m pipeline ui

bench: $(STAMP)
	$(PY) -m benchmarks all

# Re-resolve the pins from pyproject.toml's ranges (needs the package index).
lock:
	rm -rf /tmp/lockenv && $(PYTHON) -m venv /tmp/lockenv
	/tmp/lockenv/bin/pip install -q --upgrade pip
	/tmp/lockenv/bin/pip install -q . '.[test]'
	/tmp/lockenv/bin/pip freeze --exclude-editable | grep -v '^cnn-pipeline' > requirements.lock

clean:
	rm -rf $(VENV) pipeline_root mlflow.db mlruns
