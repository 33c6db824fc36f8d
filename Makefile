# The README's two commands: `make demo` and `make test`. Both set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup controlplane llamaserver vllmruntime lint unit integration reliability crds golden bench clean

demo: setup controlplane llamaserver
	$(BIN)/llama-operator-dev

test: setup controlplane llamaserver vllmruntime lint
	$(BIN)/pytest -q -p no:cacheprovider tests

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e ./dev
	touch $(STAMP)

controlplane:
	bash hack/build-controlplane.sh >/dev/null

llamaserver:
	bash hack/build-llama-server.sh >/dev/null

vllmruntime:
	bash hack/build-vllm-runtime.sh >/dev/null

lint: setup
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

unit: setup
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

integration: setup controlplane
	$(BIN)/pytest -q -p no:cacheprovider tests/integration

# Every kill point of create, update, adapter rollout and scaling, not every third (tests/integration/test_kill_points.py).
reliability: setup controlplane
	LLAMA_OPERATOR_RELIABILITY_FULL=1 $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_kill_points.py

crds: setup controlplane
	$(BIN)/llama-operator crds > crds/llamadeployments.llamaops.io.yaml
	bash hack/render-install.sh

golden: setup
	UPDATE_GOLDEN=1 $(BIN)/pytest -q -p no:cacheprovider tests/unit/test_render_golden.py

bench: setup controlplane
	$(BIN)/python -m bench.autoscale --runs 7
	$(BIN)/python -m bench.adapter_swap --swaps 4
	$(BIN)/python -m bench.adapter_swap --engine vllm --swaps 4
	$(BIN)/python -m bench.scale --n 100
	$(BIN)/python -m bench.scale --n 1000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
