# The README's two commands: `make demo` and `make test`. Both set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup controlplane upstream llamaserver vllmruntime lint unit integration reliability crds golden bench clean

demo: setup controlplane llamaserver
	$(BIN)/llama-operator-dev

# A whole run: the reliability figures (kill points, outages, hostile inputs, fuzz cases) must reach their minimums.
test: setup controlplane llamaserver vllmruntime lint
	LLAMA_OPERATOR_RELIABILITY_MINIMUMS=1 $(BIN)/pytest -q -p no:cacheprovider tests

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e ./dev
	touch $(STAMP)

# KEDA (about 10 min from a cold Go cache) is not built here: a test run that selects tests/integration/test_keda.py
# builds it in the background while the other tests run (tests/background_builds.py); `make upstream` builds it now.
controlplane:
	bash hack/build-controlplane.sh >/dev/null
	bash hack/build-upstream.sh LWS >/dev/null

upstream:
	bash hack/build-upstream.sh >/dev/null

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

# The hardening suite's long run: every occurrence of every kill point, the outages, hostile input, fuzzing,
# secrets and Pod Security; it writes RELIABILITY.md (tests/reliability.py).
RELIABILITY_TESTS := tests/unit/test_fuzz_specs.py tests/unit/test_download_scripts.py \
	tests/integration/test_kill_points.py tests/integration/test_kill_points_runtime.py \
	tests/integration/test_kill_points_cache.py tests/integration/test_outages.py \
	tests/integration/test_autoscale_e2e.py \
	tests/integration/test_vllm_standin_faults.py tests/integration/test_crd_admission.py \
	tests/integration/test_hostile_input.py tests/integration/test_planted_secrets.py \
	tests/integration/test_pod_security.py tests/integration/test_liveness.py tests/integration/test_refused_children.py
reliability: setup controlplane llamaserver vllmruntime
	LLAMA_OPERATOR_RELIABILITY_FULL=1 LLAMA_OPERATOR_RELIABILITY_MINIMUMS=1 \
	LLAMA_OPERATOR_RELIABILITY_REPORT=RELIABILITY.md LLAMA_OPERATOR_RELIABILITY_COMMAND="make reliability" \
	$(BIN)/pytest -q -p no:cacheprovider $(RELIABILITY_TESTS)

crds: setup controlplane
	$(BIN)/llama-operator crds > crds/llamadeployments.llamaops.io.yaml
	bash hack/render-install.sh

golden: setup
	UPDATE_GOLDEN=1 $(BIN)/pytest -q -p no:cacheprovider tests/unit/test_render_golden.py

bench: setup controlplane
	$(BIN)/python -m bench.autoscale --runs 7
	$(BIN)/python -m bench.adapter_swap --swaps 4
	$(BIN)/python -m bench.adapter_swap --engine vllm --swaps 4
	$(BIN)/python -m bench.model_cache --runs 3
	$(BIN)/python -m bench.scale --n 100
	$(BIN)/python -m bench.scale --n 1000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
