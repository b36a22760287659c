# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: serve prometheus lint test test-slow test-container container base-image swarm-bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

# Serve the default model (CONVZOO_MODEL, else models/imagenette) on 127.0.0.1 (BENTOML_HOST: this
# machine only unless told, e.g. BENTOML_HOST=0.0.0.0 for every interface) port 3000 (BENTOML_PORT).
# The container image, the Swarm stack and Kubernetes bind every interface (deploy/Dockerfile.template).
serve: venv
	$(PY) -m service.import_model
	$(VENV)/bin/bentoml serve --host "$${BENTOML_HOST:-127.0.0.1}" --port "$${BENTOML_PORT:-3000}"

# Prometheus on the service of `make serve`, with deploy/prometheus/'s rules: scrapes
# localhost:$BENTOML_PORT, listens on 127.0.0.1:9090 (docs/operations.md, "Monitoring").
prometheus:
	deploy/prometheus/run.sh

# Lint and format check first (seconds), then the suite.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Test files run in parallel, one file per worker (module fixtures and servers stay shared within
# a file); TEST_WORKERS=0 runs them in this process, one after the other.
TEST_WORKERS ?= auto

test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The heavy tests; the three-server benchmark test needs the bench extra (Ray Serve, FastAPI).
test-slow: venv
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m 'slow or container'

# The container tests alone (need a running Docker; skipped without one).
test-container: venv
	$(PY) -m pytest -m container

# The service image convzoo:<model version> + convzoo:latest (docs/operations.md, "Containers"). Settings:
# BASE_IMAGE (default: BentoML's), HOST_CA=1 (add this host's CA certificates: TLS-intercepting
# proxies), BENTOFILE=bentofile.gpu.yaml (the GPU image, TensorFlow; default bentofile.yaml: CPU,
# OpenVINO, no TensorFlow), PACKAGES=requirements file (instead of the recipe's), CUDA_VERSION.
container: venv
	$(PY) deploy/container.py

# A Debian 12 base image from Debian's packages, for builds without Docker Hub: then
# `make container BASE_IMAGE=convzoo-base:bookworm`.
base-image:
	deploy/base-image/build.sh

# Replicas under Docker Swarm: kill one and roll out a new model version under load (benchmarks/swarm.py).
swarm-bench: venv
	$(PY) -m benchmarks.swarm

clean:
	rm -rf $(VENV) .pytest_cache
