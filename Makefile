# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: serve test test-slow venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

# Serve the default model (CONVZOO_MODEL, else models/imagenette) on port 3000 (BENTOML_PORT).
serve: venv
	$(PY) -m service.import_model
	$(VENV)/bin/bentoml serve --port $${BENTOML_PORT:-3000}

test: venv
	$(PY) -m pytest

test-slow: venv
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache
